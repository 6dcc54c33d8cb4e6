"""`harness run --ranks K`: cases on K data-parallel ranks through mlx.launch, and how ranks are judged."""

import json
from dataclasses import replace
from pathlib import Path

from click.testing import CliRunner

from mlxth.harness.run import launch, ranks
from mlxth.harness.model import Case, case_settings
from mlxth.harness.cli import main
from support import PLANTED_DISTRIBUTED

PLANTED = str(PLANTED_DISTRIBUTED)


def _run(tmp_path, *args):
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["run", "--reports", str(reports), *args], catch_exceptions=False)
    runs = sorted(reports.glob("*/report.json"))
    return result, (json.loads(runs[-1].read_text()) if runs else None)


def test_two_ranks_match_the_single_process_goldens(tmp_path):
    result, report = _run(tmp_path, "--ranks", "2", "--trainer", "dpo", "--trainer", "kto", "--fixture",
                          "tiny-llama", "--variant", "fp32", "--strict")
    assert result.exit_code == 0, result.output
    assert "2 case(s) of 2 ranks, " in result.output
    for case in report["cases"]:
        assert case["id"].endswith("/fp32/2ranks") and case["status"] == "pass"
        assert case["case"]["settings"]["batch_size"] == 2 and case["case"]["settings"]["ranks"] == 2
        checks = {c["name"]: c for c in case["checks"]}
        assert list(checks)[:2] == ["completes", "ranks-agree"]
        assert checks["ranks-agree"]["detail"] == "2 ranks ended with identical weights (20 tensors)"
        assert "match the golden 'batch 4' (equivalence tolerance" in checks["golden"]["detail"]
        assert checks["loss-recompute"]["status"] == "pass" and checks["reproducible"]["status"] == "pass"


def test_grpo_over_two_ranks_is_recomputed_from_every_ranks_completions(tmp_path):
    """Each rank samples its shard's groups; the reported metrics are the whole batch's, so the oracle must
    see every rank's completions (it saw rank 0's alone once: reward 0.0234 reported, 0.03125 recomputed)."""
    result, report = _run(tmp_path, "--ranks", "2", "--trainer", "grpo", "--fixture", "tiny-llama", "--variant",
                          "fp32", "--scenario", "plain", "--steps", "2")
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in report["cases"][0]["checks"]}
    assert checks["metric-recompute"]["status"] == "pass" and checks["loss-recompute"]["status"] == "pass"
    assert checks["ranks-agree"]["status"] == "pass"


def test_a_rank_killed_by_a_signal_is_that_cases_rank_crash(tmp_path):
    result, report = _run(tmp_path, "--ranks", "2", "--trainer", "simpo", "--fixture", "tiny-llama",
                          "--target", f"{PLANTED}:RankAborts", "--timeout", "120")
    assert result.exit_code == 1
    case = report["cases"][0]
    assert case["status"] == "error" and case["failure"]["kind"] == "rank-crash"
    assert "rank 1 died in step 2 (killed by SIGABRT)" in case["failure"]["message"]
    assert [r["steps_done"] for r in case["ranks"]] == [1, 1]


def test_ranks_usage_errors_exit_2(tmp_path):
    result, _ = _run(tmp_path, "--ranks", "2", "--update-snapshots", "--trainer", "dpo")
    assert result.exit_code == 2 and "single-process goldens" in result.output
    result, _ = _run(tmp_path, "--ranks", "3", "--trainer", "dpo", "--fixture", "tiny-llama")
    assert result.exit_code == 2 and "a batch of 4 cannot be split over 3 ranks" in result.output


def test_list_shows_the_equivalence_classes_and_tolerances():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    assert "split-4-2: batch 4 == batch 2 x accumulation 2 == 2 ranks x batch 2" in result.output
    assert "tolerance, every trainer: rtol 2e-05, atol 5e-06, weights 0.01 x the largest update" in result.output


def test_the_launch_is_mlx_launch_with_the_ring_backend_on_localhost(tmp_path, monkeypatch):
    monkeypatch.delenv(launch.LAUNCH_HOSTS_ENV, raising=False)
    cmd = launch.launch_command(tmp_path / "case.json", tmp_path, "check", 2, "ring", 40000)
    # the console script installed with mlx, or (an install without scripts) the module it runs
    assert Path(cmd[0]).name == "mlx.launch" or "from mlx._distributed_utils.launch import main" in cmd[2]
    assert cmd[cmd.index("--backend") + 1] == "ring" and cmd[cmd.index("-n") + 1] == "2"
    assert cmd[cmd.index("--starting-port") + 1] == "40000"
    assert cmd[cmd.index("--") + 1:][1:5] == ["-m", "mlxth.harness.torchless", "mlxth.harness.run.worker",
                                              str(tmp_path / "case.json")]
    spanning = launch.launch_command(tmp_path / "case.json", tmp_path, "check", 4, "ring", 40000,
                                          hosts="10.0.0.1,10.0.0.2")
    assert spanning[spanning.index("--hosts") + 1] == "10.0.0.1,10.0.0.2"
    assert spanning[spanning.index("-n") + 1] == "2"


# ---------------------------------------------------------------------------
# Judging the ranks from their files (no processes).
# ---------------------------------------------------------------------------


def _case(ranks=2):
    return Case("reference", "dpo", "tiny-llama", "fp32", replace(case_settings("dpo", "fp32", 3), ranks=ranks))


def _rank_files(outdir, rank, steps, info=None):
    (outdir / f"rank{rank}.started").write_text("1")
    (outdir / f"rank{rank}.steps").write_text("".join(f"{k}\n" for k in range(1, steps + 1)))
    if info is not None:
        (outdir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, **info}))


def _ok(fingerprint):
    return {"status": "ok", "error": None, "steps": 3, "fingerprint": fingerprint}


def _result(case, error=None):
    return {"case": case.to_dict(), "id": case.id, "environment": {}, "steps": [{"step": 1, "loss": 0.69}],
            "checks": [{"name": "completes", "status": "pass" if error is None else "fail", "detail": "",
                        "kind": None if error is None else error["kind"]}], "error": error, "duration_s": 1.0}


def test_judge_blames_the_rank_that_died_not_the_ones_it_took_down(tmp_path):
    error = {"kind": "exception", "message": "RuntimeError: [ring] Socket 4 was closed by the peer", "step": 2}
    _rank_files(tmp_path, 0, 1, {"status": "error", "error": error, "steps": 1, "fingerprint": {}})
    (tmp_path / "result.json").write_text(json.dumps(_result(_case(), error)))
    _rank_files(tmp_path, 1, 1)
    log = "[WARN] Node with rank 1 exited with code 1\n[WARN] Node with rank 0 exited with code 3\n"
    result = ranks.judge(_case(), tmp_path, log, False, 3.0, 60)
    assert result["failure"]["kind"] == "rank-crash"
    assert result["failure"]["message"].startswith("rank 1 died in step 2 (exited with status 1)")


def test_judge_blames_the_rank_that_raised_not_the_one_the_launcher_stopped(tmp_path):
    error = {"kind": "non-finite", "message": "NonFiniteError: dpo: step 2: non-finite loss (nan)", "step": 2}
    _rank_files(tmp_path, 0, 1)
    _rank_files(tmp_path, 1, 1, {"status": "error", "error": error, "steps": 1, "fingerprint": {}})
    log = "[WARN] Node with rank 1 exited with code 3\n[WARN] Node with rank 0 exited with code -15\n"
    result = ranks.judge(_case(), tmp_path, log, False, 3.0, 60)
    assert result["failure"]["kind"] == "non-finite"
    assert result["failure"]["message"].startswith("rank 1: NonFiniteError")


def test_judge_checks_that_the_ranks_agree(tmp_path):
    case = _case()
    (tmp_path / "result.json").write_text(json.dumps(_result(case)))
    _rank_files(tmp_path, 0, 3, _ok({"w": "aa", "b": "bb"}))
    _rank_files(tmp_path, 1, 3, _ok({"w": "aa", "b": "cc"}))
    result = ranks.judge(case, tmp_path, "", False, 3.0, 60)
    assert result["failure"]["kind"] == "rank-divergence"
    assert result["failure"]["message"] == "rank 1's final weights differ from rank 0's in 1 of 2 tensors (first: b)"
    _rank_files(tmp_path, 1, 3, _ok({"w": "aa", "b": "bb"}))
    assert ranks.judge(case, tmp_path, "", False, 3.0, 60)["status"] == "pass"


def test_judge_names_where_each_rank_was_when_the_run_timed_out(tmp_path):
    _rank_files(tmp_path, 0, 4)  # step 1 of the rerun done
    result = ranks.judge(_case(), tmp_path, "", True, 60.0, 60)
    assert result["failure"]["kind"] == "timeout"
    assert result["failure"]["message"] == ("no result after 60 s (killed); rank 0 stuck in step 2 of the rerun, "
                                            "rank 1 never started")


def test_ranks_for_a_target_that_does_not_train_data_parallel_is_refused(tmp_path):
    (tmp_path / "single.py").write_text("from mlxth.harness.adapters.reference import ReferenceTarget\n\n\n"
                                        "class Single(ReferenceTarget):\n    name = 'single'\n"
                                        "    data_parallel = False\n")
    result, report = _run(tmp_path, "--ranks", "2", "--target", f"{tmp_path / 'single.py'}:Single", "--trainer",
                          "kto", "--fixture", "tiny-llama", "--scenario", "plain")
    assert result.exit_code == 2 and report is None
    assert "--ranks 2: target single does not train data-parallel" in result.output
