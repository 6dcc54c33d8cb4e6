"""Independent float64 reference implementations of the preference losses.

Written from the published definitions (see the project's loss notes and
TRL's conventions), not from ``trainers/losses.py``.  Nothing here imports
mlx: every function takes array-likes, works in float64 and returns plain
Python floats, so the tests can compare the MLX fp32 results against them.

Each loss returns ``(loss, metrics)`` with the metric names TRL uses.
"""

from decimal import Decimal, localcontext

import numpy as np

LN2 = float(Decimal(2).ln())


# --------------------------------------------------------------------------
# Scalar building blocks
# --------------------------------------------------------------------------


def f64(x):
    return np.asarray(x, dtype=np.float64)


def neg_log_sigmoid(x):
    """``-log(sigma(x)) = log(1 + exp(-x))``, stable for any sign of x."""
    return np.logaddexp(0.0, -f64(x))


def log_sigmoid(x):
    return -neg_log_sigmoid(x)


def sigmoid(x):
    """``sigma(x) = exp(log sigma(x))``; never forms ``1 + exp(large)``."""
    return np.exp(log_sigmoid(x))


def _log1mexp_scalar(x: float) -> float:
    """``log(1 - exp(x))`` evaluated in 60-digit decimal arithmetic.

    The float64 input is converted exactly to a Decimal, so the only rounding
    that matters is the final conversion back to float64.
    """
    if x > 0:
        return float("nan")
    if x == 0:
        return float("-inf")
    if np.isneginf(x):
        return 0.0
    with localcontext() as ctx:
        ctx.prec = 60
        one_minus = Decimal(1) - Decimal(float(x)).exp()
        return float(one_minus.ln())


def log1mexp(x):
    """High-precision ``log(1 - exp(x))`` for ``x <= 0`` (elementwise)."""
    x = f64(x)
    out = np.array([_log1mexp_scalar(float(v)) for v in x.ravel()], dtype=np.float64)
    return out.reshape(x.shape) if x.shape else float(out[0])


def dlog1mexp(x):
    """Derivative of ``log(1 - exp(x))``: ``-exp(x) / (1 - exp(x)) = 1 / (1 - exp(-x))``."""
    x = f64(x)
    # 1 - exp(-x) = -expm1(-x), exact enough for x < 0 in float64.
    return 1.0 / (-np.expm1(-x))


def _norm(values, count):
    values = f64(values)
    return float(values.sum() / (values.shape[0] if count is None else count))


def _pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    chosen_rewards = f64(chosen_rewards)
    rejected_rewards = f64(rejected_rewards)
    return {
        "rewards/chosen": float(np.mean(chosen_rewards)),
        "rewards/rejected": float(np.mean(rejected_rewards)),
        "rewards/margins": float(np.mean(chosen_rewards - rejected_rewards)),
        "rewards/accuracies": float(np.mean(chosen_rewards > rejected_rewards)),
        "logps/chosen": float(np.mean(f64(chosen_logps))),
        "logps/rejected": float(np.mean(f64(rejected_logps))),
    }


# --------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------


def dpo_margin(pc, pr, rc, rr):
    """``h = (pc - rc) - (pr - rr)`` in float64."""
    return (f64(pc) - f64(rc)) - (f64(pr) - f64(rr))


def dpo_per_pair(h, beta, loss_type, label_smoothing=0.0):
    h = f64(h)
    if loss_type == "sigmoid":
        eps = label_smoothing
        return (1.0 - eps) * neg_log_sigmoid(beta * h) + eps * neg_log_sigmoid(-beta * h)
    if loss_type == "hinge":
        return np.maximum(0.0, 1.0 - beta * h)
    if loss_type == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    raise ValueError(loss_type)


def dpo(pc, pr, rc, rr, beta=0.1, loss_type="sigmoid", label_smoothing=0.0, num_examples=None):
    h = dpo_margin(pc, pr, rc, rr)
    loss = _norm(dpo_per_pair(h, beta, loss_type, label_smoothing), num_examples)
    metrics = _pair_metrics(beta * (f64(pc) - f64(rc)), beta * (f64(pr) - f64(rr)), pc, pr)
    return loss, metrics


def dpo_grad_policy_chosen(pc, pr, rc, rr, beta=0.1, label_smoothing=0.0, num_examples=None):
    """Analytic d(sigmoid DPO loss)/d(policy_chosen_logps).

    d/dh [-(1-e) logsig(b h) - e logsig(-b h)] = -(1-e) b sigma(-b h) + e b sigma(b h).
    """
    h = dpo_margin(pc, pr, rc, rr)
    n = h.shape[0] if num_examples is None else num_examples
    eps = label_smoothing
    return (-(1.0 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h)) / n


# --------------------------------------------------------------------------
# ORPO
# --------------------------------------------------------------------------


def orpo(chosen, rejected, chosen_len, rejected_len, beta=0.1, num_examples=None, num_chosen_tokens=None):
    chosen, rejected = f64(chosen), f64(rejected)
    chosen_len, rejected_len = f64(chosen_len), f64(rejected_len)
    avg_c = chosen / chosen_len
    avg_r = rejected / rejected_len
    # log odds(p) = log p - log(1 - p) with log p = avg.
    log_odds = (avg_c - log1mexp(avg_c)) - (avg_r - log1mexp(avg_r))
    log_odds = f64(log_odds)
    ratio = log_sigmoid(log_odds)
    tokens = chosen_len.sum() if num_chosen_tokens is None else num_chosen_tokens
    nll = -chosen.sum() / tokens
    loss = float(nll - beta * _norm(ratio, num_examples))
    # TRL reports ORPO's logps/* on length-averaged log-probs.
    metrics = _pair_metrics(beta * avg_c, beta * avg_r, avg_c, avg_r)
    metrics["nll_loss"] = float(-chosen.sum() / chosen_len.sum())
    metrics["log_odds_ratio"] = float(np.mean(ratio))
    metrics["log_odds_chosen"] = float(np.mean(log_odds))
    return loss, metrics


# --------------------------------------------------------------------------
# SimPO
# --------------------------------------------------------------------------


def simpo(chosen, rejected, chosen_len, rejected_len, beta=2.0, gamma=1.0, num_examples=None):
    chosen, rejected = f64(chosen), f64(rejected)
    avg_c = chosen / f64(chosen_len)
    avg_r = rejected / f64(rejected_len)
    losses = neg_log_sigmoid(beta * (avg_c - avg_r) - gamma)
    # TRL (CPO trainer, simpo loss) reports logps/* on length-averaged log-probs.
    metrics = _pair_metrics(beta * avg_c, beta * avg_r, avg_c, avg_r)
    return _norm(losses, num_examples), metrics


# --------------------------------------------------------------------------
# KTO
# --------------------------------------------------------------------------


def kto_z(policy_mismatched, reference_mismatched):
    """Clamped batch KL estimate ``max(mean(p' - r'), 0)``."""
    return float(max(np.mean(f64(policy_mismatched) - f64(reference_mismatched)), 0.0))


def _mean_or_zero(values, mask):
    values = f64(values)
    return float(values[mask].mean()) if mask.any() else 0.0


def kto(policy, reference, labels, z, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0, num_examples=None):
    policy, reference = f64(policy), f64(reference)
    labels = np.asarray(labels, dtype=bool)
    ratio = policy - reference
    # 1 - sigma(t) = sigma(-t)
    desirable = desirable_weight * sigmoid(-beta * (ratio - z))
    undesirable = undesirable_weight * sigmoid(-beta * (z - ratio))
    losses = np.where(labels, desirable, undesirable)
    rewards = beta * ratio
    metrics = {
        "kl": float(z),
        "rewards/chosen": _mean_or_zero(rewards, labels),
        "rewards/rejected": _mean_or_zero(rewards, ~labels),
        "logps/chosen": _mean_or_zero(policy, labels),
        "logps/rejected": _mean_or_zero(policy, ~labels),
    }
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return _norm(losses, num_examples), metrics


def kto_grad_policy(policy, reference, labels, z, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0,
                    num_examples=None):
    """Analytic d(KTO loss)/d(policy_logps).

    desirable: d/dp w (1 - sigma(b (p - r - z))) = -w b s (1 - s), s = sigma(b (p - r - z));
    undesirable: d/dp w (1 - sigma(b (z - p + r))) = +w b t (1 - t), t = sigma(b (z - p + r)).
    """
    policy, reference = f64(policy), f64(reference)
    labels = np.asarray(labels, dtype=bool)
    u = beta * (policy - reference - z)
    s = sigmoid(u)
    t = sigmoid(-u)
    n = policy.shape[0] if num_examples is None else num_examples
    g = np.where(labels, -desirable_weight * beta * s * t, undesirable_weight * beta * t * s)
    return g / n
