"""An independent GRPO step: rewards, group advantages, the clipped surrogate, the k3 KL, the loss types.

Written from the definitions (DeepSeekMath; TRL's GRPO trainer for the loss
types and metric names), in float64 numpy, one unpadded sequence at a time:
nothing is shared with ``trainers/`` but the reward functions the trainer is
handed.  Inputs are what a step leaves behind: the prompts, the completions
it sampled (token ids, EOS included when sampled), and the policy before the
step, at the start of its generation batch, and the reference.
"""

import numpy as np

from .recompute import token_logps


def rewards(rows, completions, group, reward_funcs, decode, eos_id):
    """Weighted reward of every completion (EOS dropped from the text); rows repeat per group."""
    out = []
    for i, completion in enumerate(completions):
        row = rows[i // group]
        text = decode([t for t in completion if t != eos_id])
        out.append(sum(w * fn(row["prompt"], text, row) for fn, w in reward_funcs))
    return np.array(out, dtype=np.float64)


def advantages(r, group, scale_rewards):
    grouped = r.reshape(-1, group)
    centred = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)
    if scale_rewards == "group":
        return centred / (np.repeat(grouped.std(axis=1, ddof=1), group) + 1e-4)
    if scale_rewards == "batch":
        return centred / (r.std(ddof=1) + 1e-4)
    return centred


def completion_logps(model, prompt, completion):
    """float64 log-probs of the completion's tokens after the prompt."""
    return token_logps(model, list(prompt) + list(completion))[len(prompt) - 1:]


def until_eos(completions, eos_id):
    """Each completion cut after its first EOS: what is sampled after it is not part of the answer."""
    return [list(c[: list(c).index(eos_id) + 1]) if eos_id in c else list(c) for c in completions]


def _normalisers(lengths, hp, n):
    """Each sequence's factor in the loss: its per-token terms are summed and multiplied by it."""
    loss_type = hp["loss_type"]
    if loss_type == "grpo":
        return [1 / (n * m) for m in lengths]
    if loss_type == "dr_grpo":
        return [1 / (n * hp["max_completion_length"])] * n
    if loss_type == "bnpo":  # each micro-batch's token mean, weighted by its share of the sequences
        size = hp.get("batch_size", n // hp["num_generations"]) * hp["num_generations"]
        out = []
        for start in range(0, n, size):
            part = lengths[start:start + size]
            out += [len(part) / (n * sum(part))] * len(part)
        return out
    return [1 / sum(lengths)] * n  # dapo: over the completion tokens of the whole step


def step(rows, completions, policy, old_policy, reference, hp, reward_funcs, decode, eos_id):
    """``(loss, metrics, weights)`` of one GRPO optimizer step by the standard definitions.
    ``old_policy`` is None on the first iteration of a generation batch: the ratio is then exactly
    1, no clip binds, and ``weights`` is d loss / d log p of every completion token in closed form,
    ``(prompt, completion, per-token weights)`` per completion (else None).  ``reference`` is None
    when beta is 0.  Completions are taken up to their first EOS."""
    completions = until_eos(completions, eos_id)
    group = hp["num_generations"]
    r = rewards(rows, completions, group, reward_funcs, decode, eos_id)
    adv = advantages(r, group, hp["scale_rewards"])
    eps_low = hp["epsilon"]
    eps_high = hp["epsilon"] if hp.get("epsilon_high") is None else hp["epsilon_high"]
    per_seq, slopes, tokens, low, high, kls, near = [], [], 0, 0, 0, [], False
    for i, completion in enumerate(completions):
        prompt = rows[i // group]["prompt_ids"]
        logp = completion_logps(policy, prompt, completion)
        old = completion_logps(old_policy, prompt, completion) if old_policy is not None else logp
        ratio = np.exp(logp - old)
        clipped = np.clip(ratio, 1 - eps_low, 1 + eps_high)
        per_token = -np.minimum(ratio * adv[i], clipped * adv[i])
        slope = np.full(len(completion), -adv[i])  # d per_token / d logp at ratio 1
        if hp["beta"] > 0:
            delta = completion_logps(reference, prompt, completion) - logp
            kl = np.exp(delta) - delta - 1
            per_token = per_token + hp["beta"] * kl
            slope = slope + hp["beta"] * (1 - np.exp(delta))  # d/dlogp of beta * (exp(ref - logp) - ... - 1)
            kls.append(kl)
        per_seq.append(per_token)
        slopes.append((prompt, completion, slope))
        tokens += len(completion)
        near |= bool(np.any(np.abs(ratio - (1 - eps_low)) < 1e-5) or np.any(np.abs(ratio - (1 + eps_high)) < 1e-5))
        low += int(np.sum((ratio < 1 - eps_low) & (adv[i] < 0)))
        high += int(np.sum((ratio > 1 + eps_high) & (adv[i] > 0)))
    n = len(completions)
    lengths = [len(c) for c in completions]
    factors = _normalisers(lengths, hp, n)
    loss = sum(t.sum() * f for t, f in zip(per_seq, factors))
    weights = [(p, c, w * f) for (p, c, w), f in zip(slopes, factors)] if old_policy is None else None
    metrics = {
        "reward": float(r.mean()),
        "reward_std": float(r.reshape(-1, group).std(axis=1, ddof=1).mean()),
        "completions/mean_length": float(np.mean(lengths)),
        "completions/min_length": float(min(lengths)),
        "completions/max_length": float(max(lengths)),
        "clip_ratio/low_mean": low / tokens,
        "clip_ratio/high_mean": high / tokens,
        "clip_ratio/region_mean": (low + high) / tokens,
    }
    if near:  # a ratio on a clip bound: which side it falls is not stable between two correct computations
        metrics = {k: v for k, v in metrics.items() if not k.startswith("clip_ratio/")}
    if kls:
        metrics["kl"] = float(sum(k.sum() for k in kls) / tokens)
    return float(loss), metrics, weights
