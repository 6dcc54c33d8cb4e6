"""Verdicts that do not depend on the machine: goldens from another CPU, TF32 as a tier, runs longer
or shorter than their golden."""

import copy
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxth.harness import env as env_mod
from mlxth.harness.cli import main
from mlxth.harness.judge import golden
from support import PLANTED_TARGETS, SNAPSHOTS

CUDA = {"backend": "cuda", "device": "NVIDIA H200", "mlx": "0.32.4", "mlx-lm": "0.32.2"}


def _run(tmp_path, *args):
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["run", "--reports", str(reports), *args], catch_exceptions=False)
    found = sorted(reports.glob("*/report.json"))
    return result, json.loads(found[-1].read_text()) if found else None


def _golden_check(case):
    return next(c for c in case["checks"] if c["name"] == "golden")


# -- TF32 ----------------------------------------------------------------------


def test_a_tf32_difference_is_its_own_tier():
    on, off = {**CUDA, "MLX_ENABLE_TF32": "1"}, {**CUDA, "MLX_ENABLE_TF32": "0"}
    # One TF32 setting: the GPU tier (atol from the measured spread of rewards/* on an H200).
    assert golden.tolerance(on, on, "float32")[:2] == (1e-3, 3e-4)
    assert golden.tolerance(off, off, "float32")[:2] == (1e-3, 3e-4)
    rtol, atol, reason = golden.tolerance(on, off, "float32")
    assert (rtol, atol) == (2e-2, 5e-3) and "TF32 off but the golden's on" in reason
    assert golden.tolerance(CUDA, off, "float32")[:2] == (2e-2, 5e-3)  # a golden without the key: MLX's default, on
    assert golden.tolerance({"backend": "cpu"}, {"backend": "cpu"}, "float32")[:2] == (0.0, 0.0)


def _trace(env, steps):
    return {"environment": env, "case": {"settings": {"dtype": "float32", "steps": len(steps)}}, "steps": steps}


def test_tf32_on_against_off_is_no_false_alarm_but_a_real_drift_still_fails():
    steps = [{"step": 1, "loss": 0.6931, "grad_norm": 1.2}, {"step": 2, "loss": 0.68, "grad_norm": 1.1}]
    recorded = _trace({**CUDA, "MLX_ENABLE_TF32": "1"}, steps)
    noisy = copy.deepcopy(steps)
    noisy[1]["grad_norm"] *= 1 + 5e-3  # TF32-sized
    # Under one TF32 setting 5e-3 is drift; the same numbers across settings are not.
    assert golden.compare(recorded, _trace({**CUDA, "MLX_ENABLE_TF32": "1"}, noisy))["kind"] == "golden-drift"
    assert golden.compare(recorded, _trace({**CUDA, "MLX_ENABLE_TF32": "0"}, noisy))["status"] == "pass"
    drifted = copy.deepcopy(steps)
    drifted[1]["grad_norm"] *= 1.05
    check = golden.compare(recorded, _trace({**CUDA, "MLX_ENABLE_TF32": "0"}, drifted))
    assert check["kind"] == "golden-drift" and "TF32" in check["detail"]


def test_the_environment_records_tf32_on_a_gpu(monkeypatch):
    monkeypatch.setattr(env_mod, "backend_name", lambda: "cuda")
    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    env_mod.environment.cache_clear()
    try:
        assert env_mod.environment()["MLX_ENABLE_TF32"] == "0"
        monkeypatch.setattr(env_mod, "backend_name", lambda: "cpu")
        env_mod.environment.cache_clear()
        assert "MLX_ENABLE_TF32" not in env_mod.environment()
    finally:
        env_mod.environment.cache_clear()


# -- runs longer or shorter than their golden -------------------------------------


def test_a_longer_run_is_held_to_the_steps_its_golden_has():
    steps = [{"step": k, "loss": 0.7 - k / 100} for k in (1, 2, 3)]
    recorded = _trace({"backend": "cpu"}, steps)
    longer = _trace({"backend": "cpu"}, copy.deepcopy(steps) + [{"step": 4, "loss": 0.1}])
    longer["case"]["settings"]["steps"] = 4
    check = golden.compare(recorded, longer)
    assert check["status"] == "pass" and "1 step(s) not checked: beyond the golden's 3" in check["detail"]
    longer["steps"][1]["loss"] += 1e-6
    assert golden.compare(recorded, longer)["detail"].startswith("step 2: loss expected")
    shorter = _trace({"backend": "cpu"}, steps[:2])
    check = golden.compare(recorded, shorter)
    assert check["status"] == "pass" and "the golden's last 1 step(s) not checked" in check["detail"]
    crashed = _trace({"backend": "cpu"}, steps[:2])
    crashed["case"]["settings"]["steps"] = 3  # asked for 3, got 2: still a difference
    assert golden.compare(recorded, crashed)["kind"] == "golden-drift"


def test_harness_run_with_more_steps_than_the_goldens(tmp_path):
    result, report = _run(tmp_path, "--scenario", "plain", "--trainer", "dpo", "--fixture", "tiny-llama",
                          "--steps", "4", "--strict")
    assert result.exit_code == 0, result.output
    assert "1 step(s) not checked: beyond the golden's 3" in _golden_check(report["cases"][0])["detail"]
    assert "golden: 1 step(s) of 1 case(s) not checked: more or fewer --steps than their goldens hold" \
        in result.output
    result, report = _run(tmp_path, "--scenario", "plain", "--target", f"{PLANTED_TARGETS}:LossConstant",
                          "--trainer", "dpo", "--fixture", "tiny-llama", "--steps", "4")
    assert result.exit_code == 1
    (case,) = report["cases"]
    # beta 0.12 is in the resolved configuration, so the case fails config first; the numbers drift as well,
    # within the golden's 3 steps.
    assert case["failure"]["kind"] == "config-drift"
    check = _golden_check(case)
    assert check["kind"] == "golden-drift" and check["detail"].startswith("step 1: "), check


# -- goldens recorded on another CPU --------------------------------------------


@pytest.fixture
def goldens_from_another_cpu(tmp_path):
    """The repository's goldens, as if recorded on a CPU model unlike any this test runs on."""
    root = tmp_path / "snapshots"
    shutil.copytree(SNAPSHOTS, root)
    for path in root.rglob("*--*.json"):
        trace = golden.read(path)
        trace["environment"]["device"] = "a CPU model this machine is not"
        path.write_text(golden.dumps(trace))
    return root


def test_verdicts_hold_against_goldens_from_another_cpu(tmp_path, goldens_from_another_cpu):
    if env_mod.environment()["backend"] != "cpu":
        pytest.skip("the CPU goldens hold CPU runs")
    result, report = _run(tmp_path, "--scenario", "plain", "--trainer", "dpo", "--trainer", "kto", "--fixture",
                          "tiny-llama", "--fixture", "tiny-linear-attn", "--strict", "--snapshots",
                          str(goldens_from_another_cpu))
    assert result.exit_code == 0, result.output
    assert len(report["cases"]) == 4
    for case in report["cases"]:
        assert "device a CPU model this machine is not -> " in _golden_check(case)["detail"]
    result, report = _run(tmp_path, "--scenario", "plain", "--target", f"{PLANTED_TARGETS}:LossConstant",
                          "--trainer", "dpo", "--fixture", "tiny-llama", "--snapshots", str(goldens_from_another_cpu))
    assert result.exit_code == 1
    (case,) = report["cases"]
    assert case["failure"]["kind"] == "config-drift"  # beta 0.12 is in the resolved configuration, checked first
    # The golden check itself: the drift is caught at the other-CPU tolerance, not waved through.
    check = _golden_check(case)
    assert check["kind"] == "golden-drift" and "rtol 1e-05, atol 1e-07" in check["detail"], check
    assert Path(report["cases"][0]["golden_path"]).is_relative_to(goldens_from_another_cpu)
