"""The reference GRPO trainer on the real fixtures."""

import numpy as np
import pytest
from support.helpers import CPU_ONLY_DETERMINISM, on_gpu, rows_for
from mlx.utils import tree_flatten

from mlxth.fixtures import load_fixture
from mlxth.fixtures.rewards import DEFAULT_REWARDS, format_reward
from mlxth.harness.run.modes import ModeProbe
from mlxth.trainers import SPECS, make_trainer

SPEC = SPECS["grpo"]


def _trainer(fixture, rewards=DEFAULT_REWARDS, **overrides):
    model, tok = load_fixture(fixture)
    config = SPEC.config_class(**{"learning_rate": 1e-3, "max_completion_length": 8, **overrides})
    return make_trainer(SPEC, model, config, tok, reward_funcs=rewards), rows_for("grpo", tok)


def _steps(trainer, rows, n):
    return [trainer.step(micro) for micro in trainer.schedule(rows, n)]


def _params(module):
    return {k: np.array(v) for k, v in tree_flatten(module.parameters())}


def test_loss_is_zero_but_gradient_is_not_and_weights_move():
    """beta = 0, one step per batch: the loss value is 0 (ratio 1, advantages
    centred per group), yet the gradient is not, and the parameters change."""
    trainer, rows = _trainer("tiny-llama")
    before = _params(trainer.model)
    record = _steps(trainer, rows, 1)[0]
    assert abs(record["loss"]) < 1e-6
    assert record["grad_norm"] > 1e-3
    after = _params(trainer.model)
    assert sum(not np.array_equal(before[k], after[k]) for k in before) > len(before) // 2


def test_modes_updates_and_reference_on_every_fixture(fixture_name):
    model, tok = load_fixture(fixture_name)
    config = SPEC.config_class(learning_rate=1e-3, max_completion_length=8, beta=0.04, num_iterations=2)
    before = _params(model)
    with ModeProbe(model) as probe:
        trainer = make_trainer(SPEC, model, config, tok, reward_funcs=DEFAULT_REWARDS)
        ref_before = _params(trainer.reference.model)
        records = _steps(trainer, rows_for("grpo", tok), 4)
    assert len(records) == 4 and all(np.isfinite(r["loss"]) for r in records)
    assert probe.generation and not any(c.any_training for c in probe.generation)
    assert len(probe.differentiated) >= 4
    assert probe.gradient_mode_violations() == []
    after = _params(trainer.model)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    ref_after = _params(trainer.reference.model)
    assert all(np.array_equal(ref_before[k], ref_after[k]) for k in ref_before)
    assert records[1]["kl"] > 0  # the second iteration sees a moved policy
    for key in ("reward", "reward_std", "frac_reward_zero_std", "clip_ratio/region_mean",
                "completions/mean_length", "completions/min_length", "completions/max_length",
                "rewards/exact_match_reward/mean", "rewards/format_reward/mean", "grad_norm"):
        assert key in records[0], key


@pytest.mark.skipif(on_gpu(), reason=CPU_ONLY_DETERMINISM)
def test_same_seed_same_completions_and_bitwise_losses():
    runs = []
    for _ in range(2):
        trainer, rows = _trainer("tiny-linear-attn", beta=0.04)
        records = _steps(trainer, rows, 3)
        runs.append((records, trainer.last_completions))
    assert runs[0][1] == runs[1][1]
    assert [r["loss"] for r in runs[0][0]] == [r["loss"] for r in runs[1][0]]
    assert runs[0][0] == runs[1][0]


def test_generation_stops_at_eos_or_max_length():
    trainer, rows = _trainer("tiny-llama", max_completion_length=5)
    _steps(trainer, rows, 1)
    eos = trainer.tokenizer.eos_token_id
    for completion in trainer.last_completions:
        assert 1 <= len(completion) <= 5
        assert eos not in completion[:-1]


@pytest.mark.parametrize("loss_type", ["bnpo", "dr_grpo", "dapo"])
def test_loss_types_run(loss_type):
    trainer, rows = _trainer("tiny-llama", loss_type=loss_type, num_iterations=2)
    records = _steps(trainer, rows, 2)
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)


def test_mean_reward_rises_on_a_learnable_reward():
    """The format reward (fraction of digits) is learnable from scratch."""
    trainer, rows = _trainer("tiny-llama", rewards=[(format_reward, 1.0)], learning_rate=3e-3, num_generations=8)
    rewards = [r["reward"] for r in _steps(trainer, rows, 12)]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.3, rewards


def test_rewards_are_required():
    model, tok = load_fixture("tiny-llama")
    with pytest.raises(ValueError, match="reward function"):
        make_trainer(SPEC, model, SPEC.config_class(), tok)
