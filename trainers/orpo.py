"""Reference ORPO trainer (Hong et al. 2024): no reference model."""

from dataclasses import dataclass, field


from .batching import pair_batch, sequence_logps, split_pairs
from .core import TrainConfig, TrainerSpec, step_share
from .losses import orpo_loss


@dataclass
class ORPOConfig(TrainConfig):
    beta: float = field(default=0.1, metadata={"help": "Weight of the odds-ratio term (the paper's lambda)."})


def collate(rows, config, pad_id):
    return pair_batch(rows, pad_id, buckets=config.compile)


def step_stats(policy, reference, micro_rows, batches, config, pad_id, dp=None):
    # The NLL is token-weighted over the whole step, so micro-batches (and ranks) need the total.
    tokens = sum(split_pairs(b["lengths"])[0].sum() for b in batches)
    return {"num_chosen_tokens": tokens if dp is None else dp.all_sum(tokens)}


def objective(model, batch, ref, stats, config):
    chosen, rejected = split_pairs(sequence_logps(model, batch))
    chosen_len, rejected_len = split_pairs(batch["lengths"])
    loss, metrics = orpo_loss(
        chosen,
        rejected,
        chosen_len,
        rejected_len,
        config.beta,
        num_examples=stats["num_examples"],
        num_chosen_tokens=stats["num_chosen_tokens"],
    )
    # The token-weighted NLL metric: this micro-batch's share of the step's.
    metrics["nll_loss"] = step_share(metrics["nll_loss"], chosen_len.sum(), stats["num_chosen_tokens"],
                                     chosen.shape[0], stats["num_examples"])
    return loss, metrics


SPEC = TrainerSpec(name="orpo", config_class=ORPOConfig, collate=collate, objective=objective, step_stats=step_stats)
