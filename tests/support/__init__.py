"""What the test modules share: helpers, planted faulty targets, numpy oracles, scratch repositories."""

from pathlib import Path

from mlxth.harness.project import load_config

HERE = Path(__file__).resolve().parent
PLANTED_TARGETS = HERE / "planted_targets.py"
PLANTED_DISTRIBUTED = HERE / "planted_distributed.py"
PLANTED_LEAKS = HERE / "planted_leaks.py"
PLANTED_FAULTS = HERE / "planted_faults.py"
REPOSITORY = HERE.parents[1]
SNAPSHOTS = load_config(REPOSITORY).snapshots  # this project's [tool.mlx-trainer-harness] table
