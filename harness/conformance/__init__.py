"""Conformance: probe a target library for deviations from the standard definitions.

For each trainer x fixture the probes run (``probes.py``): whether a step runs
at all on this backend (and, when a target offers a workaround, the rest with
it), loss agreement, batch consistency and dead config fields.  A finding is
``{"library", "version", "trainer", "fixture", "probe", "signature",
"statement", "evidence", "status"}``, with status "expected" when the
project's expected-findings file lists it, else "unexpected".
"""

import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from ...fixtures import FIXTURES
from ..model import TRAINERS
from ..target import LoadedTarget
from .probes import probe_batch_consistency, probe_dead_config, probe_grpo_closed_form, probe_loss_agreement
from .session import _settings, _trace
from .variants import PAIRS


def load_expected(path) -> list:
    """The findings listed as expected in ``path`` (none when there is no such file)."""
    if path is None or not Path(path).exists():
        return []
    return json.loads(Path(path).read_text())["findings"]


def _is_expected(finding, expected):
    for e in expected:
        if (e["library"], e["trainer"], e["probe"], e["signature"]) == (
                finding["library"], finding["trainer"], finding["probe"], finding["signature"]) and \
                finding["fixture"] in e.get("fixtures", [finding["fixture"]]):
            return True
    return False


def _probe_all(target, trainer, fixture, add):
    """Run every probe on one trainer and fixture; ``add(probe, result, evidence, note)`` records each outcome."""
    # GRPO: 3 steps, and completions long enough that some end (EOS) before the limit, so that the
    # loss types' normalisations differ.
    base = _settings(trainer, 3, extra={"max_completion_length": 48}) if trainer == "grpo" else _settings(trainer, 2)
    try:
        _trace(target, trainer, fixture, replace(base, steps=1))
        add("runs", None, {})
    except Exception as err:  # noqa: BLE001 - the finding
        message = f"{type(err).__name__}: {err}"
        backend = "CPU" if mx.default_device() == mx.cpu else "GPU"
        add("runs", (message[:100], f"{trainer} raises {message} before its first step on the {backend} backend"),
            {"error": message})
        workaround = target.workaround()
        if workaround is None:
            return
        base = replace(base, extra={**base.extra, **workaround[0]})
        _trace(target, trainer, fixture, replace(base, steps=1))  # raises: nothing more to probe
        print(f"  {target.name}/{trainer}/{fixture}: probing on with {workaround[1]}", file=sys.stderr)
    if trainer == "grpo":
        add("loss-agreement", *probe_grpo_closed_form(target, fixture, base))
    else:
        for bs in dict.fromkeys((base.batch_size, 1)):
            result, ev = probe_loss_agreement(target, trainer, fixture, base, bs)
            if result is not None:
                first, second = ev["steps"][0], ev["steps"][1]
                result = (f"batch{bs}:{result[0]}",
                          f"at batch size {bs} the reported loss differs from the standard formula on the same rows "
                          f"(step 1: {first['reported']:.7g} vs {first['standard']:.7g}; step 2: "
                          f"{second['reported']:.7g} vs {second['standard']:.7g}); it matches the standard formula "
                          f"that {result[1]}" if not result[0].startswith(("unexplained", "policy-")) else
                          f"at batch size {bs} the reported loss differs from the standard formula on the same rows "
                          f"(step 1: {first['reported']:.7g} vs {first['standard']:.7g}): {result[1]}")
            add("loss-agreement", result, ev)
    if trainer in PAIRS:
        result, ev = probe_batch_consistency(target, trainer, fixture, base)
        add("batch-consistency", result, ev, f"inconclusive: {ev['inconclusive']}" if "inconclusive" in ev else "")
    else:
        why = "rollouts are sampled" if trainer == "grpo" else "the KL point z is a batch statistic"
        add("batch-consistency", None, {}, f"n/a: {why}")
    documented = target.documented_hyperparameters(trainer)
    if not documented:
        add("dead-config", None, {}, "n/a: the target documents no hyper-parameters to probe "
                                     "(documented_hyperparameters(trainer) lists (name, second value) pairs)")
    for name, value, result, ev in probe_dead_config(target, trainer, fixture, base, documented):
        if "inconclusive" in ev:
            note = f"inconclusive: {name}={value!r}: {ev['inconclusive']}"
        elif "refused" in ev:
            note = f"n/a: {ev['refused']}"
        else:
            note = f"ok: {name}={value!r}"
        add("dead-config", result, ev, "" if result else note)


def conformance_outcomes(target: LoadedTarget, trainers=(), fixtures=(), expected=()):
    """Every probe's outcome: findings (status expected/unexpected) and the probes that passed or were skipped."""
    version = target.version() or "n/a"
    trainers = trainers or tuple(t for t in TRAINERS if t in target.trainers())
    fixtures = fixtures or FIXTURES
    outcomes = []
    for trainer, fixture in itertools.product(trainers, fixtures):
        def add(probe, result, evidence, note="", trainer=trainer, fixture=fixture):
            item = {"library": target.name, "version": version, "trainer": trainer, "fixture": fixture,
                    "probe": probe, "evidence": evidence}
            if result is None:
                item.update(status=note.split(":")[0] if note else "ok", signature="", statement=note)
            else:
                item.update(signature=result[0], statement=result[1])
                item["status"] = "expected" if _is_expected(item, expected) else "unexpected"
            outcomes.append(item)

        try:
            _probe_all(target, trainer, fixture, add)
        except Exception as err:  # noqa: BLE001 - a probe that cannot run is itself a finding
            message = f"{type(err).__name__}: {err}"
            add("probe-error", (message[:100], f"a conformance probe could not run: {message}"), {"error": message})
    return outcomes


def unobserved_expected(outcomes, expected) -> list:
    """Expected findings that were probed for and not seen (fixed?), as one line each."""
    seen = {(o["library"], o["trainer"], o["probe"], o["signature"], o["fixture"]) for o in outcomes}
    probed = {(o["library"], o["trainer"], o["fixture"]) for o in outcomes}
    lines = []
    for e in expected:
        for fixture in e.get("fixtures", FIXTURES):
            if (e["library"], e["trainer"], fixture) in probed and \
                    (e["library"], e["trainer"], e["probe"], e["signature"], fixture) not in seen:
                lines.append(f"{e['library']}/{e['trainer']}/{fixture}/{e['probe']}: {e['signature']}")
    return lines
