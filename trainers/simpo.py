"""Reference SimPO trainer (Meng et al. 2024): no reference model, length-averaged log-probs."""

from dataclasses import dataclass, field

from .batching import pair_batch, sequence_logps, split_pairs
from .core import TrainConfig, TrainerSpec
from .losses import simpo_loss


@dataclass
class SimPOConfig(TrainConfig):
    beta: float = field(default=2.0, metadata={"help": "Reward scale (paper default 2.0)."})
    gamma: float = field(default=1.0, metadata={"help": "Target reward margin (paper default 1.0)."})


def collate(rows, config, pad_id):
    return pair_batch(rows, pad_id, buckets=config.compile)


def objective(model, batch, ref, stats, config):
    chosen, rejected = split_pairs(sequence_logps(model, batch))
    chosen_len, rejected_len = split_pairs(batch["lengths"])
    return simpo_loss(
        chosen, rejected, chosen_len, rejected_len, config.beta, config.gamma, num_examples=stats["num_examples"]
    )


SPEC = TrainerSpec(name="simpo", config_class=SimPOConfig, collate=collate, objective=objective)
