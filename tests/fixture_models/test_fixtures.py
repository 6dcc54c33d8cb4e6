"""The fixture models and tokenizer: loading, modes, and the linear-attention contract."""

import json
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxth.fixtures import fixture_path, load_fixture
from mlxth.fixtures.linear_attn import (
    CUSTOM_KERNEL_VJP_ERROR,
    fused_backend,
    recurrence_fused,
    recurrence_ops,
)
from mlxth.fixtures.tokenizer import EOS_ID, PAD_ID


@pytest.mark.parametrize("text", ["", "2+3=5", "Hello, wörld!\n\ttabs", "emoji 🙂 and 中文", "<|eos|> literal"])
def test_tokenizer_round_trip(text):
    _, tok = load_fixture("tiny-llama")
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < 256 for i in ids[: len(text.encode())]) or "<|eos|>" in text


def test_tokenizer_is_byte_level_with_special_tokens():
    _, tok = load_fixture("tiny-llama")
    assert tok.encode("aé") == list("aé".encode())
    assert tok.pad_token_id == PAD_ID and tok.eos_token_id == EOS_ID
    assert tok.decode([ord("h"), ord("i"), EOS_ID], skip_special_tokens=True) == "hi"


def test_tokenizer_loads_with_transformers_from_folder():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fixture_path("tiny-llama")))
    assert tok.decode(tok.encode("1+1=2")) == "1+1=2"
    assert tok.eos_token == "<|eos|>" and tok.pad_token == "<|pad|>"


def test_each_fixture_loads_in_inference_mode(fixture_name):
    model, _ = load_fixture(fixture_name)
    assert model.training is False
    assert not any(m.training for _, m in model.named_modules())
    logits = model(mx.array([[1, 2, 3, 4]]))
    assert logits.shape == (1, 4, 260)
    assert bool(mx.all(mx.isfinite(logits)))


def test_fixture_weights_are_small_committed_files(fixture_name):
    path = fixture_path(fixture_name)
    assert (path / "model.safetensors").stat().st_size < 600_000
    assert json.loads((path / "config.json").read_text())["vocab_size"] == 260


def test_regenerating_weights_reproduces_committed_files(tmp_path):
    """The generator is deterministic and independent of MLX's RNG."""
    from mlxth.fixtures.generate import CONFIGS, generate

    for name in CONFIGS:
        generate(name, tmp_path)
        fresh = mx.load(str(tmp_path / name / "model.safetensors"))
        committed = mx.load(str(fixture_path(name) / "model.safetensors"))
        assert fresh.keys() == committed.keys()
        for key in fresh:
            assert mx.array_equal(fresh[key], committed[key]), (name, key)


def test_the_warm_fixture_is_confident_and_ends_answers_at_eos():
    """tiny-warm exists to reach the terms a near-uniform model hides: its completions are likely,
    and sampled GRPO answers end at EOS at different lengths with rewards that differ in a group."""
    from mlxth.fixtures.datasets import load_dataset
    from mlxth.fixtures.rewards import exact_match_reward

    def mean_token_prob(name):
        model, tok = load_fixture(name)
        probs = []
        for row in load_dataset("preference", tokenizer=tok)[:8]:
            seq = row["prompt_ids"] + row["chosen_ids"]
            logits = model(mx.array([seq[:-1]])).astype(mx.float32)[0]
            logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            start = len(row["prompt_ids"]) - 1
            probs += [float(mx.exp(logp[start + i, t])) for i, t in enumerate(row["chosen_ids"])]
        return sum(probs) / len(probs)

    assert mean_token_prob("tiny-llama") < 0.01
    assert mean_token_prob("tiny-warm") > 0.5
    model, tok = load_fixture("tiny-warm")
    rows = load_dataset("grpo", tokenizer=tok)[:6]
    mx.random.seed(0)
    lengths, mixed = set(), 0
    for row in rows:
        tokens = mx.array([row["prompt_ids"]] * 4)
        outs = [[] for _ in range(4)]
        for _ in range(8):
            nxt = mx.random.categorical(model(tokens)[:, -1, :].astype(mx.float32))
            tokens = mx.concatenate([tokens, nxt[:, None]], axis=1)
            for out, t in zip(outs, nxt.tolist()):
                if not out or out[-1] != tok.eos_token_id:
                    out.append(t)
        ended = [o for o in outs if o[-1] == tok.eos_token_id]
        lengths.update(len(o) for o in ended)
        rewards = {exact_match_reward(row["prompt"], tok.decode(o[:-1]), row) for o in ended}
        mixed += len(rewards) > 1
    assert len(lengths) > 1 and mixed > 0


def test_unknown_fixture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown fixture 'tiny-gpt'.*tiny-llama"):
        fixture_path("tiny-gpt")


def _random_recurrence_inputs(B=2, T=12, H=2, D=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (mx.array(rng.normal(size=(B, T, H, D)).astype(np.float32)) for _ in range(3))
    g = mx.array(rng.uniform(0.5, 1.0, size=(B, T, H)).astype(np.float32))
    state = mx.array(rng.normal(size=(B, H, D, D)).astype(np.float32))
    return q, k, v, g, state


def test_linear_attention_paths_agree_on_the_recurrence():
    args = _random_recurrence_inputs()
    out_ops, state_ops = recurrence_ops(*args)
    out_fused, state_fused = recurrence_fused(*args)
    np.testing.assert_allclose(np.array(out_fused), np.array(out_ops), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(state_fused), np.array(state_ops), rtol=1e-5, atol=1e-5)


def test_linear_attention_train_and_inference_forward_agree():
    """1e-5 in fp32 (CPU).  On CUDA the real kernel (sequential, fused multiply-adds)
    and the parallel ops path differ by up to 1.4e-5 (H100, TF32 off): 3e-5 there."""
    from support.helpers import on_gpu

    model, _ = load_fixture("tiny-linear-attn")
    tokens = mx.array(np.random.default_rng(1).integers(0, 256, size=(4, 64)))
    inference = model(tokens)
    model.train()
    training = model(tokens)
    tol = 3e-5 if on_gpu() else 1e-5
    np.testing.assert_allclose(np.array(inference), np.array(training), rtol=tol, atol=tol)


def test_linear_attention_cached_generation_matches_full_forward():
    model, _ = load_fixture("tiny-linear-attn")
    tokens = mx.array([[5, 9, 13, 2, 7, 1]])
    full = model(tokens)
    cache = model.make_cache()
    first = model(tokens[:, :4], cache=cache)
    step = model(tokens[:, 4:5], cache=cache)
    np.testing.assert_allclose(np.array(first), np.array(full[:, :4]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(step[:, 0]), np.array(full[:, 4]), rtol=1e-5, atol=1e-5)


def _loss(model, tokens):
    return nn.losses.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()


def test_inference_path_gradient_raises_the_custom_kernel_error():
    model, _ = load_fixture("tiny-linear-attn")
    assert model.training is False
    tokens = mx.array([[1, 2, 3, 4, 5, 6]])
    with pytest.raises(ValueError) as err:
        _, grads = nn.value_and_grad(model, _loss)(model, tokens)
        mx.eval(grads)
    assert str(err.value) == CUSTOM_KERNEL_VJP_ERROR
    assert fused_backend() in ("cpu-stand-in", "metal", "cuda")


def test_training_path_gradient_is_finite():
    model, _ = load_fixture("tiny-linear-attn")
    model.train()
    tokens = mx.array([[1, 2, 3, 4, 5, 6]])
    loss, grads = nn.value_and_grad(model, _loss)(model, tokens)
    from mlx.utils import tree_flatten

    flat = tree_flatten(grads)
    assert flat and all(bool(mx.all(mx.isfinite(g))) for _, g in flat)
    assert any(float(mx.abs(g).max()) > 0 for _, g in flat)


def test_kernel_toggle_forces_the_ops_path_in_inference_mode():
    model, _ = load_fixture("tiny-linear-attn", model_config={"use_fused_kernel": False})
    assert model.training is False
    tokens = mx.array([[1, 2, 3, 4, 5, 6]])
    _, grads = nn.value_and_grad(model, _loss)(model, tokens)
    mx.eval(grads)


def test_project_and_pypi_fixtures_import_side_by_side(tmp_path):
    """Installing the project must not shadow the PyPI `fixtures` distribution."""
    code = (
        "import fixtures, mlxth.fixtures, mlxth.harness, mlxth.trainers;"
        "assert hasattr(fixtures, 'Fixture') and hasattr(fixtures, 'MonkeyPatch');"
        "assert mlxth.fixtures.FIXTURES[0] == 'tiny-llama';"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
