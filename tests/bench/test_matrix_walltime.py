"""Wall time of `harness run` on the default matrix (a benchmark, never a timed test).

    pytest tests/bench -o addopts= --benchmark-only
"""

from click.testing import CliRunner

from mlxth.harness.cli import main


def test_default_matrix_wall_time(benchmark, tmp_path):
    def run():
        result = CliRunner().invoke(main, ["run", "--reports", str(tmp_path), "--strict"])
        assert result.exit_code == 0, result.output

    benchmark.pedantic(run, rounds=1, iterations=1)
