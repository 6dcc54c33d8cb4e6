"""Small helpers shared by the test modules."""

from mlxth.fixtures.datasets import load_dataset

PAIRWISE = ("dpo", "orpo", "kto", "simpo")


def rows_for(trainer: str, tokenizer):
    kind = {"kto": "kto", "grpo": "grpo"}.get(trainer, "preference")
    return load_dataset(kind, tokenizer=tokenizer, max_length=64)


def on_gpu() -> bool:
    """Whether MLX's default device is a GPU (Metal or CUDA); CI is CPU-only."""
    import mlx.core as mx

    return mx.default_device() == mx.gpu


# MLX promises bitwise-identical reruns on its CPU backend only.
CPU_ONLY_DETERMINISM = "GPU reductions are not promised to be bitwise reproducible"
