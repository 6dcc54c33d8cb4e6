"""Reference KTO trainer (Ethayarajh et al. 2024; TRL semantics) over unpaired examples.

The reference point ``z`` is estimated, without gradient, on mismatched pairs
(``prompt_i`` with ``completion_{i-1}``) of the whole optimizer step, so that
gradient accumulation sees the same ``z`` as one large batch would.
"""

from dataclasses import dataclass, field

import mlx.core as mx

from .batching import mismatched_batch, pad_sequences, sequence_logps, unpaired_batch
from .core import TrainConfig, TrainerSpec, step_share
from .losses import kto_loss, kto_reference_point


@dataclass
class KTOConfig(TrainConfig):
    beta: float = field(default=0.1, metadata={"help": "Strength of the implicit KL to the reference."})
    desirable_weight: float = field(default=1.0, metadata={"help": "Weight of desirable examples' losses."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "Weight of undesirable examples' losses."})


def collate(rows, config, pad_id):
    if len(rows) * config.grad_accumulation_steps < 2:
        raise ValueError("kto: the reference point needs at least 2 examples per step")
    return unpaired_batch(rows, pad_id, buckets=config.compile)


def step_stats(policy, reference, micro_rows, batches, config, pad_id, dp=None):
    rows = [r for rows in micro_rows for r in rows]  # the whole step's, every rank's
    if dp is not None and dp.active:
        # This rank scores its share of the step's mismatched pairs; z is their global mean.
        pairs = dp.shard(list(zip(rows, rows[-1:] + rows[:-1])))
        prompts, completions = [r["prompt_ids"] for r, _ in pairs], [c["completion_ids"] for _, c in pairs]
        mismatched = pad_sequences(prompts, completions, pad_id)
    else:
        mismatched = mismatched_batch(rows, pad_id)
    with reference.active() as ref_model:
        ref_logps = sequence_logps(ref_model, mismatched)
    was_training = policy.training
    policy.eval()
    policy_logps = sequence_logps(policy, mismatched)
    policy.train(was_training)
    desirable = sum(bool(r["label"]) for r in rows)
    counts = {"num_desirable": desirable, "num_undesirable": len(rows) - desirable}
    if dp is not None and dp.active:
        kl = dp.all_sum((policy_logps - ref_logps).sum()) / len(rows)
        return {"kl": mx.stop_gradient(mx.maximum(kl, 0.0)), **counts}
    return {"kl": kto_reference_point(policy_logps, ref_logps), **counts}


def reference_outputs(ref_model, batch, config):
    return {"logps": mx.stop_gradient(sequence_logps(ref_model, batch))}


def objective(model, batch, ref, stats, config):
    labels = batch["labels"]
    loss, metrics = kto_loss(
        sequence_logps(model, batch),
        ref["logps"],
        labels,
        stats["kl"],
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
        num_examples=stats["num_examples"],
    )
    # Per-kind means: this micro-batch's share of the step's (exact under accumulation).
    n = labels.shape[0]
    for kind, count, total in (("chosen", labels.sum(), stats["num_desirable"]),
                               ("rejected", (~labels).sum(), stats["num_undesirable"])):
        for key in (f"rewards/{kind}", f"logps/{kind}"):
            metrics[key] = step_share(metrics[key], count, total, n, stats["num_examples"])
    metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics


SPEC = TrainerSpec(
    name="kto",
    config_class=KTOConfig,
    collate=collate,
    objective=objective,
    reference_outputs=reference_outputs,
    step_stats=step_stats,
    needs_reference=True,
)
