"""Bench-size fixtures: a user's scale, generated at run time, the same every time.

The full-size models are only counted (MLX builds them lazily, so the count
needs no weights); the generation itself is checked on a small model of the
same configuration.
"""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxth.fixtures import model_classes
from mlxth.fixtures.bench import (BENCH_CONFIGS, BENCH_FIXTURES, COMPLETION_TOKENS, PROMPT_TOKENS, bench_rows,
                                  load_bench_fixture, parameter_count)

SMALL = {"vocab_size": 384, "hidden_size": 64, "num_hidden_layers": 4, "intermediate_size": 128}
SMALL_HEADS = {"bench-llama": {"num_attention_heads": 4, "num_key_value_heads": 2},
               "bench-qwen35": {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                                "linear_num_key_heads": 2, "linear_num_value_heads": 2,
                                "linear_key_head_dim": 32, "linear_value_head_dim": 32}}


@pytest.mark.parametrize("name", BENCH_FIXTURES)
def test_a_bench_fixture_has_a_users_size(name):
    config = BENCH_CONFIGS[name]
    model_class, args_class = model_classes(config)
    model = model_class(args_class.from_dict(config))  # lazy: nothing is drawn
    assert 0.35e9 < parameter_count(model) < 0.6e9
    assert config["vocab_size"] >= 100_000


@pytest.mark.parametrize("name", BENCH_FIXTURES)
def test_generation_is_deterministic_and_leaves_the_model_as_mlx_lm_load_does(name):
    overrides = {**SMALL, **SMALL_HEADS[name]}
    a, tok = load_bench_fixture(name, overrides)
    b, _ = load_bench_fixture(name, overrides)
    assert a.training is False
    wa, wb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(np.array(wa[k]), np.array(wb[k])) for k in wa)
    assert model_classes(BENCH_CONFIGS[name])[0] is type(a)
    logits = a(mx.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, SMALL["vocab_size"]) and bool(mx.all(mx.isfinite(logits)))


@pytest.mark.parametrize("kind, fields", [("preference", ("chosen", "rejected")), ("kto", ("completion",)),
                                          ("grpo", ())])
def test_rows_have_a_realistic_length_and_round_trip_through_the_tokenizer(kind, fields):
    _, tok = load_bench_fixture("bench-llama", {**SMALL, **SMALL_HEADS["bench-llama"]})
    rows = bench_rows(kind, tok, count=8)
    assert rows == bench_rows(kind, tok, count=8)  # the same rows every time
    for row in rows:
        assert len(row["prompt_ids"]) == PROMPT_TOKENS and tok.decode(row["prompt_ids"]) == row["prompt"]
        for f in fields:
            ids = row[f"{f}_ids"]
            assert COMPLETION_TOKENS * 3 // 4 <= len(ids) <= COMPLETION_TOKENS and ids[-1] == tok.eos_token_id
            assert tok.decode(ids[:-1]) == row[f]
    if kind == "kto":
        assert {r["label"] for r in rows} == {True, False}


def test_an_unknown_bench_fixture_or_kind_is_named():
    with pytest.raises(ValueError, match="unknown bench fixture 'huge'"):
        load_bench_fixture("huge")
    _, tok = load_bench_fixture("bench-llama", {**SMALL, **SMALL_HEADS["bench-llama"]})
    with pytest.raises(ValueError, match="unknown data set kind 'sft'"):
        bench_rows("sft", tok)
