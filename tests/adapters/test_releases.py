"""How the adapters follow a library through its releases, without installing any release.

The release is read from the code ``import`` takes (``code_version``); what a
release offers and how it is driven follows from it.  The runs on real
mlx-tune releases are in ``test_mlx_tune_releases.py`` (opt-in: they need the
releases' wheels).
"""

import importlib.metadata

import pytest
from packaging.version import Version

pytest.importorskip("greenlet")

from mlxth.fixtures.rewards import DEFAULT_REWARDS  # noqa: E402
from mlxth.harness.adapters import StepLoop, code_version  # noqa: E402
from mlxth.harness.adapters import mlx_lm_lora as lora  # noqa: E402
from mlxth.harness.adapters import mlx_tune as tune  # noqa: E402
from mlxth.harness.target import Settings  # noqa: E402


def _package(folder, name, init=""):
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(init)


def test_code_version_reads_the_metadata_beside_the_package(tmp_path, monkeypatch):
    _package(tmp_path, "mlxth_fake_a")
    (tmp_path / "mlxth_fake_a-2.3.4.dist-info").mkdir()
    (tmp_path / "other_dist-9.9.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert code_version("mlxth_fake_a", "mlxth-fake-a") == ("2.3.4", "installed")
    assert code_version("mlxth_not_there", "nothing") == (None, None)


def test_code_version_follows_the_path_where_metadata_does_not(tmp_path, monkeypatch):
    """A checkout first on the path is what ``import`` takes, though an installed release is found by
    ``importlib.metadata``: the checkout's version is the one reported."""
    installed, checkout = tmp_path / "site", tmp_path / "checkout"
    _package(installed, "mlxth_fake_b")
    info = installed / "mlxth_fake_b-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlxth-fake-b\nVersion: 2.0\n")
    _package(checkout, "mlxth_fake_b", '__version__ = "1.4"\n')
    (checkout / "pyproject.toml").write_text('[build-system]\nrequires = []\n\n[project]\nname = "mlxth-fake-b"\n'
                                             'version = "1.5"\n')
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.syspath_prepend(str(checkout))
    assert importlib.metadata.version("mlxth-fake-b") == "2.0"
    assert code_version("mlxth_fake_b", "mlxth-fake-b") == ("1.5", "source")
    (checkout / "pyproject.toml").unlink()  # no pyproject: the package's own __version__
    assert code_version("mlxth_fake_b", "mlxth-fake-b") == ("1.4", "source")


@pytest.mark.parametrize("release, dpo_reference, kto_weights", [
    ("0.4.10", False, False), ("0.4.11", False, True), ("0.5.0", True, True)])
def test_mlx_tune_documents_only_the_fields_a_release_has(monkeypatch, release, dpo_reference, kto_weights):
    monkeypatch.setattr(tune, "release", lambda: Version(release))
    target = tune.MlxTuneTarget()
    assert target.trainers() == ("dpo", "orpo", "kto", "simpo", "grpo") and target.unsupported() == ""
    assert (("precompute_ref_logprobs", False) in target.documented_hyperparameters("dpo")) is dpo_reference
    assert (("desirable_weight", 2.0) in target.documented_hyperparameters("kto")) is kto_weights


def test_mlx_tune_before_its_first_release_says_why(monkeypatch):
    monkeypatch.setattr(tune, "release", lambda: Version("0.3.5"))
    target = tune.MlxTuneTarget()
    assert target.trainers() == ()
    assert "unsloth-mlx" in target.unsupported()
    with pytest.raises(ValueError, match="unsloth-mlx"):
        target.prepare("dpo", None, None, [], Settings())


def test_mlx_tune_reward_gets_the_answer_whichever_argument_the_release_passes():
    answers = {"Q: 2+2=": "4"}
    reward = tune._reward_fn(DEFAULT_REWARDS, answers)
    right, wrong = reward("4", "4"), reward("5", "4")  # 0.4.11 on: the answer
    assert right > wrong
    assert (reward("4", "Q: 2+2="), reward("5", "Q: 2+2=")) == (right, wrong)  # before: the prompt


def _bare_run(trainer="dpo", batch_size=2):
    """An MlxTuneRun's line handling, without a library: ``body`` prints as the library prints."""
    run = tune.MlxTuneRun.__new__(tune.MlxTuneRun)
    run.trainer_name, run.settings, run.rows = trainer, Settings(batch_size=batch_size), list(range(6))
    run._line, run._batched, run._taken = "", False, 0
    return run


def test_mlx_tune_loss_is_read_unrounded_from_the_printing_frame():
    run = _bare_run()

    def library():  # as releases before 0.5.0 print ORPO/KTO/SimPO: no avg_loss, a total_loss not yet reset
        total_loss = 0.123456789
        print(f"  Step 1/2 | Loss: {total_loss / 1:.4f}")
        total_loss = 0.0
        stale = 0.5  # noqa: F841 - a local that is not the printed loss
        avg_loss = 0.987654321  # noqa: F841 - ...nor this one: it rounds to another number than printed
        print("  Step 2/2 | Loss: 0.2500 | batch_size: 2")

    run._loop = StepLoop(library, on_text=run._on_text)
    assert run._loop.next()["loss"] == 0.123456789
    assert run.rows_for_step(1) == [0]  # no "batch_size" on the line: one row per step (before 0.4.17)
    assert run._loop.next()["loss"] == 0.25  # nothing unrounded matches: the printed value
    assert run.rows_for_step(2) == [2, 3]  # the line says the batch is honoured (0.4.17 on)


def test_mlx_lm_lora_releases_it_cannot_drive_say_why(monkeypatch):
    assert "0.9.10" in lora.unsupported(Version("0.9.7"))
    monkeypatch.setattr(lora.sys, "version_info", (3, 11, 0))
    assert lora.unsupported(Version("0.9.10")) == lora.unsupported(Version("5.10.2")) == ""
    monkeypatch.setattr(lora.sys, "version_info", (3, 10, 0))
    assert lora.unsupported(Version("5.8.6")) == "mlx-lm-lora 5.8.6 needs Python 3.11 or later"
    assert lora.unsupported(Version("3.1.3")) == ""
    monkeypatch.setattr(lora, "release", lambda: Version("0.9.7"))
    assert lora.MlxLmLoraTarget().trainers() == ()


def test_mlx_lm_lora_shim_reports_the_wired_limit_key_through_both_lookups():
    import mlx.core as mx

    before = (mx.device_info, mx.metal.device_info)
    with lora._DeviceInfoShim():
        assert "max_recommended_working_set_size" in mx.device_info()
        assert "max_recommended_working_set_size" in mx.metal.device_info()  # what releases before 1.0.1 read
    assert (mx.device_info, mx.metal.device_info) == before
