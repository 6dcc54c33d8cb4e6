"""Independent float64 numpy reference for GRPO (advantages, loss, metrics, gradient).

Written from the definitions in the project's loss notes (GRPO section) and
TRL's conventions, not from ``trainers/grpo_loss.py``.  Nothing here imports
mlx: functions take array-likes, compute in float64 and return numpy arrays
or plain Python floats.

Conventions (TRL):

* advantages ``A = r - mean_group(r)``; ``"group"`` divides by the
  Bessel-corrected std of the group plus 1e-4, ``"batch"`` by the
  Bessel-corrected std of all rewards plus 1e-4, ``"none"`` does not divide;
* per token ``ratio = exp(logp - old)``,
  ``loss_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``
  plus ``beta * (exp(ref - logp) - (ref - logp) - 1)`` when ``beta > 0``;
* normalisation by loss type (``R`` rows in this batch, ``N`` = num_sequences,
  default ``R``):
    - grpo: ``sum_i (masked sum_i / max(n_i, 1)) / N``
    - bnpo: ``masked sum / max(batch tokens, 1) * R / N``
    - dr_grpo: ``masked sum / (N * max_completion_length)``
    - dapo: ``masked sum / max(num_tokens, 1)`` (default: batch tokens)
"""

import numpy as np

EPS_STD = 1e-4
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def f64(x):
    return np.asarray(x, dtype=np.float64)


def bessel_std(values):
    """Sample standard deviation ``sqrt(sum (x - mean)^2 / (n - 1))``."""
    values = f64(values).ravel()
    n = values.size
    centred = values - values.sum() / n
    return float(np.sqrt((centred * centred).sum() / (n - 1)))


def group_advantages(rewards, group_size, scale_rewards="group"):
    """Return ``(advantages, zero_std)`` as float64 / bool numpy arrays."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}")
    rewards = f64(rewards).ravel()
    n_groups = rewards.size // group_size
    advantages = np.empty_like(rewards)
    zero_std = np.empty(n_groups, dtype=bool)
    batch_std = bessel_std(rewards)
    for g in range(n_groups):
        lo, hi = g * group_size, (g + 1) * group_size
        group = rewards[lo:hi]
        centred = group - group.sum() / group_size
        if scale_rewards == "group":
            centred = centred / (bessel_std(group) + EPS_STD)
        elif scale_rewards == "batch":
            centred = centred / (batch_std + EPS_STD)
        advantages[lo:hi] = centred
        zero_std[g] = bool(np.all(group == group[0]))
    return advantages, zero_std


def _per_token(logps, old_logps, advantages, ref_logps, beta, eps_low, eps_high):
    logps, old_logps = f64(logps), f64(old_logps)
    adv = f64(advantages).reshape(-1, 1)
    ratio = np.exp(logps - old_logps)
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    clipped = np.minimum(np.maximum(ratio, lo), hi)
    surrogate = -np.minimum(ratio * adv, clipped * adv)
    kl = None
    if beta > 0:
        delta = f64(ref_logps) - logps
        kl = np.exp(delta) - delta - 1.0
        surrogate = surrogate + beta * kl
    low = (ratio < lo) & (adv < 0)
    high = (ratio > hi) & (adv > 0)
    return ratio, adv, surrogate, kl, low, high


def _token_weights(mask, loss_type, max_completion_length, num_sequences, num_tokens):
    """d loss / d (per-token loss): the normalisation as a per-token weight."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    mask = f64(mask)
    rows = mask.shape[0]
    n_seq = rows if num_sequences is None else num_sequences
    if loss_type == "grpo":
        per_row = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        return mask / (per_row * n_seq)
    if loss_type == "bnpo":
        return mask / max(mask.sum(), 1.0) * (rows / n_seq)
    if loss_type == "dr_grpo":
        return mask / (n_seq * max_completion_length)
    tokens = mask.sum() if num_tokens is None else float(num_tokens)
    return mask / max(tokens, 1.0)


def grpo_loss(
    logps,
    old_logps,
    advantages,
    mask,
    ref_logps=None,
    beta=0.0,
    epsilon_low=0.2,
    epsilon_high=0.2,
    loss_type="grpo",
    max_completion_length=None,
    num_sequences=None,
    num_tokens=None,
):
    """Return ``(loss, metrics)`` with plain floats; metric names as TRL's."""
    ratio, adv, per_token, kl, low, high = _per_token(
        logps, old_logps, advantages, ref_logps, beta, epsilon_low, epsilon_high
    )
    weights = _token_weights(mask, loss_type, max_completion_length, num_sequences, num_tokens)
    loss = float((per_token * weights).sum())

    mask = f64(mask)
    n_mask = max(mask.sum(), 1.0)
    metrics = {
        "clip_ratio/low_mean": float((low * mask).sum() / n_mask),
        "clip_ratio/high_mean": float((high * mask).sum() / n_mask),
        "clip_ratio/region_mean": float(((low | high) * mask).sum() / n_mask),
    }
    if kl is not None:
        metrics["kl"] = float((kl * mask).sum() / n_mask)
    return loss, metrics


def grpo_grad_logps(
    logps,
    old_logps,
    advantages,
    mask,
    ref_logps=None,
    beta=0.0,
    epsilon_low=0.2,
    epsilon_high=0.2,
    loss_type="grpo",
    max_completion_length=None,
    num_sequences=None,
    num_tokens=None,
):
    """Analytic ``d loss / d logps`` with ``old_logps`` and ``ref_logps`` held fixed.

    The surrogate ``-min(ratio*A, clip(ratio)*A)`` has derivative
    ``-A * ratio`` except where the clipped branch is active and constant,
    i.e. exactly the clip region (``ratio < 1-eps_low, A < 0`` or
    ``ratio > 1+eps_high, A > 0``), where it is 0.  The k3 term gives
    ``beta * (1 - exp(ref - logp))``.
    """
    ratio, adv, _, _, low, high = _per_token(
        logps, old_logps, advantages, ref_logps, beta, epsilon_low, epsilon_high
    )
    d_token = np.where(low | high, 0.0, -adv * ratio)
    if beta > 0:
        d_token = d_token + beta * (1.0 - np.exp(f64(ref_logps) - f64(logps)))
    weights = _token_weights(mask, loss_type, max_completion_length, num_sequences, num_tokens)
    return d_token * weights
