"""One training step per reference trainer, under pytest-benchmark.

    pytest tests/bench -o addopts= --benchmark-only

Each round builds a fresh trainer (setup, untimed) and times one step; the
step evaluates the loss, parameters and optimizer state before returning.
"""

import pytest
from support.helpers import rows_for

from mlxth.fixtures import load_fixture
from mlxth.fixtures.rewards import DEFAULT_REWARDS
from mlxth.trainers import SPECS, make_trainer
from mlxth.trainers.core import step_batches


@pytest.mark.parametrize("fixture", ["tiny-llama", "tiny-linear-attn"])
@pytest.mark.parametrize("trainer", list(SPECS))
def test_one_step(benchmark, trainer, fixture):
    spec = SPECS[trainer]

    def setup():
        model, tok = load_fixture(fixture)
        config = spec.config_class(learning_rate=1e-4)
        kwargs = {"reward_funcs": DEFAULT_REWARDS} if trainer == "grpo" else {}
        t = make_trainer(spec, model, config, tok, **kwargs)
        micro = next(step_batches(rows_for(trainer, tok), config, 1))
        t.step(micro)  # warm-up
        return (t, micro), {}

    benchmark.pedantic(lambda t, micro: t.step(micro), setup=setup, rounds=10, warmup_rounds=0)
