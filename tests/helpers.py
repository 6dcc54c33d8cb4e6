"""Small helpers shared by the test modules."""

from mlxth.fixtures.datasets import load_dataset

PAIRWISE = ("dpo", "orpo", "kto", "simpo")


def rows_for(trainer: str, tokenizer):
    kind = {"kto": "kto", "grpo": "grpo"}.get(trainer, "preference")
    return load_dataset(kind, tokenizer=tokenizer, max_length=64)
