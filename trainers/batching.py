"""Tokenized rows to padded arrays, and completion-only log-probs.

A row carries token ids (``prompt_ids`` and one list per completion field, as
the fixture loader produces them).  A sequence is ``prompt + completion``,
right-padded; the model sees ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``;
``mask`` marks the predicted tokens that belong to the completion, so prompt
and padding never count.
"""

import mlx.core as mx
import numpy as np


def pad_sequences(prompts, completions, pad_id: int, pad_to_multiple: int = 16):
    """Right-pad ``prompt + completion`` sequences; return inputs, targets, mask, lengths."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    longest = max(len(s) for s in seqs)
    width = -(-longest // pad_to_multiple) * pad_to_multiple + 1  # +1: inputs/targets shift
    tokens = np.full((len(seqs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), width - 1), dtype=np.float32)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        tokens[i, : len(s)] = s
        # target position t predicts token t+1: completion tokens are t+1 >= len(p)
        mask[i, len(p) - 1 : len(s) - 1] = 1.0
    return {
        "inputs": mx.array(tokens[:, :-1]),
        "targets": mx.array(tokens[:, 1:]),
        "mask": mx.array(mask),
        "lengths": mx.array(mask.sum(axis=1)),
        "num_tokens": sum(len(s) for s in seqs),
    }


def token_logps(model, inputs, targets):
    """Per-token log-probs of ``targets`` under ``model`` (shape: batch x time)."""
    logits = model(inputs).astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - mx.logsumexp(logits, axis=-1)


def sequence_logps(model, batch):
    """Sum of completion-token log-probs per sequence."""
    return (token_logps(model, batch["inputs"], batch["targets"]) * batch["mask"]).sum(axis=-1)


def pair_batch(rows, pad_id: int):
    """Chosen and rejected sequences of preference rows, concatenated in one batch
    (chosen first), so one forward pass scores both."""
    prompts = [r["prompt_ids"] for r in rows]
    completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    return pad_sequences(prompts + prompts, completions, pad_id)


def split_pairs(values):
    n = values.shape[0] // 2
    return values[:n], values[n:]


def unpaired_batch(rows, pad_id: int):
    """KTO rows: ``prompt_i + completion_i`` sequences with their labels."""
    batch = pad_sequences([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], pad_id)
    batch["labels"] = mx.array([bool(r["label"]) for r in rows])
    return batch


def mismatched_batch(rows, pad_id: int):
    """KTO's mismatched pairs ``prompt_i + completion_{i-1}`` (wrapping around),
    from which the reference point is estimated."""
    completions = [r["completion_ids"] for r in rows]
    return pad_sequences([r["prompt_ids"] for r in rows], completions[-1:] + completions[:-1], pad_id)
