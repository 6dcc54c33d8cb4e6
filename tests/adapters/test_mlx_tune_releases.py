"""mlx-tune's training-mode regression and its fix, on the real library (opt-in).

mlx-tune up to 0.4.10 takes gradients of the model in the mode it was handed
(inference, as ``mlx_lm.load`` leaves it); 0.4.11 (commit ce8d50d) calls
``model.train()`` first.  These tests need what CI cannot reach, so they run
only when pointed at it:

* ``MLXTH_MLX_TUNE_WHEELS``: a folder with the 0.4.10 and 0.4.11 wheels
  (``pip download --no-deps -d DIR mlx-tune==0.4.10 mlx-tune==0.4.11``);
* ``MLXTH_MLX_TUNE_REPO``: a clone of github.com/ARahim3/mlx-tune with its tags.

CI runs the same story on a toy library instead (``tests/tools/test_sweep.py``,
``tests/tools/test_bisect_both_ways.py``).
"""

import json
import os

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main

WHEELS = os.environ.get("MLXTH_MLX_TUNE_WHEELS")
REPO = os.environ.get("MLXTH_MLX_TUNE_REPO")
TRAINERS = ("dpo", "orpo", "kto", "simpo")
CASES = [a for t in TRAINERS for a in ("--trainer", t)] + ["--fixture", "tiny-llama", "--fixture", "tiny-linear-attn"]
MODE_KINDS = {"train-mode", "vjp-missing"}

pytestmark = pytest.mark.slow
needs_wheels = pytest.mark.skipif(not WHEELS, reason="MLXTH_MLX_TUNE_WHEELS is not set")


@needs_wheels
def test_0_4_10_trains_in_inference_mode_and_0_4_11_does_not(tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--target", "mlx-tune", "--from", "0.4.10", "--to", "0.4.11",
                                       "--find-links", WHEELS, "--no-index", *CASES, "--steps", "2",
                                       "--reports", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    rows = {r["release"]: r for r in json.loads(next(tmp_path.glob("*/sweep.json")).read_text())["releases"]}
    for trainer in TRAINERS:  # 0.4.10 offers all four (KTO and SimPO configured by keywords)
        llama = rows["0.4.10"]["cells"][f"{trainer}/tiny-llama/fp32"]
        linear = rows["0.4.10"]["cells"][f"{trainer}/tiny-linear-attn/fp32"]
        assert (llama["status"], llama["kind"]) == ("fail", "train-mode"), trainer
        assert (linear["status"], linear["kind"]) == ("error", "vjp-missing"), trainer
        for fixture in ("tiny-llama", "tiny-linear-attn"):
            cell = rows["0.4.11"]["cells"][f"{trainer}/{fixture}/fp32"]
            assert cell["status"] != "not offered" and not MODE_KINDS & set(cell["kinds"]), (trainer, cell)


@needs_wheels
def test_bisecting_the_releases_names_0_4_11():
    result = CliRunner().invoke(main, ["bisect", "--releases", "--target", "mlx-tune", "--from", "0.4.10",
                                       "--to", "0.4.11", "--find-links", WHEELS, "--no-index", "--trainer", "dpo",
                                       "--fixture", "tiny-linear-attn", "--kind", "vjp-missing"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "first good release: 0.4.11" in result.output


@pytest.mark.skipif(not REPO, reason="MLXTH_MLX_TUNE_REPO is not set")
def test_bisecting_the_history_names_ce8d50d():
    result = CliRunner().invoke(main, ["bisect", "--repo", REPO, "--target", "mlx-tune", "--from", "v0.4.10",
                                       "--to", "v0.4.11", "--trainer", "dpo", "--fixture", "tiny-linear-attn",
                                       "--kind", "vjp-missing"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "first good commit: ce8d50d" in result.output
