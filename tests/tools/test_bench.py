"""`harness bench`: the table, the JSON, and the speed gate's statistics."""

import json

import numpy as np
from click.testing import CliRunner

from mlxth.harness.tools.bench import bootstrap_slowdown, compare
from mlxth.harness.cli import main


def _fake_run(ratios, case_id="reference/dpo/tiny-llama/fp32"):
    return {"cases": [{"id": case_id, "ratios": list(ratios)}]}


def test_gate_flags_a_real_slowdown_and_not_noise():
    rng = np.random.default_rng(0)
    base = 1.1 * rng.lognormal(0, 0.08, 40)
    same = 1.1 * rng.lognormal(0, 0.08, 40)
    slower = 1.1 * 1.2 * rng.lognormal(0, 0.08, 40)
    assert compare(_fake_run(base), _fake_run(same))[0]["status"] == "ok"
    verdict = compare(_fake_run(base), _fake_run(slower))[0]
    assert verdict["status"] == "slower"
    assert 10 < verdict["slowdown_pct"] < 30 and verdict["ci_pct"][0] > 0


def test_gate_ignores_a_small_certain_slowdown_below_threshold():
    base = np.full(40, 1.0) + np.linspace(0, 0.01, 40)
    current = base * 1.03  # certainly slower, but by 3%: the interval stays below 10%
    est, low, high = bootstrap_slowdown(base, current)
    assert low > 0 and high < 0.10
    assert compare(_fake_run(base), _fake_run(current))[0]["status"] == "ok"


def test_bench_prints_the_table_writes_json_and_passes_against_itself(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--trainer", "dpo", "--trainer", "grpo", "--fixture", "tiny-llama", "--steps", "6",
            "--warmup", "1", "--json", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "lower bound ms" in result.output and "reference/grpo/tiny-llama/fp32" in result.output
    data = json.loads(out.read_text())
    assert data["environment"]["backend"] == "cpu"
    dpo = data["cases"][0]
    assert len(dpo["step_ms"]) == 6 and len(dpo["ratios"]) == 6
    assert dpo["median_ms"] > 0 and dpo["lower_bound_ms"] > 0 and dpo["peak_memory_mb"] > 0
    assert dpo["tokens_per_s"] > 0 and dpo["warmup_s"] > 0
    # The gate against the same numbers cannot find a slowdown.
    result = CliRunner().invoke(main, ["bench", "--trainer", "dpo", "--fixture", "tiny-llama", "--steps", "6",
                                       "--warmup", "1", "--compare", str(out)])
    assert "gate" in result.output and "reference/dpo/tiny-llama/fp32" in result.output.split("gate")[-1]


def test_compare_rejects_a_file_that_is_not_a_bench_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nothing": 1}')
    result = CliRunner().invoke(main, ["bench", "--compare", str(bad)])
    assert result.exit_code == 2 and "not a harness bench JSON" in result.output
