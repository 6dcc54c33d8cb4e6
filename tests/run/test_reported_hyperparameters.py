"""What a run reports through ``hyperparameters()``: held to what the case asks for, completed by the defaults."""

import json
import textwrap

from click.testing import CliRunner

from mlxth.harness.cli import main

TARGETS = textwrap.dedent('''
    from dataclasses import replace

    from mlxth.harness.adapters.reference import ReferenceRun, ReferenceTarget


    class Deaf(ReferenceTarget):
        """Drops loss_type on its way to the trainer, and reports the trainer's own (the default)."""

        name = "deaf"

        def prepare(self, trainer, model, tokenizer, rows, settings):
            extra = {k: v for k, v in settings.extra.items() if k != "loss_type"}
            return ReferenceRun(trainer, model, tokenizer, rows, replace(settings, extra=extra))


    class Partial(ReferenceTarget):
        """Reports only beta; every other hyper-parameter is the standard default."""

        name = "partial"

        def prepare(self, trainer, model, tokenizer, rows, settings):
            run = super().prepare(trainer, model, tokenizer, rows, settings)
            run.hyperparameters = lambda: {"beta": run.trainer.config.beta}
            return run
''')


def _run(tmp_path, target, *args):
    (tmp_path / "targets.py").write_text(TARGETS)
    reports = tmp_path / "reports" / target
    result = CliRunner().invoke(main, ["run", "--target", f"{tmp_path / 'targets.py'}:{target}", "--reports",
                                       str(reports), "--trainer", "dpo", *args], catch_exceptions=False)
    (report,) = [json.loads(p.read_text()) for p in reports.glob("*/report.json")]
    return result, report["cases"]


def test_a_setting_the_run_reports_otherwise_is_unsupported(tmp_path):
    result, (case,) = _run(tmp_path, "Deaf", "--scenario", "ipo")
    assert result.exit_code == 1
    assert case["failure"]["kind"] == "unsupported-setting"
    assert ("hyperparameters() reports loss_type='sigmoid' where the case asks for 'ipo': the setting does not "
            "reach the trainer") in case["failure"]["message"]
    # Stopped before its first step: its skipped checks say so, not that it took no gradient.
    training = next(c for c in case["checks"] if c["name"] == "training-mode")
    assert training["status"] == "skip" and training["reason"] == "no step completed", training
    # The same target where the case asks for nothing it drops: no failure.
    (tmp_path / "again").mkdir()
    result, (case,) = _run(tmp_path / "again", "Deaf", "--scenario", "plain", "--fixture", "tiny-llama")
    assert result.exit_code == 0, result.output


def test_what_a_run_does_not_report_takes_the_standard_default(tmp_path):
    result, (case,) = _run(tmp_path, "Partial", "--scenario", "plain", "--fixture", "tiny-llama")
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c["status"] for c in case["checks"]}
    assert checks["loss-recompute"] == checks["metric-recompute"] == checks["gradient"] == "pass"
