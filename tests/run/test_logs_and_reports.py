"""Reading a case's log back in bounded memory, and reports of runs with unusual values."""

import xml.etree.ElementTree as ET

from mlxth.harness.model import Case, case_settings
from mlxth.harness.run.ranks import TAIL_BYTES, log_excerpt
from mlxth.harness.run.runner import unfinished_result
from mlxth.harness.tools import report


def test_a_long_log_is_read_back_as_its_tail_and_the_launchers_exit_lines(tmp_path):
    log = tmp_path / "launcher.log"
    with open(log, "w") as fh:
        fh.write("[WARN] Node with rank 1 exited with code -6\n")
        for i in range(200_000):
            fh.write(f"line {i} " + "x" * 40 + "\n")
        fh.write("y" * 3 * TAIL_BYTES)  # a last line longer than the tail, never ended
    text = log_excerpt(log)
    assert text.startswith("[WARN] Node with rank 1 exited with code -6\n")
    assert len(text) < TAIL_BYTES + 1024
    assert text.endswith("y" * 100)
    assert log_excerpt(tmp_path / "missing.log") == ""


def _result(trainer, status, loss):
    case = Case("reference", trainer, "tiny-llama", "fp32", case_settings(trainer, "fp32", 2))
    if status in ("interrupted", "not-run"):
        return unfinished_result(case, status, f"{status} by SIGTERM")
    failure = None if status == "pass" else {"kind": "non-finite", "check": "finite", "message": "step 2: loss = nan",
                                              "explanation": ""}
    return {"case": case.to_dict(), "id": case.id, "status": status, "failure": failure, "duration_s": 1.0,
            "steps": [{"step": 1, "loss": 0.69}, {"step": 2, "loss": loss}],
            "checks": [{"name": "analytic", "status": "skip", "detail": "no closed form", "kind": None,
                        "reason": "no closed form"}]}


def test_reports_of_a_run_with_a_nan_and_interrupted_cases(tmp_path):
    results = [_result("dpo", "fail", "nan"), _result("orpo", "pass", 1.5), _result("kto", "interrupted", None),
               _result("simpo", "not-run", None)]
    env = {"backend": "cpu", "device": "cpu", "mlx": "0", "mlx-lm": "0", "python": "3"}
    run = report.build_run("r1", env, [], results, 3.0, "interrupted", "SIGTERM", {"worker_start_s": [2.5]})
    assert [row[3] for row in report.summary_rows(results)] == ["nan", "1.5", "", ""]
    assert report.counts_line(run["summary"]) == "1 passed, 1 failed, 0 errors, 1 interrupted, 1 not run"
    assert report.skipped_line(results) == "skipped checks: analytic: 2 skipped, no closed form"
    out = report.write_reports(tmp_path, run)
    suite = ET.parse(out / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "2")
    markdown = (out / "report.md").read_text()
    assert "**Interrupted by SIGTERM**" in markdown and "1 worker(s) started in 2.5 s" in markdown
    assert report.skipped_line([]) == "skipped checks: none"
