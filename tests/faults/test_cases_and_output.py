"""A NaN loss, a case that kills or ends its own process, output without end, file modes."""

import json
import os
import re
import stat
import subprocess
import sys

from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.judge.golden import write_atomic
from support import PLANTED_FAULTS, SNAPSHOTS
from support.faults import REPORTS, HarnessRun, orphans
from support.planted_faults import CHATTY_BYTES


def _run(tmp_path, *args):
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["run", "--reports", str(reports), *args], catch_exceptions=False)
    runs = sorted(reports.glob("*/report.json"))
    return result, (json.loads(runs[-1].read_text()) if runs else None), (runs[-1].parent if runs else None)


def test_a_nan_loss_is_non_finite_and_every_report_is_written(tmp_path):
    result, report, run_dir = _run(tmp_path, "--target", f"{PLANTED_FAULTS}:NaNLoss", "--trainer", "dpo",
                                   "--fixture", "tiny-llama", "--snapshots", str(SNAPSHOTS))
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(REPORTS)
    case = report["cases"][0]
    assert case["failure"]["kind"] == "non-finite" and case["failure"]["message"] == "step 2: loss = nan"
    checks = {c["name"]: c for c in case["checks"]}
    assert checks["reproducible"]["status"] == "pass"  # a NaN reproduced is reproduced
    assert [s["loss"] for s in case["steps"]][1] == "nan"
    row = next(line for line in result.output.splitlines() if line.startswith("planted-nan-loss/dpo"))
    assert row.split()[1:4] == ["fail", "3", "nan"]
    assert re.search(r"\| planted-nan-loss/dpo/tiny-llama/fp32 +\| fail +\| +3 \| +nan \|",
                     (run_dir / "report.md").read_text())


def test_a_case_that_kills_exits_or_reads_stdin_is_that_cases_error_and_the_run_goes_on(tmp_path):
    result, report, _ = _run(tmp_path, "--target", f"{PLANTED_FAULTS}:ProcessFaults", "--fixture", "tiny-llama",
                             "--snapshots", str(SNAPSHOTS), "--timeout", "120")
    assert result.exit_code == 1, result.output
    cases = {c["case"]["trainer"]: c for c in report["cases"]}
    assert cases["dpo"]["failure"]["kind"] == "crash"
    assert cases["dpo"]["failure"]["message"].startswith("the case's process died in step 2 (killed by SIGKILL)")
    assert cases["orpo"]["failure"]["kind"] == "exception"
    assert cases["orpo"]["failure"]["message"].startswith("the case's process died in step 1 (exited with status 4)")
    assert cases["kto"]["failure"]["kind"] == "exception"  # stdin reads nothing: no hang, no stolen command
    assert cases["kto"]["failure"]["message"] == "EOFError: EOF when reading a line"
    assert cases["simpo"]["status"] == "pass" and cases["grpo"]["status"] == "pass"


def _peak_rss_mb(tmp_path, target, name):
    """The harness process's own peak memory over one single-case run (MB), and its report."""
    reports = tmp_path / name
    script = ("import resource, sys\nfrom mlxth.harness.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "print(peak / (2**20 if sys.platform == 'darwin' else 2**10))\n")
    out = subprocess.run([sys.executable, "-c", script, "run", "--reports", str(reports), "--target", target,
                          "--trainer", "dpo", "--fixture", "tiny-llama", "--snapshots", str(SNAPSHOTS)],
                         capture_output=True, text=True, check=True)
    report = json.loads(next(reports.glob("*/report.json")).read_text())
    return float(out.stdout.splitlines()[-1]), report


def test_a_case_that_prints_without_end_costs_the_harness_no_memory_and_its_log_is_kept_whole(tmp_path):
    quiet, _ = _peak_rss_mb(tmp_path, "reference", "quiet")
    chatty, report = _peak_rss_mb(tmp_path, f"{PLANTED_FAULTS}:Chatty", "chatty")
    case = report["cases"][0]
    assert case["status"] == "pass", case["failure"]
    printed = 2 * CHATTY_BYTES  # step 1 of the run and of the rerun
    assert os.path.getsize(case["log"]) == printed  # the full output, on disk
    assert chatty - quiet < printed / 2**20 / 4, (quiet, chatty)  # far less than the output's size


def test_reports_and_goldens_are_written_with_the_users_umask(tmp_path):
    run = HarnessRun(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--update-snapshots",
                     "--snapshots", str(tmp_path / "snaps"), umask=0o027)
    assert run.finish() == 0, run.output
    run_dir, _ = run.report()
    written = [run_dir / name for name in REPORTS] + [tmp_path / "snaps/cpu/reference/dpo/tiny-llama--fp32.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: "0o640" for p in written}
    assert orphans(run.marker) == [] and run.leftovers() == []


def test_write_atomic_gives_0o644_under_umask_022_and_leaves_no_temporary_file(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a" / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert oct(stat.S_IMODE((tmp_path / "a" / "x.json").stat().st_mode)) == "0o644"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]
