"""The preference losses as pure functions of arrays.

Each takes per-example sequence log-probs (sums over completion tokens, see
``logps.sequence_logps``) and returns ``(loss, metrics)``: a scalar loss and a
dict of scalar metrics named as TRL names them.

Losses are means over the examples of the batch.  Gradient accumulation splits
a batch into micro-batches; for the micro-batch losses to add up to the
full-batch loss, pass the full batch's counts as ``num_examples`` (and, for
ORPO, ``num_chosen_tokens``).  Left as ``None`` they are this batch's counts.
"""

import mlx.core as mx
import mlx.nn as nn

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


def log1mexp(x):
    """``log(1 - exp(x))`` for ``x <= 0``, stable near 0 and for large |x|."""
    small = x > -0.6931471805599453  # -ln 2: switch point of Maechler's note
    safe_small = mx.where(small, x, -1.0)
    safe_large = mx.where(small, -1.0, x)
    return mx.where(small, mx.log(-mx.expm1(safe_small)), mx.log1p(-mx.exp(safe_large)))


def _mean(values, num_examples):
    return values.sum() / (values.shape[0] if num_examples is None else num_examples)


def _reward_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(mx.float32).mean(),
        "logps/chosen": chosen_logps.mean(),
        "logps/rejected": rejected_logps.mean(),
    }


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    reference_chosen_logps,
    reference_rejected_logps,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    num_examples=None,
):
    """DPO (Rafailov et al. 2023); sigmoid with label smoothing (cDPO), hinge, IPO.

    For ``ipo`` pass length-averaged log-probs: IPO's margin is on averages.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * nn.log_sigmoid(beta * h) - label_smoothing * nn.log_sigmoid(-beta * h)
    elif loss_type == "hinge":
        losses = nn.relu(1 - beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    metrics = _reward_metrics(
        beta * mx.stop_gradient(chosen_ratio),
        beta * mx.stop_gradient(rejected_ratio),
        mx.stop_gradient(policy_chosen_logps),
        mx.stop_gradient(policy_rejected_logps),
    )
    return _mean(losses, num_examples), metrics


def orpo_loss(
    chosen_logps,
    rejected_logps,
    chosen_lengths,
    rejected_lengths,
    beta: float = 0.1,
    num_examples=None,
    num_chosen_tokens=None,
):
    """ORPO (Hong et al. 2024): chosen NLL plus ``-beta * logsigmoid(log odds ratio)``.

    The NLL is the mean cross entropy over all chosen completion tokens of the
    batch (token-weighted, as TRL computes it); the odds term is a mean over pairs.
    """
    avg_chosen = chosen_logps / chosen_lengths
    avg_rejected = rejected_logps / rejected_lengths
    log_odds = (avg_chosen - avg_rejected) - (log1mexp(avg_chosen) - log1mexp(avg_rejected))
    ratio = nn.log_sigmoid(log_odds)
    n_tokens = chosen_lengths.sum() if num_chosen_tokens is None else num_chosen_tokens
    nll = -chosen_logps.sum() / n_tokens
    loss = nll - beta * _mean(ratio, num_examples)
    # As TRL reports them for ORPO: rewards and logps on length-averaged log-probs.
    metrics = _reward_metrics(
        beta * mx.stop_gradient(avg_chosen),
        beta * mx.stop_gradient(avg_rejected),
        mx.stop_gradient(avg_chosen),
        mx.stop_gradient(avg_rejected),
    )
    metrics["nll_loss"] = mx.stop_gradient(-chosen_logps.sum() / chosen_lengths.sum())
    metrics["log_odds_ratio"] = mx.stop_gradient(ratio.mean())
    metrics["log_odds_chosen"] = mx.stop_gradient(log_odds.mean())
    return loss, metrics


def simpo_loss(
    chosen_logps,
    rejected_logps,
    chosen_lengths,
    rejected_lengths,
    beta: float = 2.0,
    gamma: float = 1.0,
    num_examples=None,
):
    """SimPO (Meng et al. 2024): ``-logsigmoid(beta * (avg_c - avg_r) - gamma)``."""
    avg_chosen = chosen_logps / chosen_lengths
    avg_rejected = rejected_logps / rejected_lengths
    losses = -nn.log_sigmoid(beta * (avg_chosen - avg_rejected) - gamma)
    metrics = _reward_metrics(
        beta * mx.stop_gradient(avg_chosen),
        beta * mx.stop_gradient(avg_rejected),
        mx.stop_gradient(avg_chosen),
        mx.stop_gradient(avg_rejected),
    )
    return _mean(losses, num_examples), metrics


def kto_reference_point(policy_mismatched_logps, reference_mismatched_logps):
    """KTO's ``z``: the clamped, detached batch KL estimate from mismatched pairs."""
    kl = (policy_mismatched_logps - reference_mismatched_logps).mean()
    return mx.stop_gradient(mx.maximum(kl, 0.0))


def kto_loss(
    policy_logps,
    reference_logps,
    labels,
    kl,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    num_examples=None,
):
    """KTO (Ethayarajh et al. 2024) over unpaired examples.

    ``labels`` is a boolean array (True: desirable); ``kl`` the reference point
    from ``kto_reference_point``.
    """
    labels = labels.astype(mx.bool_)
    ratio = policy_logps - reference_logps
    desirable = desirable_weight * (1 - mx.sigmoid(beta * (ratio - kl)))
    undesirable = undesirable_weight * (1 - mx.sigmoid(beta * (kl - ratio)))
    losses = mx.where(labels, desirable, undesirable)
    rewards = beta * mx.stop_gradient(ratio)
    n_desirable = labels.sum()
    n_undesirable = (~labels).sum()
    metrics = {
        "kl": kl,
        # Means over the examples of each kind; 0 where a batch has none.
        "rewards/chosen": mx.where(labels, rewards, 0).sum() / mx.maximum(n_desirable, 1),
        "rewards/rejected": mx.where(labels, 0, rewards).sum() / mx.maximum(n_undesirable, 1),
        "logps/chosen": mx.where(labels, mx.stop_gradient(policy_logps), 0).sum() / mx.maximum(n_desirable, 1),
        "logps/rejected": mx.where(labels, 0, mx.stop_gradient(policy_logps)).sum()
        / mx.maximum(n_undesirable, 1),
    }
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return _mean(losses, num_examples), metrics
