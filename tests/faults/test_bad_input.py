"""Bad options, a target that breaks its contract, bisect asked the impossible: one clear line each."""

import json
import subprocess

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from support import PLANTED_FAULTS, SNAPSHOTS
from support.bisect_repo import build
from support.faults import REPORTS

BROKEN = f"{PLANTED_FAULTS}:BrokenContract"


def _run(tmp_path, *args):
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["run", "--reports", str(reports), *args], catch_exceptions=False)
    runs = sorted(reports.glob("*/report.json"))
    return result, (json.loads(runs[-1].read_text()) if runs else None), (runs[-1].parent if runs else None)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-1", "soon"])
def test_a_timeout_that_is_not_a_finite_positive_number_is_a_usage_error(tmp_path, value):
    result, report, _ = _run(tmp_path, "--trainer", "dpo", "--timeout", value)
    assert result.exit_code == 2 and report is None
    assert f"Invalid value for '--timeout': {value!r}" in result.output
    assert "Traceback" not in result.output


def test_repeated_names_run_each_case_once(tmp_path):
    result, report, _ = _run(tmp_path, "--scenario", "plain", "--trainer", "simpo", "--trainer", "simpo", "--fixture", "tiny-llama",
                             "--fixture", "tiny-llama", "--variant", "fp32", "--variant", "fp32",
                             "--snapshots", str(SNAPSHOTS))
    assert result.exit_code == 0, result.output
    assert [c["id"] for c in report["cases"]] == ["reference/simpo/tiny-llama/fp32"]


def test_a_step_that_breaks_the_contract_is_named_and_the_steps_before_it_are_kept(tmp_path):
    result, report, run_dir = _run(tmp_path, "--target", BROKEN, "--fixture", "tiny-llama",
                                   "--snapshots", str(SNAPSHOTS))
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(REPORTS)
    cases = {c["case"]["trainer"]: c for c in report["cases"]}
    expected = {
        "dpo": "step(): step 2 returned list [",
        "orpo": "step(): step 2 returned a dict without 'loss' (keys: ",
        "kto": "step(): step 2 returned loss str '0.5'; expected a number",
        "simpo": "step(): step 2 returned loss NoneType None; expected a number",
    }
    for trainer, start in expected.items():
        case = cases[trainer]
        assert case["status"] == "error" and case["failure"]["kind"] == "contract", case["failure"]
        assert case["failure"]["message"].startswith(f"ContractError: {start}")
        assert len(case["steps"]) == 1 and isinstance(case["steps"][0]["loss"], float)
        assert "Traceback" not in case["failure"]["message"] and "\n" not in case["failure"]["message"]
    assert "expected a dict such as {'loss': 0.69" in cases["dpo"]["failure"]["message"]


def test_an_exception_in_prepare_is_labelled_prepare_not_step_1(tmp_path):
    result, report, _ = _run(tmp_path, "--target", BROKEN, "--trainer", "grpo", "--fixture", "tiny-llama",
                             "--snapshots", str(SNAPSHOTS))
    assert result.exit_code == 1
    case = report["cases"][0]
    assert case["failure"]["kind"] == "exception"
    assert case["failure"]["message"] == "prepare() raised RuntimeError: cannot build the optimizer"
    completes = next(c for c in case["checks"] if c["name"] == "completes")
    assert completes["detail"] == "prepare() raised RuntimeError: cannot build the optimizer"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("bisect") / "mylib"
    return repo, build(repo, commits=3, drop_train=99, broken=())


def _bisect(repo, good, bad):
    return CliRunner().invoke(main, ["bisect", "--repo", str(repo), "--good", good, "--bad", bad,
                                     "--target", "harness_target.py:Target", "--trainer", "dpo"])


def test_bisect_with_good_equal_to_bad_says_so_without_running(repo):
    path, hashes = repo
    result = _bisect(path, hashes[1], hashes[1])
    assert result.exit_code == 2
    assert f"are the same commit ({hashes[1][:10]}): nothing to bisect" in result.output
    assert "steps:" not in result.output
    worktrees = subprocess.run(["git", "-C", str(path), "worktree", "list"], capture_output=True, text=True)
    assert len(worktrees.stdout.splitlines()) == 1  # no throw-away worktree was made


@pytest.mark.parametrize("good, bad, option", [("v9.9", "HEAD", "--good"), ("HEAD~1", "no-such-branch", "--bad")])
def test_bisect_with_a_bad_revision_name_is_one_line(repo, good, bad, option):
    path, _ = repo
    result = _bisect(path, good, bad)
    assert result.exit_code == 2
    name = good if option == "--good" else bad
    assert result.output.splitlines()[-1] == f"Error: {option} {name!r} is not a commit in {path}"
    assert "hint" not in result.output
