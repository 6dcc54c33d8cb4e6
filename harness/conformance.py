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
"""

import argparse
import itertools
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxth.fixtures import FIXTURES, load_fixture
from mlxth.fixtures.datasets import load_dataset

from . import formulas
from .cases import DATASETS, TRAINERS, case_settings
from .recompute import recompute_loss
from .target import Settings, load_target

EXPECTED_FILE = Path(__file__).resolve().parent.parent / "snapshots" / "expected_findings.json"
PAIRS = ("dpo", "orpo", "simpo")
SETTINGS_FIELDS = {f.name for f in fields(Settings)}
RTOL, ATOL = 2e-5, 2e-6  # fp32 library vs float64 recomputation on the same rows


# ----------------------------------------------------------------------------
# Running a target
# ----------------------------------------------------------------------------


def _settings(trainer, steps, **changes):
    settings = case_settings(trainer, "fp32", steps)
    extra = dict(settings.extra)
    extra.update(changes.pop("extra", {}))
    return replace(settings, extra=extra, **changes)


def _with(settings, name, value):
    if name in SETTINGS_FIELDS:
        return replace(settings, **{name: value})
    return replace(settings, extra={**settings.extra, name: value})


def _perturb(model, seed=1234, scale=0.05):
    """Move every weight by ``scale`` of its own spread, deterministically (numpy's generator)."""
    rng = np.random.default_rng(seed)
    new = []
    for key, value in tree_flatten(model.parameters()):
        v = np.array(value.astype(mx.float32))
        new.append((key, mx.array(v + scale * (v.std() or 1.0) * rng.standard_normal(v.shape)).astype(value.dtype)))
    model.load_weights(new)


class Session:
    """One fresh model, the target's run on it, and the steps taken so far."""

    def __init__(self, target, trainer, fixture, settings, rows=None, perturb=False):
        self.model, tokenizer = load_fixture(fixture)
        if rows is None:
            rows = load_dataset(DATASETS[trainer], tokenizer=tokenizer, max_length=settings.max_length)
        self.rows = rows
        self.run = target.prepare(trainer, self.model, tokenizer, rows, settings)
        if perturb:
            _perturb(self.model)
        self.initial = dict(tree_flatten(self.model.parameters()))
        self.records = []

    def step(self):
        record = self.run.step()
        self.records.append({k: (v.item() if isinstance(v, mx.array) else v) for k, v in record.items()})
        return self.records[-1]

    def losses(self):
        return [r["loss"] for r in self.records]

    def weights(self):
        return dict(tree_flatten(self.model.parameters()))

    def moved(self):
        now = self.weights()
        return any(not bool(mx.array_equal(v, now[k])) for k, v in self.initial.items() if k in now)


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool(mx.array_equal(a[k], b[k])) for k in a)


def _close(session):
    close = getattr(session.run, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - already ended
            pass


# ----------------------------------------------------------------------------
# Loss variants: which term of the standard formula does a library change?
# ----------------------------------------------------------------------------


def _token_logps(model, seq):
    """float64 log P(seq[i] | seq[:i]) for i = 1 .. len(seq) - 1, one unpadded sequence."""
    logits = model(mx.array([seq[:-1]])).astype(mx.float32)[0]
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(seq[1:])[:, None], axis=-1)[:, 0]
    return np.array(picked.tolist(), dtype=np.float64)


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


SCOPES = {  # name -> plain statement of what a library scores instead of completion + EOS
    "completion+eos": "",
    "completion": "scores the completion without its EOS token",
    "sequence": "scores every token of prompt + completion after the first (the prompt too), without the EOS",
    "sequence+eos": "scores every token of prompt + completion after the first (the prompt too)",
    "after-shared-prefix": ("scores only the tokens after the longest common token prefix of the chosen and "
                            "rejected sequences (a first completion token both share is dropped), without the EOS"),
}


def _scored(tl, n_prompt, shared):
    """Sums and counts of ``tl`` (token log-probs of prompt + completion + EOS) per scope."""
    last = len(tl) + 1  # sequence length with EOS
    spans = {"completion+eos": (n_prompt, last), "completion": (n_prompt, last - 1), "sequence": (1, last - 1),
             "sequence+eos": (1, last)}
    if shared is not None:
        spans["after-shared-prefix"] = (shared, last - 1)
    return {s: (float(tl[a - 1:b - 1].sum()), b - a) for s, (a, b) in spans.items()}


def _quantities(model, rows, fields_, shift=False):
    """Per scope: arrays of summed log-probs and token counts per row and field; and sequence lengths."""
    out = {}
    for field in fields_:
        comps = [r[f"{field}_ids"] for r in rows]
        if shift:
            comps = comps[-1:] + comps[:-1]
        per_row = []
        for r, c in zip(rows, comps):
            shared = None
            if len(fields_) == 2:
                other = fields_[1] if field == fields_[0] else fields_[0]
                a = r["prompt_ids"] + r[f"{field}_ids"][:-1]
                b = r["prompt_ids"] + r[f"{other}_ids"][:-1]
                shared = _common_prefix(a, b)
            tl = _token_logps(model, r["prompt_ids"] + c)
            per_row.append((_scored(tl, len(r["prompt_ids"]), shared), len(r["prompt_ids"]) + len(c) - 1))
        out[field] = {s: (np.array([q[s][0] for q, _ in per_row]), np.array([q[s][1] for q, _ in per_row], float))
                      for s in per_row[0][0]}
        out[field]["seqlen"] = np.array([n for _, n in per_row], float)
    return out


def _choices(trainer, hp):
    """Per term: the standard choice first, then the alternatives, each with its plain statement."""
    scopes = [(s, SCOPES[s]) for s in SCOPES if trainer in PAIRS or s != "after-shared-prefix"]
    denom = [("tokens", ""), ("seqlen", "length-normalises by the whole sequence length (prompt + completion, "
                                         "no EOS) instead of the completion's token count")]
    if trainer == "dpo":
        form = [(hp["loss_type"], "")]
        if hp["loss_type"] != "sigmoid":
            form.append(("sigmoid", f"uses the sigmoid loss although loss_type is {hp['loss_type']!r}"))
        smooth = [(hp["label_smoothing"], "")]
        if hp["label_smoothing"]:
            smooth.append((0.0, "ignores label_smoothing"))
        ref = [("model", ""), ("policy", "uses the detached policy itself as the reference (log-ratio 0 in value)")]
        return {"scope": scopes, "denominator": denom, "form": form, "label_smoothing": smooth, "reference": ref}
    if trainer == "orpo":
        return {"scope": scopes, "denominator": denom,
                "nll": [("token-mean", ""), ("sequence-mean", "averages the NLL per sequence and then over the "
                                                           "batch, instead of over all chosen tokens of the batch")],
                "odds": [("log-odds", ""),
                         ("summed-difference", "uses the difference of summed log-probs (the log probability ratio) "
                                               "where the standard uses the log-odds of the length-averaged "
                                               "probabilities"),
                         ("averaged-difference", "uses the difference of length-averaged log-probs instead of the "
                                                 "log-odds")]}
    if trainer == "simpo":
        margin = [("minus-gamma", ""),
                  ("minus-beta-gamma", "multiplies the margin gamma by beta: beta*(delta - gamma) instead of "
                                       "beta*delta - gamma")]
        return {"scope": scopes, "denominator": denom, "margin": margin}
    return {"scope": scopes,
            "form": [("one-minus-sigmoid", ""), ("neg-log-sigmoid", "uses -log sigmoid(.) where the standard uses "
                                                                    "1 - sigmoid(.)")],
            "reference": [("model", ""), ("policy", "uses the detached policy itself as the reference (log-ratio 0 "
                                                    "in value)")],
            "kl_point": [("batch", ""), ("zero", "has no KL reference point z (z = 0)")],
            "weights": [("configured", ""), ("ignored", "ignores desirable_weight / undesirable_weight")]}


def _variant_loss(trainer, hp, v, pol, ref, rows, mism=None):
    with np.errstate(divide="ignore", invalid="ignore"):  # a scope with no tokens gives NaN: never a match
        return _variant_loss_(trainer, hp, v, pol, ref, rows, mism)


def _variant_loss_(trainer, hp, v, pol, ref, rows, mism):
    s = v["scope"]
    if trainer in ("dpo", "orpo", "simpo"):
        (pc, nc), (pr, nr) = pol["chosen"][s], pol["rejected"][s]
        dc, dr = (nc, nr) if v.get("denominator") == "tokens" else (pol["chosen"]["seqlen"], pol["rejected"]["seqlen"])
    if trainer == "dpo":
        rc, rr = (ref["chosen"][s][0], ref["rejected"][s][0]) if v["reference"] == "model" else (pc, pr)
        if v["form"] == "ipo":
            pc, pr, rc, rr = pc / dc, pr / dr, rc / dc, rr / dr
        return formulas.dpo(pc, pr, rc, rr, beta=hp["beta"], loss_type=v["form"],
                            label_smoothing=v["label_smoothing"])[0]
    if trainer == "orpo":
        avg_c, avg_r = pc / dc, pr / dr
        nll = -pc.sum() / dc.sum() if v["nll"] == "token-mean" else -np.mean(avg_c)
        if v["odds"] == "log-odds":
            odds = (avg_c - formulas.log1mexp(avg_c)) - (avg_r - formulas.log1mexp(avg_r))
        else:
            odds = pc - pr if v["odds"] == "summed-difference" else avg_c - avg_r
        return float(nll - hp["beta"] * np.mean(formulas.log_sigmoid(odds)))
    if trainer == "simpo":
        delta = pc / dc - pr / dr
        z = hp["beta"] * delta - hp["gamma"] if v["margin"] == "minus-gamma" else hp["beta"] * (delta - hp["gamma"])
        return float(np.mean(formulas.neg_log_sigmoid(z)))
    # kto
    p, r = pol["completion"][s][0], ref["completion"][s][0]
    ratio = p - r if v["reference"] == "model" else np.zeros_like(p)
    z = 0.0
    if v["kl_point"] == "batch" and v["reference"] == "model":
        z = formulas.kto_z(mism[0]["completion"][s][0], mism[1]["completion"][s][0])
    labels = np.array([bool(row["label"]) for row in rows])
    wd, wu = (hp["desirable_weight"], hp["undesirable_weight"]) if v["weights"] == "configured" else (1.0, 1.0)
    b = hp["beta"]
    if v["form"] == "one-minus-sigmoid":
        losses = np.where(labels, wd * formulas.sigmoid(-b * (ratio - z)), wu * formulas.sigmoid(-b * (z - ratio)))
    else:
        losses = np.where(labels, wd * formulas.neg_log_sigmoid(b * (ratio - z)),
                          wu * formulas.neg_log_sigmoid(b * (z - ratio)))
    return float(np.mean(losses))


def _variants(trainer, hp):
    terms = _choices(trainer, hp)
    names = list(terms)
    for combo in itertools.product(*(terms[n] for n in names)):
        variant = {n: c[0] for n, c in zip(names, combo)}
        changes = [(n, c[0], c[1]) for n, c, std in zip(names, combo, (terms[n][0] for n in names)) if c != std]
        yield variant, changes


def _close_enough(a, b):
    return abs(a - b) <= ATOL + RTOL * abs(b)


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


def _trace(target, trainer, fixture, settings):
    """Losses, final weights, and whether the weights had moved before the last step's loss was taken."""
    session = Session(target, trainer, fixture, settings)
    moved_early = False
    try:
        for k in range(settings.steps):
            session.step()
            if k == settings.steps - 2:
                moved_early = session.moved()
    finally:
        _close(session)
    return session.losses(), session.weights(), moved_early, session.records


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
