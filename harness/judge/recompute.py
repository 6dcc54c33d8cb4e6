"""Recompute a step's loss independently of the implementation under test.

Log-probs are taken one sequence at a time, unpadded, so no batching or
masking code is shared with any trainer; the loss comes from the float64
formulas in ``formulas.py``.  The policy is the model under test just before
the step; the reference is a fresh load of the fixture.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import formulas


def token_logps(model, seq):
    """float64 log P(seq[i] | seq[:i]) for i = 1 .. len(seq) - 1, one unpadded sequence."""
    logits = model(mx.array([seq[:-1]])).astype(mx.float32)[0]
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logprobs, mx.array(seq[1:])[:, None], axis=-1)[:, 0]
    return np.array(picked.tolist(), dtype=np.float64)


def completion_logp(model, prompt_ids, completion_ids):
    """Sum of log-probs of ``completion_ids`` after ``prompt_ids``; and its token count."""
    logps = token_logps(model, list(prompt_ids) + list(completion_ids))
    return float(logps[len(prompt_ids) - 1:].sum()), len(completion_ids)


def _logps(model, rows, field, shift=False):
    completions = [r[f"{field}_ids"] for r in rows]
    if shift:  # KTO's mismatched pairs: prompt_i with completion_{i-1}
        completions = completions[-1:] + completions[:-1]
    out = [completion_logp(model, r["prompt_ids"], c) for r, c in zip(rows, completions)]
    return np.array([v for v, _ in out]), np.array([n for _, n in out], dtype=np.float64)


def recompute_loss(trainer: str, policy, reference, rows, hp: dict) -> float:
    """The standard loss of ``trainer`` on ``rows`` with hyper-parameters ``hp``."""
    return recompute_step(trainer, policy, reference, rows, hp)[0]


TIE = 1e-4  # a chosen/rejected log-prob gap this small may flip sign between two correct computations


def _untie(loss_and_metrics, gaps):
    """Leave out the reward accuracy when a pair is (nearly) tied: the comparison has no stable answer."""
    loss, metrics = loss_and_metrics
    if len(gaps) and np.min(np.abs(gaps)) < TIE:
        metrics = {k: v for k, v in metrics.items() if k != "rewards/accuracies"}
    return loss, metrics


def recompute_step(trainer: str, policy, reference, rows, hp: dict):
    """The standard ``(loss, metrics)`` of ``trainer`` on ``rows`` with hyper-parameters ``hp``."""
    if trainer in ("dpo", "orpo", "simpo"):
        pc, nc = _logps(policy, rows, "chosen")
        pr, nr = _logps(policy, rows, "rejected")
        if trainer == "orpo":
            return _untie(formulas.orpo(pc, pr, nc, nr, beta=hp["beta"]), pc / nc - pr / nr)
        if trainer == "simpo":
            return _untie(formulas.simpo(pc, pr, nc, nr, beta=hp["beta"], gamma=hp["gamma"]), pc / nc - pr / nr)
        rc, _ = _logps(reference, rows, "chosen")
        rr, _ = _logps(reference, rows, "rejected")
        if hp["loss_type"] == "ipo":
            pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
        return _untie(formulas.dpo(pc, pr, rc, rr, beta=hp["beta"], loss_type=hp["loss_type"],
                                   label_smoothing=hp["label_smoothing"]), (pc - rc) - (pr - rr))
    if trainer == "kto":
        p, _ = _logps(policy, rows, "completion")
        r, _ = _logps(reference, rows, "completion")
        was = policy.training
        nn.Module.train(policy, False)  # z is a detached estimate: taken as the reference's, in inference mode
        pm, _ = _logps(policy, rows, "completion", shift=True)
        nn.Module.train(policy, was)
        rm, _ = _logps(reference, rows, "completion", shift=True)
        z = formulas.kto_z(pm, rm)
        labels = [bool(row["label"]) for row in rows]
        return formulas.kto(p, r, labels, z, beta=hp["beta"], desirable_weight=hp["desirable_weight"],
                            undesirable_weight=hp["undesirable_weight"])
    raise KeyError(trainer)
