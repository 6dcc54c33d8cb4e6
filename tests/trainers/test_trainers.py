"""The reference DPO, ORPO, KTO and SimPO trainers on the real fixtures."""

import math

import numpy as np
import pytest
from support.helpers import CPU_ONLY_DETERMINISM, PAIRWISE, on_gpu, rows_for
from mlx.utils import tree_flatten

from mlxth.fixtures import load_fixture
from mlxth.harness.run.modes import ModeProbe
from mlxth.trainers import SPECS, NonFiniteError, make_trainer, train
from mlxth.trainers.core import step_batches


def _run(trainer, fixture, steps=3, model_config=None, **overrides):
    model, tok = load_fixture(fixture, model_config)
    spec = SPECS[trainer]
    config = spec.config_class(**{"learning_rate": 1e-3, **overrides})
    records = train(spec, model, rows_for(trainer, tok), config, tok, steps=steps)
    return model, records


def _params(module, trainable_only=False):
    tree = module.trainable_parameters() if trainable_only else module.parameters()
    return {k: np.array(v) for k, v in tree_flatten(tree)}


def test_first_dpo_loss_is_ln2_on_every_fixture(fixture_name):
    _, records = _run("dpo", fixture_name, steps=1)
    assert abs(records[0]["loss"] - math.log(2)) < 1e-6
    assert abs(records[0]["rewards/margins"]) < 1e-4


@pytest.mark.parametrize("trainer", PAIRWISE)
def test_metrics_are_reported(trainer):
    _, records = _run(trainer, "tiny-llama", steps=1)
    expected = {"step", "loss", "grad_norm", "learning_rate", "num_tokens", "rewards/chosen", "rewards/rejected"}
    expected |= {"kto": {"kl"}, "orpo": {"nll_loss", "log_odds_ratio", "log_odds_chosen"}}.get(trainer, set())
    expected |= {"rewards/margins", "logps/chosen", "logps/rejected"}
    if trainer != "kto":
        expected.add("rewards/accuracies")
    assert expected <= set(records[0])
    assert records[0]["learning_rate"] == pytest.approx(1e-3)
    assert records[0]["num_tokens"] > 0 and records[0]["grad_norm"] > 0


def test_kto_loss_depends_on_the_policy():
    _, records = _run("kto", "tiny-llama", steps=4)
    losses = [r["loss"] for r in records]
    assert len(set(losses)) == len(losses), losses
    assert records[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference: 1 - sigmoid(0)


@pytest.mark.parametrize("trainer", PAIRWISE)
def test_full_finetune_changes_policy_and_not_reference(trainer, fixture_name):
    model, tok = load_fixture(fixture_name)
    before = _params(model)
    spec = SPECS[trainer]
    t = make_trainer(spec, model, spec.config_class(learning_rate=1e-3), tok)
    for micro in step_batches(rows_for(trainer, tok), t.config, 3):
        t.step(micro)
    after = _params(model)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert len(changed) == len(before), set(before) - set(changed)
    if t.reference is not None:
        ref = _params(t.reference.model)
        assert all(np.array_equal(ref[k], before[k]) for k in before)


@pytest.mark.parametrize("trainer", ["dpo", "kto", "simpo"])
def test_lora_trains_adapters_only_and_reference_is_the_base(trainer, fixture_name):
    model, tok = load_fixture(fixture_name)
    base = _params(model)
    spec = SPECS[trainer]
    t = make_trainer(spec, model, spec.config_class(learning_rate=1e-2, lora_rank=4), tok)
    lora_before = _params(model, trainable_only=True)
    assert lora_before and all("lora_" in k for k in lora_before)
    records = [t.step(m) for m in step_batches(rows_for(trainer, tok), t.config, 3)]
    lora_after = _params(model, trainable_only=True)
    assert any("lora_b" in k and not np.array_equal(lora_before[k], lora_after[k]) for k in lora_before)
    after = _params(model)
    for key, value in base.items():  # frozen base weights: keys move under .linear
        stem, leaf = key.rsplit(".", 1)
        moved = key if key in after else f"{stem}.linear.{leaf}"
        assert np.array_equal(after[moved], value), key
    if t.reference is not None:
        assert t.reference.model is None  # no second copy of the weights
    if trainer == "dpo":
        assert abs(records[0]["loss"] - math.log(2)) < 1e-6


@pytest.mark.parametrize("trainer", PAIRWISE)
def test_batch_equals_accumulation(trainer):
    """Batch 4 == batch 2 x 2 accumulation: per-step losses and updated weights.

    Tolerance: 2e-5 relative on losses, 1e-5 absolute on weights (fp32 on the
    CPU; the two differ only in summation order); 1e-3 / 1e-4 on a GPU."""
    rel, atol = (1e-3, 1e-4) if on_gpu() else (2e-5, 1e-5)
    full_model, full = _run(trainer, "tiny-llama", steps=3, batch_size=4)
    acc_model, acc = _run(trainer, "tiny-llama", steps=3, batch_size=2, grad_accumulation_steps=2)
    for a, b in zip(full, acc):
        for key in a:  # every metric too: per-kind and token-weighted means are exact shares
            if key not in ("step", "learning_rate", "loss", "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=max(rel, 1e-5), abs=1e-5), key
        assert a["loss"] == pytest.approx(b["loss"], rel=rel, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=max(rel, 1e-4))
        assert a["num_tokens"] == b["num_tokens"]
    pa, pb = _params(full_model), _params(acc_model)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], atol=atol, err_msg=k)


@pytest.mark.skipif(on_gpu(), reason=CPU_ONLY_DETERMINISM)
def test_same_seed_gives_bitwise_identical_losses(fixture_name):
    for trainer in ("dpo", "kto"):
        _, a = _run(trainer, fixture_name, steps=3)
        _, b = _run(trainer, fixture_name, steps=3)
        assert [r["loss"] for r in a] == [r["loss"] for r in b]
        assert a == b


def test_seed_changes_data_order():
    _, a = _run("simpo", "tiny-llama", steps=2, seed=0)
    _, b = _run("simpo", "tiny-llama", steps=2, seed=1)
    assert a[0]["loss"] != b[0]["loss"]


def test_compiled_equals_eager():
    """mx.compile of the gradient and update steps: same trace within 1e-5 relative."""
    _, eager = _run("dpo", "tiny-llama", steps=3)
    _, compiled = _run("dpo", "tiny-llama", steps=3, compile=True)
    for a, b in zip(eager, compiled):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("trainer", PAIRWISE)
def test_every_differentiated_pass_is_in_training_mode(trainer, fixture_name):
    model, tok = load_fixture(fixture_name)
    spec = SPECS[trainer]
    with ModeProbe(model) as probe:
        train(spec, model, rows_for(trainer, tok), spec.config_class(learning_rate=1e-3), tok, steps=2)
    assert len(probe.differentiated) >= 2
    assert probe.gradient_mode_violations() == []
    assert model.training is False  # the caller's mode is restored


def test_a_trainer_that_skips_model_train_fails_with_the_custom_kernel_error(monkeypatch):
    """The seed regression, planted: without model.train() the linear-attention
    fixture differentiates through its inference-only kernel."""
    from mlxth.trainers import core

    model, tok = load_fixture("tiny-linear-attn")
    monkeypatch.setattr(core.nn.Module, "train", lambda self, mode=True: self, raising=True)
    with pytest.raises(ValueError, match=r"\[Primitive::vjp\] Not implemented for CustomKernel\."):
        train(SPECS["dpo"], model, rows_for("dpo", tok), SPECS["dpo"].config_class(), tok, steps=1)


def test_non_finite_loss_names_trainer_step_and_quantity():
    model, tok = load_fixture("tiny-llama")
    spec = SPECS["dpo"]
    t = make_trainer(spec, model, spec.config_class(learning_rate=1e-3), tok)
    batches = list(step_batches(rows_for("dpo", tok), t.config, 2))
    t.step(batches[0])
    model.model.norm.weight = model.model.norm.weight * float("nan")
    with pytest.raises(NonFiniteError, match=r"dpo: step 2: non-finite loss"):
        t.step(batches[1])


def test_unknown_loss_type_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss_type 'sigmoidal'"):
        _run("dpo", "tiny-llama", steps=1, loss_type="sigmoidal")


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_dpo_loss_types_run(loss_type):
    _, records = _run("dpo", "tiny-llama", steps=2, loss_type=loss_type)
    first = 1.0 if loss_type == "hinge" else (1 / (2 * 0.1)) ** 2  # h = 0 at the first step
    assert records[0]["loss"] == pytest.approx(first, rel=1e-5)


@pytest.mark.parametrize("trainer", ["dpo", "kto"])
def test_precomputed_reference_matches_recomputed(trainer):
    """Scoring the reference once per row gives the same trace (up to summation order)."""
    _, recomputed = _run(trainer, "tiny-llama", steps=3)
    _, precomputed = _run(trainer, "tiny-llama", steps=3, precompute_reference=True)
    for a, b in zip(recomputed, precomputed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
