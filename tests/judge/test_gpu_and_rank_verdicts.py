"""Verdicts that depend on the backend or on other cases of the run, on hand-made traces: the GPU
tiers (measured on H200s, README "Goldens"), the data-parallel golden check, exact reward ties."""

from mlxth.harness.judge import checks, golden
from mlxth.harness.run import launch


def _settings(**kw):
    base = {"steps": 3, "batch_size": 4, "grad_accumulation_steps": 1, "ranks": 1, "dtype": "float32", "extra": {}}
    return {**base, **kw}


def _steps(*grad_norms, acc=0.5):
    return [{"step": i + 1, "loss": 0.69, "grad_norm": g, "rewards/accuracies": acc} for i, g in enumerate(grad_norms)]


def _rank_result(backend, steps):
    return {"case": {"trainer": "dpo", "settings": _settings(batch_size=2, ranks=2)}, "steps": steps,
            "environment": {"backend": backend}}


def test_on_a_gpu_a_data_parallel_case_is_held_to_step_1_and_not_to_accuracies():
    trace = {"settings": _settings(), "steps": _steps(1.0, 1.0, 1.0)}
    parted = _steps(1.0002, 1.05, 1.2, acc=1.0)  # step 1 within rounding; later steps part, as measured
    assert golden.data_parallel_check(trace, _rank_result("cuda", parted))["status"] == "pass"
    # the same trace on the CPU, where the members agree to 4e-7, is a drift at step 1
    cpu = golden.data_parallel_check(trace, _rank_result("cpu", parted))
    assert cpu["status"] == "fail" and cpu["kind"] == "equivalence-drift" and "step 1" in cpu["detail"]
    # a data-parallel fault shows at step 1 on the GPU too (an unscaled share: half the gradient)
    halved = golden.data_parallel_check(trace, _rank_result("cuda", _steps(0.5, 0.5, 0.5)))
    assert halved["status"] == "fail" and "step 1: grad_norm" in halved["detail"]


def test_bf16_on_a_gpu_has_its_measured_tier_and_does_not_hold_accuracies():
    env_gpu = {"backend": "cuda", "device": "NVIDIA H200", "mlx": "0.32.4", "mlx-lm": "0.32.2"}
    env_cpu = {**env_gpu, "backend": "cpu", "device": "cpu"}
    assert golden.tolerance(env_gpu, env_gpu, "bfloat16")[:2] == (5e-2, 5e-3)
    assert golden.tolerance(env_cpu, env_cpu, "bfloat16")[:2] == (2e-2, 1e-3)
    trace = {"environment": env_gpu, "steps": _steps(3.03, acc=0.5)}
    result = {"case": {"settings": _settings(dtype="bfloat16", steps=1)}, "environment": env_gpu,
              "steps": _steps(2.953, acc=0.25)}  # the largest spread measured over 5 runs
    assert golden.compare(trace, result)["status"] == "pass"
    result["steps"] = _steps(2.5, acc=0.5)  # 17% off: beyond the tier
    assert golden.compare(trace, result)["kind"] == "golden-drift"


def _case_result(ranks, kind, path="g.json"):
    check = {"name": "golden", "status": "fail" if kind else "pass", "kind": kind, "detail": "d"}
    return {"id": f"c{ranks}", "case": {"settings": _settings(ranks=ranks)}, "checks": [check], "error": None,
            "steps": [], "golden_path": path}


def test_a_data_parallel_drift_is_golden_drift_when_its_one_process_case_drifted_from_the_same_golden():
    single, dp = _case_result(1, "golden-drift"), _case_result(2, "equivalence-drift")
    golden.golden_moved([single, dp])
    assert dp["failure"]["kind"] == "golden-drift" and "the golden moved" in dp["failure"]["message"]
    # with the one-process case on its golden, the data parallelism is what drifted
    single, dp = _case_result(1, None), _case_result(2, "equivalence-drift")
    golden.golden_moved([single, dp])
    assert dp["checks"][0]["kind"] == "equivalence-drift"
    # another golden's drift says nothing about this one
    single, dp = _case_result(1, "golden-drift", "other.json"), _case_result(2, "equivalence-drift")
    golden.golden_moved([single, dp])
    assert dp["checks"][0]["kind"] == "equivalence-drift"


def test_exact_reward_ties_hold_accuracies_at_zero_near_ties_are_left_out():
    tol = {"recompute_rtol": 1e-4, "recompute_atol": 1e-5}
    recomputed = [{"step": 1, "loss": 0.6931, "metrics": {"rewards/chosen": 0.0, "rewards/rejected": 0.0}}]
    tied = [{"step": 1, "loss": 0.6931, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/accuracies": 1.0}]
    metric = checks.recompute(recomputed, None, tied, tol)[1]
    assert metric["kind"] == "metric-mismatch" and "rewards/accuracies reported 1.0" in metric["detail"]
    tied[0]["rewards/accuracies"] = 0.0
    assert checks.recompute(recomputed, None, tied, tol)[1]["status"] == "pass"
    # rewards of rounding size (the reference took another kernel): no stable answer, not held
    near = [{**tied[0], "rewards/chosen": 1e-9, "rewards/accuracies": 1.0}]
    recomputed[0]["metrics"]["rewards/chosen"] = 1e-9
    assert checks.recompute(recomputed, None, near, tol)[1]["status"] == "pass"


def test_nccl_only_with_a_gpu_per_rank(monkeypatch):
    monkeypatch.delenv(launch.LAUNCH_BACKEND_ENV, raising=False)
    monkeypatch.setattr(launch.mx.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launch.mx, "device_count", lambda kind: 1)
    assert launch.default_backend(2) == "ring"  # NCCL refuses two ranks on one GPU
    monkeypatch.setattr(launch.mx, "device_count", lambda kind: 2)
    assert launch.default_backend(2) == "nccl"
    monkeypatch.setattr(launch.mx.cuda, "is_available", lambda: False)
    assert launch.default_backend(2) == "ring"
    monkeypatch.setenv(launch.LAUNCH_BACKEND_ENV, "nccl")
    assert launch.default_backend(2) == "nccl"


def _tf32_env(on: bool):
    return {"backend": "cuda", "device": "NVIDIA H200", "mlx": "0.32.4", "mlx-lm": "0.32.2",
            "MLX_ENABLE_TF32": "1" if on else "0"}


def _fp32_result(trainer, env, steps):
    return {"case": {"trainer": trainer, "settings": _settings(steps=len(steps))}, "environment": env, "steps": steps}


def test_tf32_off_against_a_tf32_golden_holds_what_tf32_cannot_move():
    """Measured on an H200 (TF32 off against TF32-on goldens): DPO tiny-linear-attn's accuracies 0.75 -> 0.0
    at step 1, DPO tiny-warm's margins 0.02466 -> 0.02242 at step 2; both within what TF32 moves."""
    on, off = _tf32_env(True), _tf32_env(False)
    want = [{"step": 1, "loss": 0.6931, "rewards/accuracies": 0.75, "rewards/margins": 0.0},
            {"step": 2, "loss": 0.6805, "rewards/accuracies": 1.0, "rewards/margins": 0.02466384321451187}]
    got = [{**want[0], "rewards/accuracies": 0.0}, {**want[1], "rewards/margins": 0.022419355809688568}]
    trace = {"environment": on, "steps": want}
    assert golden.compare(trace, _fp32_result("dpo", off, got))["status"] == "pass"
    # under the golden's own setting the same numbers are a drift (accuracies are held there)
    same = golden.compare(trace, _fp32_result("dpo", on, got))
    assert same["kind"] == "golden-drift" and "rewards/accuracies" in same["detail"]
    # a real change is still caught across the TF32 settings: the loss 3% off at step 2
    moved = [got[0], {**got[1], "loss": 0.6805 * 1.03}]
    drift = golden.compare(trace, _fp32_result("dpo", off, moved))
    assert drift["kind"] == "golden-drift" and "step 2: loss" in drift["detail"] and "TF32" in drift["detail"]


def test_a_sampling_trainer_is_not_held_to_a_golden_of_the_other_tf32_setting():
    """GRPO on tiny-qwen35, H200, TF32 off against its TF32-on golden: grad_norm 3.71 vs 9.92 at step 1
    (other completions drawn).  That is reported as a golden that cannot hold the run, not as drift."""
    on, off = _tf32_env(True), _tf32_env(False)
    trace = {"environment": on, "steps": [{"step": 1, "loss": 0.0, "grad_norm": 9.920611381530762}]}
    run = [{"step": 1, "loss": 0.0, "grad_norm": 3.7094497680664062}]
    check = golden.compare(trace, _fp32_result("grpo", off, run))
    assert check["status"] == "skip" and "TF32" in check["detail"] and "--update-snapshots" in check["detail"]
    # under the golden's setting it is held, and this is a drift
    assert golden.compare(trace, _fp32_result("grpo", on, run))["kind"] == "golden-drift"
    # the other trainers are held across the settings
    assert golden.compare(trace, _fp32_result("dpo", off, run))["kind"] == "golden-drift"
