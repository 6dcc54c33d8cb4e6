"""`harness bench --against`: the baseline side really runs the baseline's code, and the gate's verdict follows.

A scratch trainer library (its own git repository, a target that wraps the
reference trainers) gets a revision whose every step does twice the work;
the A/B gate must flag it against the fast revision, and not the reverse.
"""

import json
import subprocess

from click.testing import CliRunner

from mlxth.harness.cli import main

TARGET = '''"""A scratch library's harness target (slowdown factor {slow})."""

import time

from mlxth.harness.adapters.reference import ReferenceRun, ReferenceTarget

SLOW = {slow}


class Target(ReferenceTarget):
    name = "mylib"
    golden_key = "reference"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        run = ReferenceRun(trainer, model, tokenizer, rows, settings)
        step = run.step

        def timed_step():
            start = time.process_time()
            record = step()
            end = time.process_time()
            while time.process_time() < end + SLOW * (end - start):
                pass
            return record

        run.step = timed_step
        return run
'''
ROUNDS = ["--min-time", "0", "--min-rounds", "10", "--max-rounds", "10", "--warmup", "1"]
CASE = ["--trainer", "dpo", "--fixture", "tiny-llama"]


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _library(tmp_path):
    repo = tmp_path / "mylib"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "dev@example.invalid")
    _git(repo, "config", "user.name", "dev")
    revs = []
    for slow in (0.0, 1.0):
        (repo / "harness_target.py").write_text(TARGET.format(slow=slow))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"slowdown {slow}")
        revs.append(_git(repo, "rev-parse", "HEAD"))
    return repo, revs


def test_a_revision_that_doubles_the_work_is_flagged_and_its_reverse_is_not(tmp_path):
    repo, (fast, slow) = _library(tmp_path)
    spec = f"{repo / 'harness_target.py'}:Target"
    out = tmp_path / "ab.json"
    result = CliRunner().invoke(main, ["bench", "--target", spec, *CASE, *ROUNDS, "--against", fast,
                                       "--json", str(out)])
    assert result.exit_code == 1, result.output  # the working tree (slow) against the fast revision
    assert "slower" in result.output and f"mylib at {fast[:10]}" in result.output
    case = json.loads(out.read_text())["cases"][0]
    assert case["verdict"]["slowdown_pct"] > 50
    assert case["code"]["candidate"]["target"] == str(repo / "harness_target.py")
    assert case["code"]["baseline"]["target"] != case["code"]["candidate"]["target"]
    assert len(case["step_ms"]) == len(case["baseline"]["step_ms"]) == 10

    (repo / "harness_target.py").write_text(TARGET.format(slow=0.0))  # the fix, not yet committed
    result = CliRunner().invoke(main, ["bench", "--target", spec, *CASE, *ROUNDS, "--against", slow])
    assert result.exit_code == 0, result.output
    assert " ok " in result.output
    assert _git(repo, "status", "--porcelain") == "M harness_target.py"  # the repository is left as it was


def test_this_projects_reference_trainers_come_from_the_revision(tmp_path):
    out = tmp_path / "ab.json"
    result = CliRunner().invoke(main, ["bench", *CASE, *ROUNDS, "--against", "HEAD", "--threshold", "1000",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    code = json.loads(out.read_text())["cases"][0]["code"]
    assert "mlxth-against-" in code["baseline"]["trainers"] and code["baseline"]["trainers"].endswith("trainers")
    assert "mlxth-against-" not in code["candidate"]["trainers"]


def test_a_baseline_that_cannot_run_is_that_cases_error(tmp_path):
    repo, (fast, _) = _library(tmp_path)
    (repo / "harness_target.py").write_text("raise ImportError('mylib is broken here')\n")
    _git(repo, "commit", "-qam", "broken")
    broken = _git(repo, "rev-parse", "HEAD")
    (repo / "harness_target.py").write_text(TARGET.format(slow=0.0))
    result = CliRunner().invoke(main, ["bench", "--target", f"{repo / 'harness_target.py'}:Target", *CASE,
                                       *ROUNDS, "--against", broken])
    assert result.exit_code == 1, result.output
    assert "error: baseline:" in result.output and "mylib is broken here" in result.output
