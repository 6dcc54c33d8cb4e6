"""The pytest plugin: inert without --harness (no MLX, no syrupy), the CLI's matrix and goldens with it.

Each test runs a real pytest session in a scratch project whose
``[tool.mlx-trainer-harness]`` table selects one cheap trainer and fixture:
its plain case and the one scenario on that fixture (DPO's accumulation).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.judge import golden

TABLE = """\
[tool.pytest.ini_options]

[tool.mlx-trainer-harness]
target = "reference"
snapshots = "goldens"
reports = "out"
trainers = {trainers}
fixtures = ["tiny-llama"]
steps = 2
"""

HARNESS_TEST = """\
def test_trainers(harness_result, harness_golden):
    assert harness_result["failure"] is None, harness_result["failure"]
    assert harness_result == harness_golden
"""

# Records which heavy modules a session imported, at the end of collection's first test.
MODULES_TEST = """\
import json, sys

def test_modules_loaded():
    roots = ("mlx", "syrupy", "numpy", "transformers", "mlxth")
    with open("modules.json", "w") as fh:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in roots), fh)
"""

GOLDEN = Path("goldens/cpu/reference/dpo/tiny-llama--fp32.json")
SCENARIO_GOLDEN = Path("goldens/cpu/reference/dpo/tiny-llama--fp32--accumulation.json")


def _project(tmp_path, trainers='["dpo"]'):
    root = tmp_path / "lib"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text(TABLE.format(trainers=trainers))
    (root / "tests" / "test_harness.py").write_text(HARNESS_TEST)
    (root / "tests" / "test_modules.py").write_text(MODULES_TEST)
    return root


def _pytest(root, *args, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH", "MLXTH_SNAPSHOTS")}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_without_harness_the_plugin_is_loaded_but_inert(tmp_path):
    root = _project(tmp_path)
    # -p no:syrupy: syrupy's own plugin stays out, so any syrupy import would be ours.
    rc, out = _pytest(root, "-p", "no:syrupy")
    assert rc == 0, out
    assert "1 passed, 1 skipped" in out, out
    assert "harness cases run with pytest --harness" in out, out
    loaded = set(json.loads((root / "modules.json").read_text()))
    # The same session without the plugin: it added nothing heavy, and of the harness only itself.
    rc, out = _pytest(root, "-p", "no:syrupy", "-p", "no:mlx-trainer-harness", "tests/test_modules.py")
    assert rc == 0, out
    without = set(json.loads((root / "modules.json").read_text()))
    assert "mlxth.harness.testing.plugin" in loaded and "mlxth.harness.testing.plugin" not in without
    assert {m for m in loaded - without if not m.startswith("mlxth.harness.testing")} <= {"mlxth", "mlxth.harness"}
    assert not [m for m in loaded if m.split(".")[0] in ("mlx", "syrupy", "transformers")], loaded


def test_without_syrupy_a_plain_run_works_and_harness_says_what_to_install(tmp_path):
    root = _project(tmp_path)
    blocked = tmp_path / "blocked"
    (blocked / "syrupy").mkdir(parents=True)
    (blocked / "syrupy" / "__init__.py").write_text('raise ImportError("No module named \'syrupy\'")\n')
    rc, out = _pytest(root, "-p", "no:syrupy", pythonpath=blocked)
    assert rc == 0 and "1 passed, 1 skipped" in out, out
    rc, out = _pytest(root, "-p", "no:syrupy", "--harness", pythonpath=blocked)
    assert rc == 4, out  # pytest's usage error
    assert "--harness needs syrupy: pip install 'mlx-trainer-harness[pytest]'" in out, out


def test_with_harness_goldens_are_the_clis(tmp_path, monkeypatch):
    root = _project(tmp_path)
    # 1. No golden yet: the cases fail and say how to record one.
    rc, out = _pytest(root, "--harness", "tests/test_harness.py")
    assert rc == 1 and "2 failed" in out, out
    assert "reference/dpo/tiny-llama/fp32" in out and "record it with `pytest --snapshot-update`" in out, out
    assert not (root / GOLDEN).exists() and not (root / SCENARIO_GOLDEN).exists()

    # 2. --snapshot-update records them where the table says, the scenario's under its own name.
    rc, out = _pytest(root, "--harness", "--snapshot-update", "tests/test_harness.py")
    assert rc == 0 and "2 passed" in out, out
    recorded = {path: (root / path).read_bytes() for path in (GOLDEN, SCENARIO_GOLDEN)}
    assert json.loads(recorded[SCENARIO_GOLDEN])["case"] == "reference/dpo/tiny-llama/fp32/accumulation"

    # 3. The CLI, from the same project root, holds its runs to those goldens and writes the same bytes.
    monkeypatch.chdir(root)
    result = CliRunner().invoke(main, ["run", "--strict"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 passed, 0 failed" in result.output
    result = CliRunner().invoke(main, ["run", "--update-snapshots", "--snapshots", "cli"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for path, text in recorded.items():
        assert (root / "cli" / path.relative_to("goldens")).read_bytes() == text, path
    monkeypatch.chdir(tmp_path)

    # 4. A plain --harness run passes; a drifted golden fails its case with the step and key.
    rc, out = _pytest(root, "--harness", "tests/test_harness.py")
    assert rc == 0 and "2 passed" in out, out
    recorded = recorded[GOLDEN]
    trace = json.loads(recorded)
    trace["steps"][1]["loss"] += 1e-3
    (root / GOLDEN).write_text(golden.dumps(trace))
    rc, out = _pytest(root, "--harness", "tests/test_harness.py")
    assert rc == 1 and "1 failed, 1 passed" in out, out
    assert f"step 2: loss expected {trace['steps'][1]['loss']!r}" in out, out


def test_a_bad_table_stops_a_harness_session_with_the_file_and_key(tmp_path):
    root = _project(tmp_path, trainers='["ppo"]')
    rc, out = _pytest(root, "--harness")
    assert rc == 4, out
    assert f"{root / 'pyproject.toml'}: [tool.mlx-trainer-harness] trainers: unknown 'ppo'" in out, out
    rc, out = _pytest(root)  # a session that does not ask for the harness never reads the table
    assert rc == 0, out
