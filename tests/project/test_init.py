"""``harness init``: the table, a target adapter that passes as written, a CI workflow; no file overwritten."""

import json
import subprocess
from importlib.metadata import version

import yaml
from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.project import load_config

WORKFLOW = ".github/workflows/mlx-trainer-harness.yml"
ORIGINAL = '[project]\nname = "toylib"\nversion = "0.1"\n'


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(root).parts}


def _init(root, monkeypatch):
    monkeypatch.chdir(root)
    return CliRunner().invoke(main, ["init"], catch_exceptions=False)


def _library(tmp_path, pyproject=ORIGINAL):
    root = tmp_path / "toylib"
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(pyproject)
    return root


def test_init_writes_the_table_an_adapter_and_a_workflow(tmp_path, monkeypatch):
    root = _library(tmp_path)
    result = _init(root, monkeypatch)
    assert result.exit_code == 0, result.output
    text = (root / "pyproject.toml").read_text()
    assert text.startswith(ORIGINAL)  # appended to, never rewritten
    config = load_config(root)
    assert config.target == f"{root / 'harness_target.py'}:Target"
    assert config.snapshots == root / "snapshots" and config.trainers == ("dpo",)
    assert "class Target:" in (root / "harness_target.py").read_text()
    assert 'name = "toylib"' in (root / "harness_target.py").read_text()
    assert (root / ".gitignore").read_text() == "reports/\n"

    flow = yaml.safe_load((root / WORKFLOW).read_text())
    linux, mac = flow["jobs"]["linux-cpu"], flow["jobs"]["macos-metal"]
    assert linux["runs-on"] == "ubuntu-latest"
    runs = " ".join(step.get("run", "") for step in linux["steps"])
    pinned = f"mlx-trainer-harness[cpu]=={version('mlx-trainer-harness')}"  # the release that wrote it
    assert f"'{pinned}'" in runs and "harness run --strict" in runs and "GITHUB_STEP_SUMMARY" in runs
    assert flow["permissions"] == {"contents": "read", "checks": "write"}  # the junit report posts a check
    uses = [step.get("uses", "") for step in linux["steps"]]
    assert any(u.startswith("mikepenz/action-junit-report") for u in uses)  # junit.xml as a test report
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    assert "macOS" in mac["runs-on"] and "ARM64" in mac["runs-on"]
    mac_runs = " ".join(step.get("run", "") for step in mac["steps"])
    assert "run --strict" in mac_runs and "run --update-snapshots" in mac_runs  # gate, and recording Metal goldens
    assert any(step.get("with", {}).get("path") == "snapshots/metal/" for step in mac["steps"])
    assert "record_metal_goldens" in flow[True]["workflow_dispatch"]["inputs"]  # YAML reads the key `on` as True


def test_init_never_overwrites_a_file(tmp_path, monkeypatch):
    root = _library(tmp_path)
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / WORKFLOW).write_text("name: mine\n")
    (root / "harness_target.py").write_text("# the maintainer's own adapter\n")
    (root / ".gitignore").write_text("*.pyc")  # no final newline
    result = _init(root, monkeypatch)
    assert result.exit_code == 0, result.output
    assert (root / WORKFLOW).read_text() == "name: mine\n"
    assert (root / "harness_target.py").read_text() == "# the maintainer's own adapter\n"
    assert (root / ".gitignore").read_text() == "*.pyc\nreports/\n"
    assert "harness_target.py" in result.output and "kept: it exists" in result.output
    # A second init changes nothing at all.
    before = _files(root)
    result = _init(root, monkeypatch)
    assert result.exit_code == 0, result.output
    assert _files(root) == before
    assert "kept: it already has [tool.mlx-trainer-harness]" in result.output
    assert result.output.rstrip().endswith("Nothing written: the project is already set up.")


def test_init_without_pyproject_writes_one_and_refuses_a_broken_one(tmp_path, monkeypatch):
    root = _library(tmp_path, pyproject=None)
    assert _init(root, monkeypatch).exit_code == 0
    assert load_config(root).target.endswith("harness_target.py:Target")
    broken = _library(tmp_path / "b", pyproject="[project\n")
    result = _init(broken, monkeypatch)
    assert result.exit_code == 2
    assert f"{broken / 'pyproject.toml'}: invalid TOML" in result.output
    assert _files(broken) == {"pyproject.toml": b"[project\n"}


def test_the_adapter_as_written_passes_every_check_and_documents_a_real_requirement(tmp_path, monkeypatch):
    root = _library(tmp_path)
    assert _init(root, monkeypatch).exit_code == 0
    # The table names a golden folder that does not exist yet: a run says how to record, and runs nothing.
    result = CliRunner().invoke(main, ["run"], catch_exceptions=False)
    assert result.exit_code == 2
    assert "[tool.mlx-trainer-harness] snapshots: no such folder" in result.output and "--update-snapshots" in result.output
    assert not (root / "reports").exists()
    # Every case of the table's matrix: the default one for dpo, scenarios and release variants included.
    result = CliRunner().invoke(main, ["run", "--update-snapshots"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cases = json.loads(next((root / "reports").glob("*/report.json")).read_text())["cases"]
    assert {(c["case"]["fixture"], c["case"]["variant"], c["case"]["scenario"]) for c in cases} == {
        *((f, "fp32", "") for f in ("tiny-llama", "tiny-qwen35", "tiny-linear-attn", "tiny-warm")),
        *(("tiny-llama", v, "") for v in ("bf16", "lora", "compiled")),
        *(("tiny-warm", "fp32", s) for s in ("smoothed", "ipo", "hinge")), ("tiny-llama", "fp32", "accumulation")}
    assert all(c["status"] == "pass" for c in cases), [(c["id"], c["failure"]) for c in cases]
    (case,) = [c for c in cases if c["case"]["fixture"] == "tiny-linear-attn"]
    checks = {c["name"]: c["status"] for c in case["checks"]}
    assert checks == {"completes": "pass", "training-mode": "pass", "finite": "pass", "updates": "pass",
                      "loss-recompute": "pass", "metric-recompute": "skip", "gradient": "pass",
                      "analytic": "pass", "reproducible": "pass", "golden": "pass"}
    # Skipped only for what the example does not offer: metrics beyond loss and grad_norm.
    reasons = {c["name"]: c["reason"] for c in case["checks"] if c["status"] == "skip"}
    assert reasons["metric-recompute"] == "the target reports none of the standard metrics"
    # The example's model.train() is what the interface asks for: without it the case fails.
    adapter = root / "harness_target.py"
    adapter.write_text(adapter.read_text().replace("        self.model.train()", "        pass"))
    result = CliRunner().invoke(main, ["run", "--fixture", "tiny-linear-attn", "--reports", "again"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert "vjp-missing" in result.output
