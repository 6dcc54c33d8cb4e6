"""`harness triage`: the right diagnosis for three planted causes."""


from click.testing import CliRunner

from mlxth.harness.cli import main
from support import PLANTED_TARGETS

PLANTED = str(PLANTED_TARGETS)


def _triage(*args):
    return CliRunner().invoke(main, ["triage", *args], catch_exceptions=False)


def _flips(output):
    return [line.split()[0] for line in output.splitlines() if " FLIPS " in line]


def test_missing_model_train_is_diagnosed():
    result = _triage("--target", f"{PLANTED}:SkipTrain", "--trainer", "dpo", "--fixture", "tiny-linear-attn")
    assert result.exit_code == 0, result.output
    assert "fails with vjp-missing" in result.output
    assert _flips(result.output) == ["force-train"]
    assert "disappears when the model is put in training mode before the gradient" in result.output
    assert "must call model.train() before value_and_grad (and again after generation, for GRPO)" in result.output


def test_a_failure_that_hides_another_is_cleared_not_flipped():
    """Training mode forced, the crash goes and the second fault shows: the rung clears the failure, and the
    diagnosis names it first (it leaves none of the original failures), then the kernel rung."""
    result = _triage("--target", f"{PLANTED}:SkipTrainNoUpdate", "--trainer", "dpo", "--fixture", "tiny-linear-attn")
    assert result.exit_code == 0, result.output
    assert _flips(result.output) == []
    assert [line.split()[0] for line in result.output.splitlines() if " CLEARS " in line] == \
        ["force-train", "kernel-off"]
    assert "Cleared by: force-train, kernel-off" in result.output
    assert "force-train: The failure disappears when the model is put in training mode" in result.output
    # With no update the first step also moves no weight against the standard gradient: gradient-mismatch.
    assert "then visible: gradient (gradient-mismatch), updates (no-update)" in result.output
    assert "kernel-off: The failure disappears without the fused inference kernel" in result.output
    assert "still failing: training-mode (train-mode)" in result.output


def test_compile_only_numerical_difference_is_diagnosed(tmp_path):
    snaps = str(tmp_path / "snaps")
    recorded = CliRunner().invoke(main, ["run", "--trainer", "dpo", "--fixture", "tiny-llama", "--variant", "compiled",
                                         "--update-snapshots", "--snapshots", snaps, "--reports", str(tmp_path)])
    assert recorded.exit_code == 0, recorded.output
    result = _triage("--target", f"{PLANTED}:CompileOnlyDrift", "--trainer", "dpo", "--fixture", "tiny-llama",
                     "--variant", "compiled", "--snapshots", snaps)
    assert result.exit_code == 0, result.output
    # The planted constant is in the resolved configuration, checked before the numbers.
    assert "fails with config-drift: beta: golden 0.1, now 0.1001" in result.output
    assert _flips(result.output) == ["compile"]
    assert "depends on mx.compile" in result.output


def test_bf16_only_overflow_is_diagnosed():
    result = _triage("--target", f"{PLANTED}:HalfPrecisionOverflow", "--trainer", "dpo", "--fixture", "tiny-llama",
                     "--variant", "bf16")
    assert result.exit_code == 0, result.output
    assert "fails with non-finite" in result.output
    assert _flips(result.output) == ["dtype"]
    assert "low-precision path overflows" in result.output


def test_nothing_flips_a_logic_bug_and_exit_is_1():
    result = _triage("--target", f"{PLANTED}:NoUpdate", "--trainer", "simpo", "--fixture", "tiny-llama")
    assert result.exit_code == 1
    assert "No single change flips it" in result.output


def test_a_passing_case_has_nothing_to_triage():
    result = _triage("--trainer", "orpo", "--fixture", "tiny-llama")
    assert result.exit_code == 1
    assert "The case passes: there is nothing to triage." in result.output
