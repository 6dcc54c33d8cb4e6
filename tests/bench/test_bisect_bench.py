"""Wall time of `harness bisect` over 16 commits with two cases (a benchmark, not a timed test).

    pytest tests/bench -o addopts= --benchmark-only -k bisect
"""

import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.bisect_repo import build  # noqa: E402

from mlxth.harness.cli import main  # noqa: E402


def test_bisect_16_commits_two_cases(benchmark, tmp_path):
    repo = tmp_path / "mylib"
    hashes = build(repo, commits=16, drop_train=11, broken=(8,))

    def run():
        result = CliRunner().invoke(main, [
            "bisect", "--repo", str(repo), "--good", hashes[0], "--bad", hashes[-1],
            "--target", "harness_target.py:Target", "--trainer", "dpo",
            "--fixture", "tiny-linear-attn", "--fixture", "tiny-llama", "--steps", "2"])
        assert result.exit_code == 0 and hashes[10] in result.output, result.output

    benchmark.pedantic(run, rounds=1, iterations=1)
