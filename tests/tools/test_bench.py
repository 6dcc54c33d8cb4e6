"""`harness bench`: the table, the JSON, the gates' statistics, and comparisons that compare nothing."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mlxth.fixtures import FIXTURES
from mlxth.harness.cli import main
from mlxth.harness.cli.bench import selected_cases
from mlxth.harness.tools.gate import GateError, bootstrap_slowdown, check_baseline, compare, verdict

FAST = ["--min-time", "0", "--min-rounds", "4", "--max-rounds", "4", "--warmup", "1"]


def _fake_run(ratios, case_id="reference/dpo/tiny-llama/fp32"):
    return {"cases": [{"id": case_id, "ratios": list(ratios)}]}


def test_gate_flags_a_real_slowdown_and_not_noise():
    rng = np.random.default_rng(0)
    base = 1.1 * rng.lognormal(0, 0.08, 40)
    same = 1.1 * rng.lognormal(0, 0.08, 40)
    slower = 1.1 * 1.2 * rng.lognormal(0, 0.08, 40)
    assert compare(_fake_run(base), _fake_run(same))[0]["status"] == "ok"
    v = compare(_fake_run(base), _fake_run(slower))[0]
    assert v["status"] == "slower"
    assert 10 < v["slowdown_pct"] < 30 and v["ci_pct"][0] > 0


def test_gate_ignores_a_small_certain_slowdown_below_threshold():
    base = np.full(40, 1.0) + np.linspace(0, 0.01, 40)
    current = base * 1.03  # certainly slower, but by 3%: the interval stays below 10%
    est, low, high = bootstrap_slowdown(base, current)
    assert low > 0 and high < 0.10
    assert compare(_fake_run(base), _fake_run(current))[0]["status"] == "ok"


def test_paired_rounds_cancel_noise_both_sides_share():
    """A/B rounds: machine noise common to a round's two steps must not widen the interval."""
    rng = np.random.default_rng(1)
    load = rng.lognormal(0, 0.4, 60)  # bursts that hit both sides of a round
    base = 100 * load * rng.lognormal(0, 0.02, 60)
    cand = 112 * load * rng.lognormal(0, 0.02, 60)
    paired = verdict("c", base, cand, 10.0, paired=True)
    unpaired = verdict("c", base, cand, 10.0, paired=False)
    assert paired["status"] == "slower"
    width = lambda v: v["ci_pct"][1] - v["ci_pct"][0]  # noqa: E731
    assert width(paired) < width(unpaired) / 3


def test_bench_prints_the_table_writes_json_and_passes_against_itself(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--trainer", "dpo", "--trainer", "grpo", "--fixture", "tiny-llama", *FAST, "--json", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "lower bound ms" in result.output and "reference/grpo/tiny-llama/fp32" in result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "harness-bench" and data["environment"]["backend"] == "cpu"
    assert data["rounds"]["timer"] == "cpu"  # the CPU backend judges by CPU time
    dpo, grpo = data["cases"]
    assert len(dpo["step_ms"]) == 4 and len(dpo["wall_ms"]) == 4 and len(dpo["ratios"]) == 1
    assert dpo["median_ms"] > 0 and dpo["lower_bound_ms"] > 0 and dpo["peak_memory_mb"] > 0
    assert dpo["tokens_per_s"] > 0 and dpo["warmup_s"] > 0
    assert grpo["lower_bound_ms"] > 0
    # The gate against the same file compares every case.
    result = CliRunner().invoke(main, ["bench", "--trainer", "dpo", "--fixture", "tiny-llama", *FAST,
                                       "--compare", str(out)])
    assert "1 of 1 case(s) compared" in result.output, result.output
    assert result.exit_code in (0, 1)


@pytest.mark.parametrize("content, reason", [
    ('{"nothing": 1}', "no 'cases' list"),
    ('{"cases": []}', "no case with timings"),
    ('{"run_id": "x", "cases": [{"id": "reference/dpo/tiny-llama/fp32", "status": "pass", "steps": []}]}',
     "has no 'ratios'"),
    ('{"cases": [{"id": "reference/dpo/tiny-llama/fp32", "ratios": []}]}', "non-empty list"),
    ('{"cases": [{"id": "reference/dpo/tiny-llama/fp32", "ratios": [1.0, null]}]}', "non-empty list"),
    ('{"kind": "harness-run", "cases": []}', "kind 'harness-run'"),
    ("not json", "not a harness bench JSON"),
])
def test_a_baseline_that_cannot_be_compared_is_a_usage_error(tmp_path, content, reason):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = CliRunner().invoke(main, ["bench", "--trainer", "dpo", "--fixture", "tiny-llama", "--compare", str(bad)])
    assert result.exit_code == 2, result.output
    assert reason in result.output and str(bad) in result.output
    assert "reference/dpo" not in result.output.split("Error")[0]  # refused before any case ran


def test_a_baseline_of_other_cases_compared_nothing_and_is_an_error(tmp_path):
    base = tmp_path / "other.json"
    base.write_text(json.dumps({"cases": [{"id": "reference/kto/tiny-qwen35/fp32", "ratios": [1.1, 1.2]}]}))
    result = CliRunner().invoke(main, ["bench", "--trainer", "dpo", "--fixture", "tiny-llama", *FAST,
                                       "--compare", str(base)])
    assert result.exit_code == 2, result.output
    assert "compared nothing" in result.output and "reference/kto/tiny-qwen35/fp32" in result.output


def test_compare_keeps_the_cases_it_cannot_compare_visible():
    base = {"cases": [{"id": "a", "ratios": [1.0, 1.0, 1.01]}, {"id": "c", "ratios": [1.0]}]}
    current = {"cases": [{"id": "a", "ratios": [1.0, 1.01, 1.0]}, {"id": "b", "ratios": [1.0]},
                         {"id": "c", "ratios": []}]}
    statuses = {v["id"]: v["status"] for v in compare(base, current)}
    assert statuses == {"a": "ok", "b": "not compared", "c": "error"}
    with pytest.raises(GateError, match="compared nothing"):
        compare(base, {"cases": [{"id": "b", "ratios": [1.0]}]})
    assert set(check_baseline(base, "x")) == {"a", "c"}


def test_usage_errors_name_the_option():
    runner = CliRunner()
    r = runner.invoke(main, ["bench", "--min-rounds", "5", "--max-rounds", "4"])
    assert r.exit_code == 2 and "--max-rounds 4 is below --min-rounds 5" in r.output
    r = runner.invoke(main, ["bench", "--against", "HEAD", "--target", "reference", "--target", "mlx-tune"])
    assert r.exit_code == 2 and "one --target" in r.output
    r = runner.invoke(main, ["bench", "--fixture", "huge-llama"])
    assert r.exit_code == 2 and "unknown fixture 'huge-llama'" in r.output and "bench-llama" in r.output
    r = runner.invoke(main, ["bench", "--trainer", "dpo", "--fixture", "tiny-llama", "--against", "no-such-rev-xyz"])
    assert r.exit_code == 2 and "--against no-such-rev-xyz" in r.output


PROJECT_TARGET = """from mlxth.harness.adapters.reference import ReferenceTarget


class Target(ReferenceTarget):
    name = "mylib"
"""


def test_bench_takes_what_its_command_line_leaves_out_from_the_project(tmp_path, monkeypatch):
    (tmp_path / "harness_target.py").write_text(PROJECT_TARGET)
    (tmp_path / "pyproject.toml").write_text('[tool.mlx-trainer-harness]\ntarget = "harness_target.py:Target"\n'
                                             'trainers = ["kto"]\nfixtures = ["tiny-llama"]\nvariants = ["bf16"]\n')
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", *FAST, "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [c["id"] for c in json.loads(out.read_text())["cases"]] == ["mylib/kto/tiny-llama/bf16"]
    # The command line wins, key by key; a fixture the table names nothing for keeps bench's choice.
    (target, cases), = selected_cases(("reference",), ("dpo",), ("bench-llama",), ())
    assert target.name == "reference" and [c.id for c in cases] == ["reference/dpo/bench-llama/bf16"]
    (tmp_path / "pyproject.toml").write_text('[tool.mlx-trainer-harness]\ntrainers = ["orpo"]\n')
    (target, cases), = selected_cases((), (), (), ())
    assert target.name == "reference" and {c.fixture for c in cases} == set(FIXTURES)
    assert {c.trainer for c in cases} == {"orpo"}
