"""Goldens that cannot be read or hold nothing, golden folders that are not there, paths that cannot be
written: never a silent green, never a lost run, each fault named in one line."""

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.judge import golden
from support import SNAPSHOTS
from support.faults import REPORTS, digest

COMMITTED = SNAPSHOTS / "cpu" / "reference"
TRAINERS = ("dpo", "orpo", "kto", "simpo", "grpo")
AS_ROOT = os.geteuid() == 0  # permission bits do not stop root


def _run(tmp_path, *args):
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["run", "--reports", str(reports), *args], catch_exceptions=False)
    runs = sorted(reports.glob("*/report.json"))
    return result, (json.loads(runs[-1].read_text()) if runs else None), (runs[-1].parent if runs else None)


def _copy_goldens(root: Path, fixtures=("tiny-llama", "tiny-qwen35")) -> Path:
    for trainer in TRAINERS:
        for fixture in fixtures:
            src = COMMITTED / trainer / f"{fixture}--fp32.json"
            dest = root / "cpu" / "reference" / trainer / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    return root


# Planted on each trainer's tiny-llama golden, with what the case's error must say.
BAD_GOLDENS = {
    "dpo": (lambda p: p.write_text(p.read_text()[: len(p.read_text()) // 2]), "invalid JSON"),
    "orpo": (lambda p: p.write_text(""), "line 1: invalid JSON"),
    "kto": (lambda p: p.write_text("[]"), "not a golden trace"),
    "simpo": (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "steps": [{}, {}, {}]})),
              "step record 1 holds no number to compare (keys: none)"),
    "grpo": (lambda p: (p.unlink(), p.mkdir()), "cannot be read"),
}


def test_each_unreadable_golden_is_its_own_cases_error_and_the_run_goes_on(tmp_path):
    root = _copy_goldens(tmp_path / "snaps")
    for trainer, (plant, _) in BAD_GOLDENS.items():
        plant(root / "cpu" / "reference" / trainer / "tiny-llama--fp32.json")
    before = digest(root)
    result, report, run_dir = _run(tmp_path, "--scenario", "plain", "--fixture", "tiny-llama", "--fixture", "tiny-qwen35",
                                   "--snapshots", str(root))
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(REPORTS)
    for case in report["cases"]:
        trainer, fixture = case["case"]["trainer"], case["case"]["fixture"]
        if fixture == "tiny-qwen35":
            assert case["status"] == "pass", case["failure"]
            continue
        path = root / "cpu" / "reference" / trainer / "tiny-llama--fp32.json"
        assert case["status"] == "error" and case["failure"]["kind"] == "bad-golden", case["failure"]
        assert case["failure"]["check"] == "golden"
        assert case["failure"]["message"].startswith(f"golden {path}: ")
        assert BAD_GOLDENS[trainer][1] in case["failure"]["message"]
        assert "\n" not in case["failure"]["message"]
    assert digest(root) == before


def test_a_golden_without_a_number_to_compare_is_an_error_not_a_pass(tmp_path):
    path = tmp_path / "g.json"
    data = json.loads((COMMITTED / "dpo" / "tiny-llama--fp32.json").read_text())
    for steps in ([{}, {}, {}], [{"step": 1}, {"step": 2}, {"step": 3}],
                  [{"step": 1, "learning_rate": 1e-4}], [{"step": 1, "loss": "0.69"}], []):
        path.write_text(json.dumps({**data, "steps": steps}))
        with pytest.raises(golden.GoldenError, match=f"^golden {path}: "):
            golden.read(path)
    path.write_text(json.dumps(data))
    assert golden.read(path)["steps"] == data["steps"]


def test_a_misspelt_snapshots_folder_is_a_usage_error(tmp_path):
    result, report, _ = _run(tmp_path, "--trainer", "dpo", "--snapshots", str(tmp_path / "snapshtos"))
    assert result.exit_code == 2 and report is None
    assert f"--snapshots {tmp_path / 'snapshtos'}: no such folder" in result.output
    assert "--update-snapshots" in result.output.splitlines()[-1]


def test_without_goldens_the_summary_says_every_golden_check_was_skipped_and_why(tmp_path, monkeypatch):
    project = tmp_path / "myproject"  # a project of the user's with no snapshots/ yet
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    monkeypatch.chdir(project)
    result, report, _ = _run(tmp_path, "--scenario", "plain", "--trainer", "simpo", "--trainer", "dpo", "--fixture", "tiny-llama")
    assert result.exit_code == 0, result.output
    assert "golden: 2 skipped, no golden recorded: run with --update-snapshots" in result.output
    assert {"check": "golden", "reason": golden.NO_GOLDEN, "cases": 2} in report["skipped_checks"]


def test_update_snapshots_into_a_folder_that_cannot_be_written_is_a_usage_error_before_any_case(tmp_path):
    root = tmp_path / "snaps"
    root.mkdir()
    (root / "cpu").write_text("a file where the backend's folder goes")
    result, report, _ = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--update-snapshots",
                             "--snapshots", str(root))
    assert result.exit_code == 2 and report is None
    assert f"Error: --update-snapshots: cannot write the golden {root}/cpu/reference/dpo/tiny-llama--fp32.json: " \
           f"{root / 'cpu'} is not a folder" in result.output
    assert "harness run" not in result.output  # no case started


def test_update_snapshots_over_a_golden_that_is_a_folder_is_a_usage_error(tmp_path):
    root = tmp_path / "snaps"
    (root / "cpu" / "reference" / "dpo" / "tiny-llama--fp32.json").mkdir(parents=True)
    result, report, _ = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--update-snapshots",
                             "--snapshots", str(root))
    assert result.exit_code == 2 and report is None
    assert "tiny-llama--fp32.json is not a file" in result.output


@pytest.mark.skipif(AS_ROOT, reason="permission bits do not stop root")
def test_update_snapshots_into_a_read_only_folder_is_a_usage_error(tmp_path):
    root = _copy_goldens(tmp_path / "snaps", ("tiny-llama",))
    for folder in [root, *root.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o555)
    try:
        result, report, _ = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--update-snapshots",
                                 "--snapshots", str(root))
    finally:
        for folder in [root, *root.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)
    assert result.exit_code == 2 and report is None
    assert "cannot write in" in result.output and "Permission denied" in result.output


def test_a_reports_folder_that_cannot_be_written_is_a_usage_error_before_any_case(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["run", "--reports", str(blocker / "reports"), "--trainer", "dpo"])
    assert result.exit_code == 2
    assert f"Error: --reports {blocker / 'reports'}: {blocker} is not a folder" in result.output
    assert "harness run" not in result.output


def test_triage_against_an_unreadable_golden_names_the_file(tmp_path):
    root = _copy_goldens(tmp_path / "snaps", ("tiny-llama",))
    bad = root / "cpu" / "reference" / "simpo" / "tiny-llama--fp32.json"
    bad.write_text("{")
    result = CliRunner().invoke(main, ["triage", "--trainer", "simpo", "--fixture", "tiny-llama",
                                       "--snapshots", str(root)])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == f"Error: golden {bad}: line 1: invalid JSON (Expecting property name " \
                                             "enclosed in double quotes)"
