"""The conformance probes: what one case run does not check.

``loss-agreement``     the reported loss at steps 1 and 2 (batch 4 and batch 1)
                       against the standard formula on the same rows; when they
                       disagree, the smallest set of varied terms that
                       reproduces every reported value (``variants.py``).
                       GRPO: the closed form (loss 0 with beta 0).
``batch-consistency``  two rows as two batch-1 runs and as one batch-2 run, at
                       learning rate 0 on a perturbed policy: the difference
                       must be the one the standard formula gives.
``dead-config``        each documented hyper-parameter set to a second value
                       must change the losses or the weights.
"""

from dataclasses import replace


from ...fixtures import load_fixture
from ...fixtures.datasets import load_dataset
from ..judge import formulas
from ..judge.recompute import recompute_loss
from ..model import DATASETS
from .session import Session, _close, _identical, _trace, _with
from .variants import _close_enough, _quantities, _variant_loss, _variants


# ----------------------------------------------------------------------------
# Loss agreement (the term variants: loss_variants.py)
# ----------------------------------------------------------------------------


def probe_loss_agreement(target, trainer, fixture, base, batch_size, steps=2):
    settings = replace(base, batch_size=batch_size)
    session = Session(target, trainer, fixture, settings)
    hp = session.run.hyperparameters() or {}
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
    hp = session.run.hyperparameters() or {}
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
        hp = session.run.hyperparameters() or {}
        reference = session.run.reference_model or session.model
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
