"""What the scenarios and the new checks catch: each planted fault turns red with the kind that names it,
and the plain cases (the trainers' defaults) show why the scenarios are needed.

No golden is used (an empty snapshot folder): none of these catches may depend on one."""

import json

from click.testing import CliRunner

from mlxth.harness.cli import main
from support import PLANTED_TARGETS

PLANTED = str(PLANTED_TARGETS)


def _run(tmp_path, target, *args, snapshots=None):
    reports = tmp_path / "reports"
    if snapshots is None:
        snapshots = tmp_path / "no-goldens"
        snapshots.mkdir(exist_ok=True)
    argv = ["run", "--reports", str(reports), "--snapshots", str(snapshots), *args]
    if target:
        argv += ["--target", f"{PLANTED}:{target}"]
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    runs = sorted(reports.glob("*/report.json"))
    return result, {c["id"].split("/", 1)[1]: c for c in json.loads(runs[-1].read_text())["cases"]} if runs else {}


def _check(case, name):
    return next(c for c in case["checks"] if c["name"] == name)


def test_an_ignored_label_smoothing_is_a_loss_mismatch_and_a_dead_knob(tmp_path):
    result, cases = _run(tmp_path, "IgnoresLabelSmoothing", "--trainer", "dpo", "--fixture", "tiny-warm",
                         "--scenario", "plain", "--scenario", "smoothed")
    assert result.exit_code == 1
    assert cases["dpo/tiny-warm/fp32"]["status"] == "pass"  # the default (0) hides it
    smoothed = cases["dpo/tiny-warm/fp32/smoothed"]
    assert smoothed["failure"]["kind"] == "loss-mismatch"
    dead = _check(smoothed, "dead-knob")
    assert dead["status"] == "fail" and "label_smoothing=0.0 changed nothing" in dead["detail"]


def test_a_grpo_without_ratio_clip_or_kl_is_red_on_every_hard_scenario(tmp_path):
    result, cases = _run(tmp_path, "NoClipNoKL", "--trainer", "grpo", "--fixture", "tiny-warm",
                         "--scenario", "plain", "--scenario", "dapo", "--scenario", "grpo")
    assert result.exit_code == 1
    assert cases["grpo/tiny-warm/fp32"]["status"] == "pass"  # beta 0, one iteration: nothing to see
    for name in ("dapo", "grpo"):
        case = cases[f"grpo/tiny-warm/fp32/{name}"]
        assert case["failure"]["kind"] == "loss-mismatch", case["failure"]
        coverage = _check(case, "coverage")
        assert coverage["status"] == "fail" and "clip_ratio/region_mean was 0 at every step" in coverage["detail"]
    dead = _check(cases["grpo/tiny-warm/fp32/dapo"], "dead-knob")
    assert dead["status"] == "fail" and "beta=0.0" in dead["detail"] and "epsilon=0.2" in dead["detail"]


def test_a_reference_that_is_the_policy_is_named_before_any_step(tmp_path):
    result, cases = _run(tmp_path, "ReferenceIsPolicy", "--trainer", "dpo", "--fixture", "tiny-llama",
                         "--scenario", "plain")
    case = cases["dpo/tiny-llama/fp32"]
    assert result.exit_code == 1 and case["failure"]["kind"] == "preflight"
    assert "the reference model is the policy itself" in case["failure"]["message"]
    assert case["steps"] == []


def test_a_policy_with_nothing_trainable_is_a_preflight_failure(tmp_path):
    result, cases = _run(tmp_path, "NothingTrainable", "--trainer", "simpo", "--fixture", "tiny-llama",
                         "--scenario", "plain")
    case = cases["simpo/tiny-llama/fp32"]
    assert case["failure"]["kind"] == "preflight" and "nothing trainable" in case["failure"]["message"]


def test_lora_whose_base_is_not_frozen_changes_frozen_weights(tmp_path):
    result, cases = _run(tmp_path, "LoraBaseNotFrozen", "--trainer", "orpo", "--fixture", "tiny-llama",
                         "--variant", "lora")
    case = cases["orpo/tiny-llama/lora"]
    assert case["failure"]["kind"] == "frozen-changed", case["failure"]
    assert "frozen weights changed" in case["failure"]["message"]
    result, cases = _run(tmp_path, None, "--trainer", "orpo", "--fixture", "tiny-llama", "--variant", "lora")
    assert cases["orpo/tiny-llama/lora"]["status"] == "pass"


def test_an_accumulation_that_drops_gradients_is_equivalence_drift_in_the_default_run(tmp_path):
    result, cases = _run(tmp_path, "AccumulationKeepsLast", "--trainer", "kto", "--fixture", "tiny-llama")
    assert result.exit_code == 1
    assert cases["kto/tiny-llama/fp32"]["status"] == "pass"  # batch 4 in one micro-batch: nothing to drop
    case = cases["kto/tiny-llama/fp32/accumulation"]
    assert case["failure"]["kind"] == "equivalence-drift", case["failure"]
    assert "batch 2 x accumulation 2" in case["failure"]["message"] and "batch 4" in case["failure"]["message"]
    assert _check(case, "gradient")["status"] == "fail"  # the step's gradient is not the standard one either


def test_a_logged_metric_off_its_definition_is_a_metric_mismatch(tmp_path):
    result, cases = _run(tmp_path, "RewardsWithoutBeta", "--trainer", "simpo", "--fixture", "tiny-warm",
                         "--scenario", "plain")
    case = cases["simpo/tiny-warm/fp32"]
    assert case["failure"]["kind"] == "metric-mismatch"
    assert case["failure"]["message"].startswith("step 1: rewards/chosen reported")


def test_a_changed_default_is_config_drift_naming_the_field_and_update_says_what_moved(tmp_path):
    snaps = tmp_path / "snaps"
    args = ("--trainer", "dpo", "--fixture", "tiny-llama", "--scenario", "plain")
    result, _ = _run(tmp_path, None, *args, "--update-snapshots", snapshots=snaps)
    golden = snaps / "cpu" / "reference" / "dpo" / "tiny-llama--fp32.json"
    assert result.exit_code == 0 and "1 written, 0 unchanged" in result.output
    assert json.loads(golden.read_text())["config"]["beta"] == 0.1
    stamp = golden.stat().st_mtime_ns
    result, _ = _run(tmp_path, None, *args, "--update-snapshots", snapshots=snaps)
    assert "0 written, 1 unchanged" in result.output and golden.stat().st_mtime_ns == stamp
    result, cases = _run(tmp_path, "LossConstant", *args, snapshots=snaps)
    failure = cases["dpo/tiny-llama/fp32"]["failure"]
    assert failure["kind"] == "config-drift" and failure["message"] == "beta: golden 0.1, now 0.12"
    result, _ = _run(tmp_path, "LossConstant", *args, "--update-snapshots", snapshots=snaps)
    assert "rewritten" in result.output and "config beta: golden 0.1, now 0.12" in result.output


def test_a_gradient_of_rounding_noise_is_a_gradient_mismatch(tmp_path):
    result, cases = _run(tmp_path, "GradientOfNoise", "--trainer", "dpo", "--fixture", "tiny-llama",
                         "--scenario", "plain")
    case = cases["dpo/tiny-llama/fp32"]
    assert _check(case, "loss-recompute")["status"] == "pass"  # the value is exactly right
    assert case["failure"]["kind"] == "gradient-mismatch", case["failure"]
    assert "grad_norm reported" in case["failure"]["message"]
