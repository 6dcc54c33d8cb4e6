"""Tokenized rows to padded arrays, and completion-only log-probs.

A row carries token ids (``prompt_ids`` and one list per completion field, as
the fixture loader produces them).  A sequence is ``prompt + completion``,
right-padded; the model sees ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``;
``mask`` marks the predicted tokens that belong to the completion, so prompt
and padding never count.  A compiled step pads to a few fixed widths
(``BUCKETS``) so that it compiles a bounded number of times.
"""

import mlx.core as mx
import numpy as np


def bucket_width(longest: int, multiple: int = 16) -> int:
    """The input width a compiled step pads ``longest`` tokens to: 16 x 2^k or 24 x 2^k
    (at most 1.5x the tokens, and two shapes per doubling of the sequence length)."""
    width = multiple
    while width < longest:
        width = width * 3 // 2 if width & (width - 1) == 0 else width * 4 // 3
    return width


def pad_sequences(prompts, completions, pad_id: int, pad_to_multiple: int = 16, buckets: bool = False):
    """Right-pad ``prompt + completion`` sequences; return inputs, targets, mask, lengths.

    The width is the next multiple of ``pad_to_multiple``, or with ``buckets`` the
    next ``bucket_width``."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
    longest = max(len(s) for s in seqs)
    if buckets:
        width = bucket_width(longest - 1, pad_to_multiple) + 1
    else:
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
    """Per-token log-probs of ``targets`` under ``model`` (shape: batch x time), in float32.

    On a GPU, MLX's fused cross entropy (float32 accumulation, one pass over the
    vocabulary forward and backward); elsewhere the same value from float32
    logits with ``logsumexp``, unfused, as the CPU goldens were taken.
    """
    logits = model(inputs)
    if mx.default_device() == mx.gpu:
        return -mx.fast.cross_entropy(logits, targets)
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - mx.logsumexp(logits, axis=-1)


def sequence_logps(model, batch):
    """Sum of completion-token log-probs per sequence."""
    return (token_logps(model, batch["inputs"], batch["targets"]) * batch["mask"]).sum(axis=-1)


def pair_batch(rows, pad_id: int, buckets: bool = False):
    """Chosen and rejected sequences of preference rows, concatenated in one batch
    (chosen first), so one forward pass scores both."""
    prompts = [r["prompt_ids"] for r in rows]
    completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    return pad_sequences(prompts + prompts, completions, pad_id, buckets=buckets)


def split_pairs(values):
    n = values.shape[0] // 2
    return values[:n], values[n:]


def unpaired_batch(rows, pad_id: int, buckets: bool = False):
    """KTO rows: ``prompt_i + completion_i`` sequences with their labels."""
    batch = pad_sequences([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], pad_id,
                          buckets=buckets)
    batch["labels"] = mx.array([bool(r["label"]) for r in rows])
    return batch


def mismatched_batch(rows, pad_id: int):
    """KTO's mismatched pairs ``prompt_i + completion_{i-1}`` (wrapping around),
    from which the reference point is estimated."""
    completions = [r["completion_ids"] for r in rows]
    return pad_sequences([r["prompt_ids"] for r in rows], completions[-1:] + completions[:-1], pad_id)
