"""Conformance probes for a target: what one case run does not check (issue 8).

    python -m mlxth.harness.conformance --target mlx-tune [--trainer dpo] [--fixture tiny-llama]

For each target x trainer x fixture:

``runs``               the trainer takes a step on this backend at all.  When it
                       does not and the target offers a workaround (an extra
                       setting), the other probes run with it and say so.
``loss-agreement``     the loss the library reports at steps 1 and 2 (batch 4
                       and batch 1) against this project's recomputation from
                       the same rows (``recompute.recompute_loss``).  When they
                       disagree, the standard formula is recomputed with each
                       term varied (which tokens are scored, length
                       normalisation, NLL averaging, the odds term, the margin,
                       the reference, ...) and the smallest set of changes
                       that reproduces every reported value is stated.  GRPO:
                       the closed form (loss 0 with beta 0 on the first step
                       that updates).
``batch-consistency``  two rows as two batch-1 runs and as one batch-2 run, at
                       learning rate 0 and on a perturbed policy (so a separate
                       reference differs from it): the library's batch-2 loss
                       minus the mean of its batch-1 losses must equal the same
                       difference under the standard formula.
``dead-config``        each documented hyper-parameter set to a second value:
                       a field that leaves the losses of every probe step and
                       every weight afterwards bitwise unchanged changes nothing.

A finding is ``{"library", "version", "trainer", "fixture", "probe",
"signature", "statement", "evidence", "status"}``; ``status`` is "expected"
when ``snapshots/expected_findings.json`` lists (library, trainer, probe,
signature), else "unexpected".  The CLI exits 1 on an unexpected finding.

This module holds the probes, the expected-findings list and the driver;
``loss_variants.py`` the recomputation with terms varied, and
``target_session.py`` the running of a target.
"""

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxth.fixtures import FIXTURES, load_fixture
from mlxth.fixtures.datasets import load_dataset

from . import formulas
from .cases import DATASETS, TRAINERS
from .loss_variants import PAIRS, _close_enough, _quantities, _variant_loss, _variants
from .recompute import recompute_loss
from .target import load_target
from .target_session import Session, _close, _identical, _settings, _trace, _with

EXPECTED_FILE = Path(__file__).resolve().parent.parent / "snapshots" / "expected_findings.json"


# ----------------------------------------------------------------------------
# Loss agreement (the term variants: loss_variants.py)
# ----------------------------------------------------------------------------


def probe_loss_agreement(target, trainer, fixture, base, batch_size, steps=2):
    settings = replace(base, batch_size=batch_size)
    session = Session(target, trainer, fixture, settings)
    hp = session.run.hyperparameters() if hasattr(session.run, "hyperparameters") else {}
    fields_ = ("completion",) if trainer == "kto" else ("chosen", "rejected")
    per_step = []
    reference, _ = load_fixture(fixture)
    try:
        for k in range(1, steps + 1):
            rows = session.run.rows_for_step(k)
            standard = recompute_loss(trainer, session.model, reference, rows, hp)
            pol, ref = _quantities(session.model, rows, fields_), _quantities(reference, rows, fields_)
            mism = None
            if trainer == "kto":
                mism = (_quantities(session.model, rows, fields_, shift=True),
                        _quantities(reference, rows, fields_, shift=True))
            values = [(variant, changes, _variant_loss(trainer, hp, variant, pol, ref, rows, mism))
                      for variant, changes in _variants(trainer, hp)]
            reported = session.step()["loss"]
            per_step.append((k, reported, standard, values))
    finally:
        _close(session)
    agree = all(_close_enough(rep, std) for _, rep, std, _ in per_step)
    evidence = {"batch_size": batch_size, "hyperparameters": hp,
                "steps": [{"step": k, "reported": rep, "standard": std, "difference": rep - std}
                          for k, rep, std, _ in per_step]}
    if agree:
        return None, evidence
    n = len(per_step[0][3])
    matching = [i for i in range(n) if all(_close_enough(rep, vals[i][2]) for _, rep, _, vals in per_step)]
    matching.sort(key=lambda i: len(per_step[0][3][i][1]))
    if not matching:
        first_rep, first_std = per_step[0][1], per_step[0][2]
        if trainer == "dpo" and hp.get("loss_type") == "sigmoid" and not hp.get("label_smoothing") and \
                abs(first_std - formulas.LN2) < 1e-9 and not _close_enough(first_rep, first_std):
            return ("policy-reference-mismatch", f"at step 1 the policy equals the reference, so any choice of scored "
                                                 f"tokens gives ln 2; {first_rep:.7g} means the library's policy and "
                                                 f"reference log-probs differ for the same weights (two code paths "
                                                 f"disagree)"), evidence
        return ("unexplained", "no single variant of the standard formula's terms reproduces the reported values"), \
            evidence
    best = len(per_step[0][3][matching[0]][1])
    minimal = [per_step[0][3][i][1] for i in matching if len(per_step[0][3][i][1]) == best]
    signature = "+".join(f"{n}={c}" for n, c, _ in minimal[0])
    explanation = "; ".join(why for _, _, why in minimal[0])
    if len(minimal) > 1:
        explanation += " (equally: " + " | ".join("; ".join(why for _, _, why in m) for m in minimal[1:]) + ")"
    evidence["reproduced_by"] = [dict((n, c) for n, c, _ in m) for m in minimal]
    for entry, (_, _, _, vals) in zip(evidence["steps"], per_step):
        entry["reproduced"] = vals[matching[0]][2]
    return (signature, explanation), evidence


def probe_grpo_closed_form(target, fixture, base, steps=3):
    session = Session(target, "grpo", fixture, base)
    hp = session.run.hyperparameters() if hasattr(session.run, "hyperparameters") else {}
    try:
        for _ in range(steps):
            session.step()
    finally:
        _close(session)
    updated = [r for r in session.records if not r.get("update_skipped")]
    evidence = {"hyperparameters": {k: hp.get(k) for k in ("beta", "loss_type", "num_iterations")},
                "losses": session.losses()}
    if hp.get("beta") != 0 or not updated:
        return None, evidence
    first = updated[0]
    evidence["first_updating_step_loss"] = first["loss"]
    if abs(first["loss"]) <= 1e-6:
        return None, evidence
    step = session.records.index(first) + 1
    return ("nonzero-first-step-loss", f"step {step}, its first step with an update, reports loss {first['loss']:.7g}; "
                                       f"the standard GRPO loss (clipped surrogate, beta 0, one optimizer step per "
                                       f"rollout: ratio 1, advantages of mean 0 per group) is 0 there"), evidence


# ----------------------------------------------------------------------------
# Batch-size consistency and dead config fields
# ----------------------------------------------------------------------------


def probe_batch_consistency(target, trainer, fixture, base):
    """Rows 1 and 2 of the data set: as two batch-1 runs and one batch-2 run, at learning rate 0.

    The policy is perturbed after ``prepare``: a target with its own reference
    model (``run.reference_model``) keeps the unperturbed one, which is then the
    recomputation's reference; otherwise the library's reference is the model
    it was handed (as it is when training starts), and so is the recomputation's.
    """
    settings = replace(base, learning_rate=0.0, steps=1)
    _, tokenizer = load_fixture(fixture)
    rows = load_dataset(DATASETS[trainer], tokenizer=tokenizer, max_length=base.max_length)[:2]
    library, standard = [], []
    for part, bs in (([rows[0]], 1), ([rows[1]], 1), (rows, 2)):
        session = Session(target, trainer, fixture, replace(settings, batch_size=bs), rows=part, perturb=True)
        hp = session.run.hyperparameters() if hasattr(session.run, "hyperparameters") else {}
        reference = getattr(session.run, "reference_model", None) or session.model
        standard.append(recompute_loss(trainer, session.model, reference, part, hp))
        try:
            library.append(session.step()["loss"])
        finally:
            _close(session)
    lib_gap = library[2] - (library[0] + library[1]) / 2
    std_gap = standard[2] - (standard[0] + standard[1]) / 2
    evidence = {"library": {"row1_batch1": library[0], "row2_batch1": library[1], "both_batch2": library[2],
                            "batch2_minus_mean_batch1": lib_gap},
                "standard": {"row1_batch1": standard[0], "row2_batch1": standard[1], "both_batch2": standard[2],
                             "batch2_minus_mean_batch1": std_gap}}
    if abs(standard[0] - standard[1]) <= 1e-12:
        return None, {**evidence, "inconclusive": "both rows give the same standard loss (the policy equals the "
                                                  "library's reference at learning rate 0)"}
    if abs(lib_gap - std_gap) <= 1e-5 + 1e-4 * max(abs(std_gap), abs(library[2])):
        return None, evidence
    return ("batch-dependence", f"the same two rows give batch-2 loss {library[2]:.7g} and batch-1 losses "
                                f"{library[0]:.7g}, {library[1]:.7g} (gap {lib_gap:.3g}); the standard formula's gap "
                                f"is {std_gap:.3g}"), evidence


def _lengths_vary(records):
    """GRPO's loss types coincide when every completion has the same length; None: the target does not say."""
    if not records or "min_generated_tokens" not in records[0]:
        return None
    return any(r["min_generated_tokens"] != r["max_generated_tokens"] for r in records)


def probe_dead_config(target, trainer, fixture, base, fields_):
    """Each (name, value): None if the run moved, else a finding; an inconclusive baseline gives none."""
    losses, weights, moved, records = _trace(target, trainer, fixture, base)
    lengths_vary = _lengths_vary(records)
    again = _trace(target, trainer, fixture, base)
    out = []
    if not moved or again[0] != losses or not _identical(again[1], weights):
        why = ("the baseline's weights had not moved before its last step" if not moved
               else "the baseline is not reproducible")
        return [(name, value, None, {"inconclusive": why}) for name, value in fields_]
    for name, value in fields_:
        if trainer == "grpo" and name == "loss_type" and lengths_vary is False:
            out.append((name, value, None, {"inconclusive": "every completion had the same length, where the "
                                                            "loss types coincide"}))
            continue
        try:
            varied = _with(base, name, value)
            v_losses, v_weights, _, _ = _trace(target, trainer, fixture, varied)
        except ValueError as err:  # the target refuses the value: not offered, not dead
            out.append((name, value, None, {"refused": str(err)}))
            continue
        current = dict(base.extra).get(name, getattr(base, name, None))
        evidence = {"field": name, "baseline_value": current, "varied_value": value,
                    "baseline_losses": losses, "varied_losses": v_losses, "steps": base.steps}
        if v_losses == losses and _identical(v_weights, weights):
            out.append((name, value, (f"{name}={value}", f"setting {name} to {value!r} changed nothing: the losses "
                                      f"of steps 1-{base.steps} and every weight after them are bitwise identical "
                                      f"to the baseline's"), evidence))
        else:
            out.append((name, value, None, evidence))
    return out


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------


def load_expected(path=None):
    path = EXPECTED_FILE if path is None else path
    if not Path(path).exists():
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
        workaround = target.workaround() if hasattr(target, "workaround") else None
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
    documented = target.documented_hyperparameters(trainer) if hasattr(target, "documented_hyperparameters") else []
    for name, value, result, ev in probe_dead_config(target, trainer, fixture, base, documented):
        if "inconclusive" in ev:
            note = f"inconclusive: {name}={value!r}: {ev['inconclusive']}"
        elif "refused" in ev:
            note = f"n/a: {ev['refused']}"
        else:
            note = f"ok: {name}={value!r}"
        add("dead-config", result, ev, "" if result else note)


def conformance_outcomes(target_name, trainers=(), fixtures=(), expected=None):
    """Every probe's outcome: findings (status expected/unexpected) and the probes that passed or were skipped."""
    target = load_target(target_name)
    expected = load_expected() if expected is None else expected
    version = target.version() if hasattr(target, "version") else "n/a"
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


def run_conformance(target_name, trainers=(), fixtures=()):
    """The findings (status "expected" or "unexpected") of every probe on the given trainers and fixtures."""
    outcomes = conformance_outcomes(target_name, trainers, fixtures)
    return [o for o in outcomes if o["status"] in ("expected", "unexpected")]


def step_times(targets, trainers, fixture="tiny-llama", steps=6, repeats=3):
    """Median ms per step (steps 2..N; the first carries set-up) of each target, interleaved."""
    samples = {(t, tr): [] for t in targets for tr in trainers}
    loaded = {t: load_target(t) for t in targets}
    for _ in range(repeats):
        for trainer in trainers:
            for name in targets:
                if trainer not in loaded[name].trainers():
                    continue
                workaround = loaded[name].workaround()[0] if hasattr(loaded[name], "workaround") else {}
                settings = _settings(trainer, steps, extra=workaround)
                session = Session(loaded[name], trainer, fixture, settings)
                session.step()
                start = time.perf_counter()
                for _ in range(steps - 1):
                    session.step()
                samples[(name, trainer)].append(1e3 * (time.perf_counter() - start) / (steps - 1))
                _close(session)
    return {key: float(np.median(v)) for key, v in samples.items() if v}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlxth.harness.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--trainer", action="append", default=[])
    parser.add_argument("--fixture", action="append", default=[])
    parser.add_argument("--json", help="write every outcome (with evidence) to this file")
    parser.add_argument("--timing", action="store_true", help="only measure ms/step against the reference target")
    args = parser.parse_args(argv)
    from tabulate import tabulate

    if args.timing:
        trainers = tuple(args.trainer) or TRAINERS
        times = step_times(["reference", args.target], trainers, (args.fixture or ["tiny-llama"])[0])
        trainers = tuple(t for t in trainers if (args.target, t) in times)
        nan = float("nan")
        rows = [(tr, f"{times.get(('reference', tr), nan):.1f}", f"{times.get((args.target, tr), nan):.1f}")
                for tr in trainers]
        print(tabulate(rows, headers=["trainer", "reference ms/step", f"{args.target} ms/step"]))
        return 0
    outcomes = conformance_outcomes(args.target, tuple(args.trainer), tuple(args.fixture))
    rows = [(o["trainer"], o["fixture"], o["probe"], o["status"], o["signature"], o["statement"][:110])
            for o in outcomes]
    print(tabulate(rows, headers=["trainer", "fixture", "probe", "status", "signature", "statement"]))
    if args.json:
        Path(args.json).write_text(json.dumps(outcomes, indent=1, default=str))
    unexpected = [o for o in outcomes if o["status"] == "unexpected"]
    seen = {(o["library"], o["trainer"], o["probe"], o["signature"], o["fixture"]) for o in outcomes}
    probed = {(o["library"], o["trainer"], o["fixture"]) for o in outcomes}
    for e in load_expected():
        for fixture in e.get("fixtures", FIXTURES):
            if (e["library"], e["trainer"], fixture) in probed and \
                    (e["library"], e["trainer"], e["probe"], e["signature"], fixture) not in seen:
                print(f"expected finding not observed (fixed?): {e['library']}/{e['trainer']}/{fixture}/"
                      f"{e['probe']}: {e['signature']}")
    library = f"{outcomes[0]['library']} {outcomes[0]['version']}" if outcomes else args.target
    print(f"{library}: {len(unexpected)} unexpected, {sum(o['status'] == 'expected' for o in outcomes)} expected "
          f"findings")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
