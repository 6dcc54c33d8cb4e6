"""A run that is stopped (SIGTERM from CI, Ctrl-C, SIGKILL) keeps its reports and leaves nothing behind."""

import signal
import xml.etree.ElementTree as ET

import pytest

from support import PLANTED_FAULTS, SNAPSHOTS
from support.faults import REPORTS, HarnessRun, digest, marked_processes, orphans, wait_until

HANG = f"{PLANTED_FAULTS}:HangWithChild"
EXIT_INTERRUPTED = 3


def _assert_reports(run_dir, report, state):
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file()) == sorted(REPORTS)
    assert report["state"] == state
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert int(suite.get("tests")) == len(report["cases"])
    skipped = sum(report["summary"][s] for s in ("interrupted", "not-run"))
    assert int(suite.get("skipped")) == skipped
    assert f"{report['summary']['pass']} passed" in (run_dir / "report.md").read_text()


def test_sigterm_in_the_middle_of_a_real_run_keeps_the_reports_and_leaves_no_process(tmp_path):
    before = digest(SNAPSHOTS)
    run = HarnessRun(tmp_path, "--scenario", "plain", "--trainer", "dpo", "--trainer", "orpo", "--trainer", "kto", "--strict")
    wait_until(lambda: marked_processes(run.marker)[1:], 120, "the workers to start")
    run.wait_for_cases(1)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(120) == EXIT_INTERRUPTED, run.output
    run_dir, report = run.report()
    _assert_reports(run_dir, report, "interrupted")
    statuses = [c["status"] for c in report["cases"]]
    assert len(statuses) == 12 and set(statuses) <= {"pass", "interrupted", "not-run"}  # 3 trainers x 4 fixtures
    assert statuses.count("pass") >= 1 and statuses.count("pass") < 12
    assert report["stopped_by"] == "SIGTERM" and "interrupted by SIGTERM" in run.output
    assert orphans(run.marker) == []
    assert run.leftovers() == []
    assert digest(SNAPSHOTS) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_hung_case_at_once_and_marks_the_rest(tmp_path, sig):
    """One job: tiny-llama passes, tiny-qwen35 hangs (with a child process), tiny-linear-attn waits."""
    run = HarnessRun(tmp_path, "--scenario", "plain", "--target", HANG, "--trainer", "dpo", "--jobs", "1", "--timeout", "300",
                     "--fixture", "tiny-llama", "--fixture", "tiny-qwen35", "--fixture", "tiny-linear-attn",
                     "--snapshots", str(SNAPSHOTS))
    run.wait_for_cases(1)
    wait_until(lambda: len(marked_processes(run.marker)) >= 3, 120, "the hung case's child")
    run.proc.send_signal(sig)
    assert run.finish(60) == EXIT_INTERRUPTED, run.output  # well before the 300 s timeout
    run_dir, report = run.report()
    _assert_reports(run_dir, report, "interrupted")
    by_fixture = {c["case"]["fixture"]: c for c in report["cases"]}
    assert by_fixture["tiny-llama"]["status"] == "pass"
    stopped = by_fixture["tiny-qwen35"]
    assert stopped["status"] == "interrupted" and stopped["failure"]["kind"] == "interrupted"
    assert stopped["failure"]["message"].startswith(f"stopped by {sig.name} after ")
    assert stopped["failure"]["message"].endswith(", in step 1")
    waiting = by_fixture["tiny-linear-attn"]
    assert waiting["status"] == "not-run"
    assert waiting["failure"]["message"] == f"not started: the run was stopped by {sig.name}"
    assert "1 passed, 0 failed, 0 errors, 1 interrupted, 1 not run" in run.output
    assert orphans(run.marker) == []
    assert run.leftovers() == []


def test_sigterm_stops_a_data_parallel_case_and_its_ranks(tmp_path):
    run = HarnessRun(tmp_path, "--scenario", "plain", "--target", HANG, "--trainer", "dpo", "--fixture", "tiny-qwen35", "--ranks", "2",
                     "--timeout", "300")
    wait_until(lambda: len(list(run.tmpdir.glob("mlxth-*/*/rank1.started"))) == 1, 180, "both ranks to start")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(60) == EXIT_INTERRUPTED, run.output
    run_dir, report = run.report()
    _assert_reports(run_dir, report, "interrupted")
    assert [c["status"] for c in report["cases"]] == ["interrupted"]
    assert orphans(run.marker) == []
    assert run.leftovers() == []


def test_sigkill_leaves_the_last_complete_report_and_the_workers_end(tmp_path):
    run = HarnessRun(tmp_path, "--scenario", "plain", "--target", HANG, "--trainer", "dpo", "--jobs", "1", "--timeout", "300",
                     "--fixture", "tiny-llama", "--fixture", "tiny-qwen35", "--fixture", "tiny-linear-attn",
                     "--snapshots", str(SNAPSHOTS))
    run.wait_for_cases(1)
    wait_until(lambda: len(marked_processes(run.marker)) >= 3, 120, "the hung case's child")
    run.proc.kill()
    run.finish(60)
    run_dir, report = run.report()  # parses: every write was atomic
    assert sorted(p.name for p in run_dir.iterdir() if p.is_file()) == sorted(REPORTS)
    assert report["state"] == "running"
    assert [c["status"] for c in report["cases"]] == ["pass", "not-run", "not-run"]
    # The worker notices that the harness is gone and ends its process group (the hung child too).
    assert orphans(run.marker) == []
