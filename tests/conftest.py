import pytest

from mlxth.fixtures import FIXTURES
from mlxth.fixtures.datasets import load_dataset

PAIRWISE = ("dpo", "orpo", "kto", "simpo")


def rows_for(trainer: str, tokenizer):
    kind = {"kto": "kto", "grpo": "grpo"}.get(trainer, "preference")
    return load_dataset(kind, tokenizer=tokenizer, max_length=64)


@pytest.fixture(params=FIXTURES)
def fixture_name(request):
    return request.param
