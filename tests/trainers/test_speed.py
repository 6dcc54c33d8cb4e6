"""What the trainers do for speed keeps the standard semantics: the compiled step, its bucketed
shapes and its guard, the batched rollout, and the fused log-probs a GPU takes."""

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from support.helpers import rows_for

from mlxth.fixtures import load_fixture
from mlxth.fixtures.datasets import load_dataset
from mlxth.trainers import SPECS, NonFiniteError, batching, core, make_trainer, train
from mlxth.trainers.batching import bucket_width, token_logps
from mlxth.trainers.grpo import GRPOConfig, generate_groups
from mlxth.fixtures.rewards import DEFAULT_REWARDS


def test_buckets_bound_the_shapes_a_compiled_step_sees():
    widths = {bucket_width(n) for n in range(1, 4097)}
    assert len(widths) == 17  # 16 .. 4096: two shapes per doubling
    for n in range(16, 4097):
        assert n <= bucket_width(n) <= 1.5 * n


def _rows(tok, totals):
    """Preference rows whose prompt + chosen has exactly ``totals[i]`` tokens."""
    eos = tok.eos_token_id
    return [{"prompt_ids": [65] * 8, "chosen_ids": [66] * (t - 9) + [eos], "rejected_ids": [67] * 4 + [eos]}
            for t in totals]


def _count_traces(monkeypatch, widths=None):
    if widths is not None:  # the fault: pad to multiples of 16, as the eager step does
        monkeypatch.setattr(batching, "bucket_width", widths)
    model, tok = load_fixture("tiny-llama")
    calls = []
    spec = SPECS["dpo"]

    def counted(*args):
        calls.append(args[1]["inputs"].shape)
        return spec.objective(*args)

    config = spec.config_class(learning_rate=1e-3, batch_size=1, shuffle=False, compile=True, max_length=128)
    train(replace(spec, objective=counted), model, _rows(tok, [66, 81, 95]), config, tok, steps=3)
    return calls


def test_steps_of_three_lengths_in_one_bucket_compile_once(monkeypatch):
    assert _count_traces(monkeypatch) == [(2, 96)]
    # Planted: widths that follow the lengths (multiples of 16) compile again per width.
    planted = _count_traces(monkeypatch, widths=lambda n, m=16: -(-n // m) * m)
    assert len(planted) == 2


def _weights(model):
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def _compiled_nan_run(monkeypatch, guard=True):
    if not guard:  # the fault: the fused step applies whatever update it computed
        def unguarded(self, batch, ref, stats):
            (loss, metrics), grads = self._value_and_grad(batch, ref, stats)
            return loss, self._update(grads), metrics

        monkeypatch.setattr(core.Trainer, "_fused_step", unguarded)
    model, tok = load_fixture("tiny-llama")
    spec = SPECS["simpo"]
    config = spec.config_class(learning_rate=1e-3, compile=True)
    trainer = make_trainer(spec, model, config, tok)
    nan = mx.array(float("nan"))
    batches = trainer.schedule(rows_for("simpo", tok), 2)
    trainer.step(batches[0])
    before = _weights(model)
    trainer.spec = replace(spec, objective=lambda *a: (spec.objective(*a)[0] * nan, spec.objective(*a)[1]))
    with pytest.raises(NonFiniteError, match="simpo: step 2: non-finite loss"):
        trainer.step(batches[1])
    return before, _weights(model)


def test_a_non_finite_compiled_step_leaves_the_weights_as_they_were(monkeypatch):
    before, after = _compiled_nan_run(monkeypatch)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_without_the_guard_the_non_finite_update_reaches_the_weights(monkeypatch):
    before, after = _compiled_nan_run(monkeypatch, guard=False)
    assert any(np.isnan(after[k]).any() for k in after)


@pytest.mark.parametrize("trainer", ["kto", "grpo"])
def test_compiled_step_equals_eager(trainer):
    """The fused compiled step (with KTO's step statistics, with GRPO's rollout) trains as the eager one."""
    spec = SPECS[trainer]
    records = []
    for compiled in (False, True):
        model, tok = load_fixture("tiny-llama")
        kwargs = {"reward_funcs": DEFAULT_REWARDS} if trainer == "grpo" else {}
        extra = {"batch_size": 2, "max_completion_length": 8} if trainer == "grpo" else {}
        config = spec.config_class(learning_rate=1e-3, compile=compiled, **extra)
        records.append(train(spec, model, rows_for(trainer, tok), config, tok, steps=3, **kwargs))
    for eager, compiled in zip(*records):
        for key in eager:
            assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-6), key


def test_per_prompt_rollouts_do_not_depend_on_the_batch_they_are_sampled_in(fixture_name):
    model, tok = load_fixture(fixture_name)
    rows = load_dataset("grpo", tokenizer=tok, max_length=64)[:3]
    prompts = [r["prompt_ids"] for r in rows] + [tok.encode("12+30=")]  # one of another length
    config = GRPOConfig(max_completion_length=8)

    def keys():
        return [mx.random.key(i) for i in range(len(prompts))]

    together = generate_groups(model, prompts, config, tok.eos_token_id, keys())
    alone = [generate_groups(model, [p], config, tok.eos_token_id, [k])[0] for p, k in zip(prompts, keys())]
    assert together == alone
    assert all(len(g) == config.num_generations for g in together)


def test_the_gpu_log_prob_path_computes_the_same_log_probs(monkeypatch):
    """On a GPU token_logps takes MLX's fused cross entropy; its value is the unfused log-prob."""
    model, tok = load_fixture("tiny-llama")
    batch = batching.pair_batch(rows_for("dpo", tok)[:4], tok.pad_token_id)
    cpu = token_logps(model, batch["inputs"], batch["targets"])
    monkeypatch.setattr(batching.mx, "default_device", lambda: mx.gpu)
    fused = token_logps(model, batch["inputs"], batch["targets"])
    assert fused.dtype == mx.float32
    np.testing.assert_allclose(np.array(fused), np.array(cpu), rtol=1e-5, atol=1e-5)
