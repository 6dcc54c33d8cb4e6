"""`harness run` end to end: exit codes, reports, and every failure kind from a planted fault."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.judge import golden as golden_mod
from support import PLANTED_TARGETS

PLANTED = str(PLANTED_TARGETS)


def _run(tmp_path, *args, snapshots=None):
    reports = tmp_path / "reports"
    argv = ["run", "--reports", str(reports), *args]
    if snapshots is not None:
        argv += ["--snapshots", str(snapshots)]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    runs = sorted(reports.glob("*/report.json"))
    report = json.loads(runs[-1].read_text()) if runs else None
    return result, report


def _case(report, fixture):
    return next(c for c in report["cases"] if c["case"]["fixture"] == fixture)


def test_passing_run_exits_0_and_writes_all_reports(tmp_path):
    result, report = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--scenario", "plain", "--strict")
    assert result.exit_code == 0, result.output
    assert "1 passed, 0 failed, 0 errors" in result.output
    case = report["cases"][0]
    assert {"trainer", "fixture", "target"} <= set(case["case"])
    assert case["status"] == "pass" and case["failure"] is None
    assert [s["step"] for s in case["steps"]] == [1, 2, 3] and all("loss" in s for s in case["steps"])
    assert [c["name"] for c in case["checks"]] == ["completes", "training-mode", "finite", "updates", "reproducible",
                                                  "loss-recompute", "metric-recompute", "gradient", "analytic",
                                                  "config", "golden"]
    assert all(c["status"] == "pass" for c in case["checks"])
    assert {"mlx", "mlx-lm", "python", "backend", "device"} <= set(report["environment"])
    out = Path(tmp_path / "reports" / report["run_id"])
    assert "| reference/dpo/tiny-llama/fp32" in (out / "report.md").read_text()
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "1" and suite.get("failures") == "0"


@pytest.mark.parametrize("args, reason", [
    (["--trainer", "ppo"], "unknown trainer 'ppo'"),
    (["--fixture", "tiny-gpt"], "unknown fixture 'tiny-gpt'"),
    (["--variant", "fp64"], "unknown variant 'fp64'"),
    (["--target", "no-such-lib"], "unknown target 'no-such-lib'"),
    (["--target", "nowhere.py:Thing"], "nowhere.py does not exist"),
])
def test_usage_errors_exit_2_with_a_reason(tmp_path, args, reason):
    result, report = _run(tmp_path, *args)
    assert result.exit_code == 2
    assert reason in result.output
    assert report is None


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    return folder


def test_strict_mode_without_golden_exits_2(tmp_path):
    result, _ = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--scenario", "plain", "--strict",
                     snapshots=_empty(tmp_path))
    assert result.exit_code == 2
    assert "--strict: no golden for 1 case(s), first reference/dpo/tiny-llama/fp32" in result.output


def test_missing_golden_is_reported_not_failed_outside_strict_mode(tmp_path):
    result, report = _run(tmp_path, "--trainer", "simpo", "--fixture", "tiny-llama", "--scenario", "plain", snapshots=_empty(tmp_path))
    assert result.exit_code == 0
    golden = next(c for c in report["cases"][0]["checks"] if c["name"] == "golden")
    assert golden["status"] == "skip" and "--update-snapshots" in golden["detail"]
    assert "golden: 1 skipped, no golden recorded: run with --update-snapshots" in result.output


def test_update_snapshots_writes_goldens_and_never_for_failing_cases(tmp_path):
    root = tmp_path / "snaps"
    result, _ = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--scenario", "plain", "--update-snapshots", snapshots=root)
    assert result.exit_code == 0
    written = root / "cpu" / "reference" / "dpo" / "tiny-llama--fp32.json"
    before = written.read_text()
    result, report = _run(tmp_path, "--target", f"{PLANTED}:NoUpdate", "--trainer", "dpo",
                          "--fixture", "tiny-llama", "--scenario", "plain", "--update-snapshots", snapshots=root)
    assert result.exit_code == 1
    assert written.read_text() == before
    golden = next(c for c in report["cases"][0]["checks"] if c["name"] == "golden")
    assert "not updated: the case fails other checks" in golden["detail"]
    # A plain run against the recorded golden passes.
    result, _ = _run(tmp_path, "--trainer", "dpo", "--fixture", "tiny-llama", "--scenario", "plain", "--strict", snapshots=root)
    assert result.exit_code == 0


def test_skipping_model_train_is_vjp_missing_on_linear_attn_and_train_mode_elsewhere(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:SkipTrain", "--trainer", "dpo")
    assert result.exit_code == 1
    linear = _case(report, "tiny-linear-attn")
    assert linear["status"] == "error" and linear["failure"]["kind"] == "vjp-missing"
    assert "Not implemented for CustomKernel" in linear["failure"]["message"]
    assert "model.train()" in linear["failure"]["explanation"]
    for fixture in ("tiny-llama", "tiny-qwen35"):
        case = _case(report, fixture)
        assert case["status"] == "fail" and case["failure"]["kind"] == "train-mode", case["failure"]


def test_changed_loss_constant_is_config_drift_then_golden_drift(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:LossConstant", "--trainer", "dpo",
                          "--fixture", "tiny-llama", "--scenario", "plain")
    assert result.exit_code == 1
    case = report["cases"][0]
    assert case["failure"]["kind"] == "config-drift"
    assert case["failure"]["message"] == "beta: golden 0.1, now 0.12"
    golden = next(c for c in case["checks"] if c["name"] == "golden")
    # Step 1's loss is ln 2 whatever beta is; its gradient already differs (on any CPU: beyond every tier).
    assert golden["kind"] == "golden-drift" and golden["detail"].startswith("step 1: grad_norm expected ")
    # The tier the tolerance policy picks for this machine against the golden's (exact only on
    # the machine and library versions that recorded it): the verdict holds on every machine.
    recorded = golden_mod.read(Path(case["golden_path"]))["environment"]
    rtol, atol, reason = golden_mod.tolerance(recorded, case["environment"], "float32")
    assert f"(rtol {rtol:g}, atol {atol:g}: {reason})" in golden["detail"]


def test_injected_nan_is_non_finite_with_step_and_quantity(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:InjectNaN", "--trainer", "kto",
                          "--fixture", "tiny-qwen35")
    assert result.exit_code == 1
    case = report["cases"][0]
    assert case["failure"]["kind"] == "non-finite"
    assert "kto: step 2: non-finite loss" in case["failure"]["message"]
    assert len(case["steps"]) == 1


def test_abort_is_a_crash_and_the_run_goes_on(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:Abort", "--trainer", "simpo")
    assert result.exit_code == 1
    crashed = _case(report, "tiny-llama")
    assert crashed["status"] == "error" and crashed["failure"]["kind"] == "crash"
    assert "SIGABRT" in crashed["failure"]["message"]
    assert _case(report, "tiny-qwen35")["status"] == "pass"
    assert _case(report, "tiny-linear-attn")["status"] == "pass"


def test_hang_is_a_timeout_and_reports_are_written(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:Hang", "--trainer", "orpo", "--fixture", "tiny-llama", "--scenario", "plain",
                          "--timeout", "8")
    assert result.exit_code == 1
    assert report["cases"][0]["failure"]["kind"] == "timeout"
    assert "no result after 8 s" in report["cases"][0]["failure"]["message"]


def test_skipped_update_is_no_update(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:NoUpdate", "--trainer", "dpo", "--fixture", "tiny-llama", "--scenario", "plain")
    assert report["cases"][0]["failure"]["kind"] == "no-update"
    assert result.exit_code == 1


def test_unseeded_randomness_is_not_reproducible(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:Unseeded", "--trainer", "orpo", "--fixture", "tiny-llama", "--scenario", "plain")
    assert result.exit_code == 1
    failure = report["cases"][0]["failure"]
    assert failure["kind"] == "not-reproducible" and " then " in failure["message"]


def test_off_by_one_mask_is_a_loss_mismatch(tmp_path):
    result, report = _run(tmp_path, "--target", f"{PLANTED}:OffByOneMask", "--trainer", "simpo",
                          "--fixture", "tiny-llama", "--scenario", "plain", snapshots=_empty(tmp_path))
    assert result.exit_code == 1
    failure = report["cases"][0]["failure"]
    assert failure["kind"] == "loss-mismatch", failure
    assert "standard formula" in failure["message"]


def test_default_matrix_passes_against_the_committed_goldens(tmp_path):
    """The CI gate itself: every trainer on every fixture, strict."""
    result, report = _run(tmp_path, "--strict")
    assert result.exit_code == 0, result.output
    # 5 trainers x 4 fixtures in fp32, each trainer's bf16, lora and compiled cases on tiny-llama, the 15
    # scenarios (harness list) and KTO over 2 ranks
    cases = report["cases"]
    assert len(cases) == 20 + 15 + 15 + 1
    assert sum(bool(c["case"]["scenario"]) for c in cases) == 15
    assert {c["case"]["trainer"] for c in cases} == {"dpo", "orpo", "kto", "simpo", "grpo"}
    variants = [(c["case"]["trainer"], c["case"]["fixture"], c["case"]["variant"]) for c in cases
                if c["case"]["variant"] != "fp32"]
    assert sorted(variants) == sorted((t, "tiny-llama", v) for t in ("dpo", "orpo", "kto", "simpo", "grpo")
                                      for v in ("bf16", "lora", "compiled"))
    assert [c["id"] for c in cases if c["case"]["settings"]["ranks"] > 1] == ["reference/kto/tiny-llama/fp32/2ranks"]
    assert all(c["status"] == "pass" for c in cases)


def test_a_failing_oracle_reference_load_is_blamed_on_the_harness_not_the_target(monkeypatch):
    from mlxth.harness.model import Case, case_settings
    from mlxth.harness.run import worker

    def broken(case, config=None):
        raise OSError("reference weights unreadable")

    monkeypatch.setattr(worker, "load_reference", broken)
    case = Case("reference", "dpo", "tiny-llama", "fp32", case_settings("dpo", "fp32", 1), "reference")
    records, error, _ = worker.run_once(case, probe=False, oracle=True)
    assert records == [] and error["step"] is None
    assert error["message"].startswith("the harness's loading of the oracle's reference model (not the target) "
                                       "raised OSError: reference weights unreadable")
