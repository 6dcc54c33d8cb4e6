"""The standard first-step gradient, computed independently, and what a target's first update says of its own.

The loss is a function of per-sequence log-probs; its derivative with respect
to each log-prob is taken numerically (central differences, float64) from the
formulas in ``formulas.py``, and the chain rule through the model is MLX's
autodiff of ``sum_i w_i logp_i`` on unpadded sequences.  GRPO's first step
(ratio exactly 1) has per-token weights in closed form
(``grpo_oracle.step``).  The target reports
its pre-clip gradient norm; and at step 1 every optimizer MLX libraries use
(SGD, Adam, AdamW) moves each weight against the sign of its gradient, so the
first update's signs are checked where the gradient is clearly nonzero.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import formulas
from .checks import _check, skipped
from .recompute import _logps

SIGN_AGREEMENT = 0.99  # of the weights whose |gradient| is above SIGNIFICANT x the largest
SIGNIFICANT = 1e-2


def _loss_fn(trainer, hp, rows, fixed):
    """The standard loss as a function of the policy's per-sequence log-probs (one flat vector)."""
    if trainer in ("dpo", "orpo", "simpo"):
        n, (nc, nr) = len(rows), fixed["lengths"]

        def loss(v):
            pc, pr = v[:n], v[n:]
            if trainer == "orpo":
                return formulas.orpo(pc, pr, nc, nr, beta=hp["beta"])[0]
            if trainer == "simpo":
                return formulas.simpo(pc, pr, nc, nr, beta=hp["beta"], gamma=hp["gamma"])[0]
            rc, rr = fixed["reference"]
            if hp["loss_type"] == "ipo":
                pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
            return formulas.dpo(pc, pr, rc, rr, beta=hp["beta"], loss_type=hp["loss_type"],
                                label_smoothing=hp["label_smoothing"])[0]
        return loss
    labels = [bool(r["label"]) for r in rows]
    return lambda v: formulas.kto(v, fixed["reference"], labels, fixed["z"], beta=hp["beta"],
                                  desirable_weight=hp["desirable_weight"],
                                  undesirable_weight=hp["undesirable_weight"])[0]


def _weights(loss, v):
    out = np.zeros_like(v)
    for i in range(len(v)):
        h = 1e-5 * (1 + abs(v[i]))
        up, down = v.copy(), v.copy()
        up[i] += h
        down[i] -= h
        out[i] = (loss(up) - loss(down)) / (2 * h)
    return out


def standard_gradient(trainer, shadow, reference, rows, hp) -> dict:
    """{name: gradient} of the standard loss with respect to ``shadow``'s trainable parameters."""
    fields = ("chosen", "rejected") if trainer in ("dpo", "orpo", "simpo") else ("completion",)
    values, fixed = [], {}
    for field in fields:
        v, n = _logps(shadow, rows, field)
        values.append(v)
        fixed.setdefault("lengths", []).append(n)
    if trainer == "dpo":
        fixed["reference"] = [_logps(reference, rows, f)[0] for f in fields]
    elif trainer == "kto":
        fixed["reference"] = _logps(reference, rows, "completion")[0]
        fixed["z"] = formulas.kto_z(_logps(shadow, rows, "completion", shift=True)[0],
                                    _logps(reference, rows, "completion", shift=True)[0])
    w = _weights(_loss_fn(trainer, hp, rows, fixed), np.concatenate(values))
    seqs = [(r["prompt_ids"], r[f"{field}_ids"]) for field in fields for r in rows]
    return token_gradient(shadow, [(p, c, np.full(len(c), weight)) for weight, (p, c) in zip(w, seqs)])


def token_gradient(shadow, items) -> dict:
    """{name: gradient} of ``sum w_t log p(completion_t)`` over ``items`` of (prompt, completion,
    per-token weights): the chain rule through the model for a loss whose derivative with respect
    to each completion token's log-prob is ``w_t``."""
    def linear(model):
        total = mx.array(0.0)
        for prompt, completion, weights in items:
            seq = list(prompt) + list(completion)
            logits = model(mx.array([seq[:-1]])).astype(mx.float32)[0]
            logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            picked = mx.take_along_axis(logp, mx.array(seq[1:])[:, None], axis=-1)[len(prompt) - 1:, 0]
            total = total + (mx.array(np.asarray(weights, dtype=np.float32)) * picked).sum()
        return total

    was = shadow.training
    nn.Module.train(shadow, True)  # a copy keeps a target's replaced ``train``: the class's own method
    _, grads = nn.value_and_grad(shadow, linear)(shadow)
    nn.Module.train(shadow, was)
    return dict(tree_flatten(grads))


def check(grads: dict, before: dict, after: dict, record: dict, tolerances, signs: bool = True) -> dict:
    """The first step against the standard gradient: the reported norm, and the update's signs."""
    norm = float(np.sqrt(sum(float((g.astype(mx.float32) ** 2).sum()) for g in grads.values())))
    problems = []
    reported = record.get("grad_norm")
    rtol = tolerances["gradient_rtol"]
    if isinstance(reported, (int, float)) and not abs(reported - norm) <= rtol * norm + 1e-7:
        problems.append(f"step 1 grad_norm reported {reported:.7g}, standard gradient's norm {norm:.7g} "
                        f"(rtol {rtol:g})")
    largest = max((float(mx.abs(g).max()) for g in grads.values()), default=0.0)
    agree = total = 0
    for name, g in grads.items() if signs else ():  # bf16 rounds many first updates away: norms only
        if name not in before or name not in after:
            continue
        g = np.array(g.astype(mx.float32))
        moved = np.array((after[name].astype(mx.float32) - before[name].astype(mx.float32)))
        big = np.abs(g) > SIGNIFICANT * largest
        total += int(big.sum())
        agree += int((np.sign(moved[big]) == -np.sign(g[big])).sum())
    if total and agree < SIGN_AGREEMENT * total:
        problems.append(f"the first update moved {total - agree} of {total} weights with a clearly nonzero "
                        f"standard gradient the wrong way or not at all")
    if not total and not isinstance(reported, (int, float)):
        return skipped("gradient", "the target reports no gradient norm and changed no weight we can compare")
    if problems:
        return _check("gradient", False, "; ".join(problems), "gradient-mismatch")
    rel = abs(reported - norm) / norm if isinstance(reported, (int, float)) and norm else 0.0
    return _check("gradient", True, f"step 1: norm {norm:.6g} as reported (relative difference {rel:.2g}); "
                                    f"{agree}/{total} significant weights moved against the standard gradient")
