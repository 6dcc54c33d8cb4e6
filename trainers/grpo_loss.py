"""GRPO's pure functions: group advantages and the clipped, token-normalised loss.

Semantics follow DeepSeekMath (Shao et al. 2024) and TRL:

* advantages ``A_i = (r_i - mean_group(r)) / (std + 1e-4)`` with the
  Bessel-corrected std of the group (``scale_rewards="group"``), of the whole
  batch (``"batch"``), or no scaling (``"none"``);
* per token ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``,
  ``ratio = exp(logp - old_logp)``, plus ``beta * k3`` with
  ``k3 = exp(ref - logp) - (ref - logp) - 1`` when ``beta > 0``;
* token normalisation by ``loss_type``: grpo (mean per sequence, then over
  sequences), bnpo (over the batch's completion tokens), dr_grpo (over
  ``batch * max_completion_length``), dapo (over the completion tokens of the
  whole optimizer step, across micro-batches).  Under gradient accumulation
  grpo and dr_grpo divide by the step's sequence count (exact for any split);
  bnpo weights each micro-batch's token mean by its share of the sequences,
  which is TRL's average of micro-batch losses when micro-batches are equal.
"""

import mlx.core as mx

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards, group_size: int, scale_rewards: str = "group"):
    """Return ``(advantages, zero_std)``; ``zero_std`` flags each group whose rewards are all equal."""
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"grpo: unknown scale_rewards {scale_rewards!r}; expected one of {SCALE_REWARDS}")
    grouped = rewards.reshape(-1, group_size)
    mean = mx.repeat(grouped.mean(axis=1), group_size)
    group_std = mx.repeat(mx.std(grouped, axis=1, ddof=1), group_size)
    advantages = rewards - mean
    if scale_rewards == "group":
        advantages = advantages / (group_std + 1e-4)
    elif scale_rewards == "batch":
        advantages = advantages / (mx.std(rewards, ddof=1) + 1e-4)
    zero_std = mx.max(grouped, axis=1) == mx.min(grouped, axis=1)
    return advantages, zero_std


def grpo_loss(
    logps,
    old_logps,
    advantages,
    mask,
    ref_logps=None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    max_completion_length: int = None,
    num_sequences=None,
    num_tokens=None,
):
    """Clipped-surrogate GRPO loss over ``(batch, time)`` per-token log-probs.

    ``num_sequences`` / ``num_tokens`` are the whole optimizer step's counts
    (for gradient accumulation); left as ``None`` they are this batch's.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"grpo: unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
    if loss_type == "dr_grpo" and not max_completion_length:
        raise ValueError("grpo: loss_type 'dr_grpo' needs max_completion_length")
    adv = advantages[:, None]
    ratio = mx.exp(logps - old_logps)
    clipped = mx.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -mx.minimum(ratio * adv, clipped * adv)
    kl = None
    if beta > 0:
        delta = ref_logps - logps
        kl = mx.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    masked = per_token * mask
    n_seq = logps.shape[0] if num_sequences is None else num_sequences
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mx.maximum(mask.sum(-1), 1)).sum() / n_seq
    elif loss_type == "dr_grpo":
        loss = masked.sum() / (n_seq * max_completion_length)
    elif loss_type == "bnpo":  # this batch's tokens; micro-batches weighted by their share
        loss = masked.sum() / mx.maximum(mask.sum(), 1) * (logps.shape[0] / n_seq)
    else:  # dapo: the completion tokens of the whole step
        loss = masked.sum() / mx.maximum(mask.sum() if num_tokens is None else num_tokens, 1)

    n_mask = mx.maximum(mask.sum(), 1)
    low = (ratio < 1 - epsilon_low) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    metrics = {
        "clip_ratio/low_mean": mx.stop_gradient((low * mask).sum() / n_mask),
        "clip_ratio/high_mean": mx.stop_gradient((high * mask).sum() / n_mask),
        "clip_ratio/region_mean": mx.stop_gradient(((low | high) * mask).sum() / n_mask),
    }
    if kl is not None:
        metrics["kl"] = mx.stop_gradient((kl * mask).sum() / n_mask)
    return loss, metrics
