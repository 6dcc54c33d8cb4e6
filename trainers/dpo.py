"""Reference DPO trainer (Rafailov et al. 2023; TRL semantics)."""

from dataclasses import dataclass, field

import mlx.core as mx

from .batching import pair_batch, sequence_logps, split_pairs
from .core import TrainConfig, TrainerSpec
from .losses import DPO_LOSS_TYPES, dpo_loss


@dataclass
class DPOConfig(TrainConfig):
    beta: float = field(default=0.1, metadata={"help": "Strength of the implicit KL to the reference."})
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid, hinge or ipo.", "choices": DPO_LOSS_TYPES})
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO label noise (sigmoid only)."})


def _logps(model, batch, config):
    logps = sequence_logps(model, batch)
    if config.loss_type == "ipo":  # IPO works on length-averaged log-probs
        logps = logps / batch["lengths"]
    return split_pairs(logps)


def collate(rows, config, pad_id):
    return pair_batch(rows, pad_id, buckets=config.compile)


def reference_outputs(ref_model, batch, config):
    chosen, rejected = _logps(ref_model, batch, config)
    return {"chosen": mx.stop_gradient(chosen), "rejected": mx.stop_gradient(rejected)}


def objective(model, batch, ref, stats, config):
    chosen, rejected = _logps(model, batch, config)
    return dpo_loss(
        chosen,
        rejected,
        ref["chosen"],
        ref["rejected"],
        beta=config.beta,
        loss_type=config.loss_type,
        label_smoothing=config.label_smoothing,
        num_examples=stats["num_examples"],
    )


SPEC = TrainerSpec(
    name="dpo",
    config_class=DPOConfig,
    collate=collate,
    objective=objective,
    reference_outputs=reference_outputs,
    needs_reference=True,
)
