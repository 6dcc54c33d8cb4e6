"""The mlx-tune and mlx-lm-lora target adapters, on the tiny-llama fixture.

Each adapter runs through the harness worker (every check of ``harness run``)
and the outcomes asserted are the libraries' real ones on their pinned
releases (mlx-tune 0.6.0, mlx-lm-lora 5.10.2, CPU backend): a failing check is
a finding about the library, not a test failure.  Tests of a library that is
not installed are skipped (``pip install -e '.[mlx-tune,mlx-lm-lora]'``).
"""

import json
import math
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("greenlet")

from mlxth.harness import conformance  # noqa: E402
from mlxth.harness.cli import main  # noqa: E402
from mlxth.harness.conformance import probes  # noqa: E402
from mlxth.harness.adapters import StepLoop, resolve_hyperparameters  # noqa: E402
from mlxth.harness.run.worker import classify_exception  # noqa: E402
from mlxth.harness.target import UnsupportedSetting  # noqa: E402
from mlxth.harness.model import Case, case_settings  # noqa: E402
from mlxth.harness.target import Settings, load_target  # noqa: E402
from support import SNAPSHOTS  # noqa: E402
from mlxth.harness.conformance.session import _settings  # noqa: E402
from mlxth.harness.run.worker import run_case  # noqa: E402


@pytest.fixture
def mlx_tune():
    pytest.importorskip("mlx_tune")
    return "mlx-tune"


@pytest.fixture
def mlx_lm_lora():
    pytest.importorskip("mlx_lm_lora")
    return "mlx-lm-lora"


def _case(target, trainer, steps=3, **extra):
    settings = case_settings(trainer, "fp32", steps)
    settings.extra.update(extra)
    return run_case(Case(target, trainer, "tiny-llama", "fp32", settings, target))


def _checks(result):
    return {c["name"]: c["status"] for c in result["checks"]}


# -- the shared machinery -----------------------------------------------------


def test_step_loop_hands_out_steps_and_the_library_error():
    def body():
        for k in range(3):
            print(f"library says {k}")
            loop.pause({"loss": float(k)})
        raise KeyError("at the end")

    loop = StepLoop(body)
    stdout = sys.stdout
    assert loop.next() == {"loss": 0.0}
    assert sys.stdout is stdout  # the router is only in place while the library runs
    assert loop.next() == {"loss": 1.0}
    assert loop.next() == {"loss": 2.0}
    with pytest.raises(KeyError, match="at the end"):
        loop.finish()
    assert "library says 2\n" in "".join(loop.output)


def test_a_standard_value_the_library_cannot_take_is_refused():
    offered, fixed = {"beta": "beta", "loss_type": "loss_type"}, {"label_smoothing": 0.0}
    hp, fields_, _ = resolve_hyperparameters("lib", "dpo", Settings(extra={"beta": 0.3}), offered, fixed)
    assert hp == {"beta": 0.3, "loss_type": "sigmoid", "label_smoothing": 0.0}
    assert fields_ == {"beta": 0.3, "loss_type": "sigmoid"}
    with pytest.raises(UnsupportedSetting, match="label_smoothing"):
        resolve_hyperparameters("lib", "dpo", Settings(extra={"label_smoothing": 0.1}), offered, fixed)
    # every setting the library lacks is named at once, with what it does instead where that is known
    with pytest.raises(UnsupportedSetting) as err:
        resolve_hyperparameters("lib", "grpo", Settings(extra={"epsilon": 0.05, "num_iterations": 2}),
                                {"beta": "beta"}, {"num_iterations": 1})
    assert str(err.value) == ("lib grpo has no setting for epsilon=0.05, num_iterations=2 "
                              "(its behaviour is num_iterations=1)")


def test_a_setting_the_library_lacks_is_its_own_kind_of_case_failure():
    assert classify_exception(UnsupportedSetting("lib grpo has no setting for epsilon=0.05")) == "unsupported-setting"
    assert classify_exception(ValueError("anything else")) == "exception"


def test_both_adapters_are_registered_targets(mlx_tune, mlx_lm_lora):
    assert load_target(mlx_tune).trainers() == ("dpo", "orpo", "kto", "simpo", "grpo")
    assert load_target(mlx_lm_lora).trainers() == ("dpo", "orpo", "grpo")


def test_expected_findings_file_is_well_formed():
    entries = conformance.load_expected(SNAPSHOTS / "expected_findings.json")
    assert entries, "snapshots/expected_findings.json lists no findings"
    for e in entries:
        assert {"library", "trainer", "probe", "signature", "statement"} <= set(e)
    keys = [(e["library"], e["trainer"], e["probe"], e["signature"]) for e in entries]
    assert len(keys) == len(set(keys))


# -- mlx-tune -----------------------------------------------------------------


def test_mlx_tune_dpo_runs_every_check_and_misses_the_eos_token(mlx_tune):
    result = _case(mlx_tune, "dpo")
    checks = _checks(result)
    # It calls model.train(), its steps are reproducible, its first loss is ln 2 ...
    assert checks == {"completes": "pass", "training-mode": "pass", "finite": "pass", "updates": "pass",
                      "loss-recompute": "fail", "metric-recompute": "skip", "gradient": "fail",
                      "analytic": "pass", "reproducible": "pass"}
    assert result["failure"]["kind"] == "loss-mismatch"
    # It reports the loss alone: no metric to recompute.  Its first update follows the gradient of a loss
    # without the EOS tokens (the same finding), not the standard loss's.
    skipped = next(c for c in result["checks"] if c["name"] == "metric-recompute")
    assert skipped["reason"] == "the target reports none of the standard metrics"
    assert next(c for c in result["checks"] if c["name"] == "gradient")["kind"] == "gradient-mismatch"
    assert abs(result["steps"][0]["loss"] - math.log(2)) < 1e-6
    # ... but at step 2 it scores completions without their EOS token (the conformance probe names it).
    finding, evidence = probes.probe_loss_agreement(
        load_target(mlx_tune), "dpo", "tiny-llama", _settings("dpo", 2), 4)
    assert finding[0] == "scope=completion"
    assert abs(evidence["steps"][1]["reported"] - evidence["steps"][1]["reproduced"]) < 1e-6


def test_mlx_tune_kto_reports_ln2_where_kto_is_one_half(mlx_tune):
    result = _case(mlx_tune, "kto", steps=2)
    # The loss recompute comes first (checks.ORDER) and says it at step 1; the closed form says it too.
    assert result["failure"]["kind"] == "loss-mismatch"
    assert result["failure"]["message"].startswith("step 1: reported loss 0.693147")
    assert "standard formula 0.5 " in result["failure"]["message"]
    analytic = next(c for c in result["checks"] if c["name"] == "analytic")
    assert analytic["kind"] == "analytic-mismatch" and "expected 0.5" in analytic["detail"]
    assert [round(s["loss"], 6) for s in result["steps"]] == [0.693147, 0.693147]
    assert _checks(result)["updates"] == "pass"


def test_mlx_tune_simpo_diagnosis_names_the_terms(mlx_tune):
    finding, _ = probes.probe_loss_agreement(
        load_target(mlx_tune), "simpo", "tiny-llama", _settings("simpo", 2), 4)
    assert finding[0] == "scope=sequence+denominator=seqlen+margin=minus-beta-gamma"


# -- mlx-lm-lora --------------------------------------------------------------


def test_mlx_lm_lora_dpo_does_not_start_on_the_cpu_backend(mlx_lm_lora):
    result = _case(mlx_lm_lora, "dpo", steps=2)
    assert result["status"] == "error"
    assert result["failure"]["kind"] == "exception"
    assert result["failure"]["message"] == "KeyError: 'max_recommended_working_set_size'"


def test_mlx_lm_lora_dpo_with_the_device_info_shim_passes_every_check(mlx_lm_lora):
    result = _case(mlx_lm_lora, "dpo", cpu_device_info_shim=True)
    assert result["status"] == "pass", json.dumps(result["checks"], indent=1)
    assert _checks(result)["loss-recompute"] == "pass"


def test_mlx_lm_lora_grpo_passes_every_check(mlx_lm_lora):
    result = _case(mlx_lm_lora, "grpo")
    assert result["status"] == "pass", json.dumps(result["checks"], indent=1)
    assert _checks(result)["training-mode"] == "pass"
    # The library samples inside its own loop: the adapter cannot say which prompts and completions a step
    # used, so the checks recomputed from them are skipped (not failed, and not an exception); the rest pass.
    why = "the target does not say which prompts and completions a step used (rows_for_step, completions)"
    assert {c["name"]: c.get("reason") for c in result["checks"] if c["status"] == "skip"} == \
        {"loss-recompute": why, "metric-recompute": why, "gradient": why}
    assert {n for n, status in _checks(result).items() if status == "pass"} == \
        {"completes", "training-mode", "finite", "updates", "analytic", "reproducible"}
    assert abs(result["steps"][0]["loss"]) < 1e-6


def test_mlx_lm_lora_dpo_loss_type_in_its_args_changes_nothing(mlx_lm_lora):
    base = _settings("dpo", 2, extra={"cpu_device_info_shim": True})
    out = probes.probe_dead_config(load_target(mlx_lm_lora), "dpo", "tiny-llama", base,
                                        [("beta", 0.5), ("loss_type", "hinge")])
    (_, _, beta, _), (_, _, hinge, evidence) = out
    assert beta is None
    assert hinge[0] == "loss_type=hinge"
    assert evidence["baseline_losses"] == evidence["varied_losses"]


def test_output_held_by_the_library_across_steps_stays_routed(capsys):
    def body():
        held = sys.stderr  # as tqdm keeps the stream it was created with
        for k in range(2):
            held.write(f"progress {k}\n")
            loop.pause({"loss": 0.0})

    loop = StepLoop(body)
    loop.next()
    loop.next()
    loop.finish()
    assert capsys.readouterr().err == ""
    assert "".join(loop.output) == "progress 0\nprogress 1\n"


def test_conformance_cli_fails_on_unlisted_findings_and_the_checked_in_list_covers_them(
        mlx_lm_lora, tmp_path):
    real = conformance.load_expected(SNAPSHOTS / "expected_findings.json")
    empty = tmp_path / "snapshots"
    empty.mkdir()
    (empty / "expected_findings.json").write_text(json.dumps({"findings": []}))
    result = CliRunner().invoke(main, ["conformance", "--target", mlx_lm_lora, "--trainer", "orpo", "--fixture",
                                       "tiny-llama", "--snapshots", str(empty), "--reports", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output
    report = json.loads(next((tmp_path / "r").glob("*/conformance.json")).read_text())
    findings = [o for o in report["outcomes"] if o["status"] == "unexpected"]
    assert {(f["probe"], f["signature"]) for f in findings} == {
        ("runs", "KeyError: 'max_recommended_working_set_size'"),
        ("loss-agreement", "batch4:nll=sequence-mean"),
        ("batch-consistency", "batch-dependence"),
        ("dead-config", "reward_scaling=2.0"),
    }
    assert all(conformance._is_expected(f, real) for f in findings)
    assert "mlx-lm-lora 5.10.2: 4 unexpected" in result.output
