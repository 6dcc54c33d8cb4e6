"""The harness as a library's maintainer uses it: from a wheel, in the library's own repository.

This project's wheel is built from a copy of the checkout (its tracked and
unignored files, so the build leaves nothing behind here) and installed with
the ``cpu`` extra into a fresh virtual environment: no system site-packages,
no editable install, no PYTHONPATH, its dependencies from the package index
through pip's own cache, so nothing is read from this checkout (the test
checks where ``mlxth`` is imported from).  Then, from the root of a scratch
trainer library (``support.scratch_library``, its own git repository), every
command a maintainer runs: ``harness init``, recording goldens, ``harness run
--strict``, a committed regression turning the run red with its kind, and
``harness bisect`` naming that commit and leaving the repository as it was.
"""

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from support import REPOSITORY
from support import scratch_library as lib

pytestmark = pytest.mark.slow

CASE = "toyprefs/dpo/tiny-llama/fp32"


def _checkout_copy(dest: Path) -> Path:
    """The checkout's tracked and not-ignored files, copied (what a clean clone would build)."""
    listed = subprocess.run(["git", "-C", str(REPOSITORY), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPOSITORY / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _pip(python, *args):
    proc = subprocess.run([str(python), "-m", "pip", *args, "--disable-pip-version-check"], capture_output=True,
                          text=True, env=_clean_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _clean_env(bin_dir=None):
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS", "MLXTH_SNAPSHOTS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if bin_dir is not None:
        env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The ``bin`` folder of a fresh environment with this project's wheel (and the cpu extra)."""
    work = tmp_path_factory.mktemp("wheel")
    source = _checkout_copy(work / "source")
    _pip(sys.executable, "wheel", "--no-deps", "--wheel-dir", str(work / "dist"), str(source))
    (wheel,) = (work / "dist").glob("mlx_trainer_harness-*.whl")
    shutil.rmtree(source)  # from here on only the wheel exists
    venv.create(work / "venv", with_pip=True, system_site_packages=False)
    python = work / "venv" / "bin" / "python"
    # --no-compile: bytecode is written as modules are imported, not for all of transformers up front.
    _pip(python, "install", "--no-compile", f"{wheel}[cpu]")
    return python.parent


def _sh(bin_dir, cwd, *argv):
    return subprocess.run(list(argv), cwd=cwd, env=_clean_env(bin_dir), capture_output=True, text=True,
                          timeout=900)


def _last_report(root):
    return json.loads(sorted((root / "reports").glob("*/report.json"))[-1].read_text())


def _state(repo):
    return {"head": lib.git(repo, "rev-parse", "HEAD"), "branch": lib.git(repo, "symbolic-ref", "HEAD"),
            "status": lib.git(repo, "status", "--porcelain", "--untracked-files=all"),
            "worktrees": lib.git(repo, "worktree", "list", "--porcelain"), "refs": lib.git(repo, "for-each-ref")}


def test_a_library_gates_its_trainers_with_the_installed_wheel(installed, tmp_path):
    # Nothing of this checkout is importable in the environment: mlxth comes from its site-packages.
    proc = _sh(installed, tmp_path, "python", "-c", "import mlxth.harness, mlxth.fixtures; "
               "print(mlxth.harness.__path__[0]); print(mlxth.fixtures.__path__[0])")
    assert proc.returncode == 0, proc.stderr
    for where in proc.stdout.split():
        assert Path(where).resolve().is_relative_to(installed.parent.resolve()), where
        assert not Path(where).resolve().is_relative_to(REPOSITORY), where

    repo = tmp_path / "toyprefs"
    lib.create(repo)

    # harness init: the table, the adapter skeleton, the workflow; the maintainer narrows the matrix
    # to one fixture and fills in the adapter.
    proc = _sh(installed, repo, "harness", "init")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for written in ("harness_target.py", ".github/workflows/mlx-trainer-harness.yml"):
        assert (repo / written).is_file(), proc.stdout
    pyproject = (repo / "pyproject.toml").read_text()
    assert pyproject.startswith(lib.PYPROJECT) and "[tool.mlx-trainer-harness]" in pyproject
    fixtures_line = next(line for line in pyproject.splitlines() if line.startswith("# fixtures = "))
    (repo / "pyproject.toml").write_text(pyproject.replace(fixtures_line, 'fixtures = ["tiny-llama"]'))
    lib.write_adapter(repo)

    # Record goldens into the library's repository, then the CI gate passes.
    proc = _sh(installed, repo, "harness", "run", "--scenario", "plain", "--update-snapshots")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    goldens = sorted(str(p.relative_to(repo)) for p in (repo / "snapshots").rglob("*.json"))
    assert goldens == ["snapshots/cpu/toyprefs/dpo/tiny-llama--fp32.json"]
    proc = _sh(installed, repo, "harness", "run", "--scenario", "plain", "--strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _last_report(repo)
    assert [c["id"] for c in report["cases"]] == [CASE]
    assert not [c for c in report["cases"][0]["checks"] if c["status"] == "fail"], report["cases"][0]["checks"]
    good = lib.commit(repo, "Gate the trainers with mlx-trainer-harness")

    # A regression committed later turns the run red, with its kind.
    history = lib.later_history(repo)
    proc = _sh(installed, repo, "harness", "run", "--scenario", "plain")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (case,) = _last_report(repo)["cases"]
    assert case["failure"]["kind"] == "golden-drift", case["failure"]
    assert case["failure"]["message"].startswith("step 2: "), case["failure"]  # step 1 logs its values before its update
    assert [c["name"] for c in case["checks"] if c["status"] == "fail"] == ["golden"]  # only the golden sees it

    # bisect names the commit and leaves the repository as it found it.
    before = _state(repo)
    assert before["status"] == ""  # reports/ is ignored (harness init said so)
    bisect_json = tmp_path / "bisect.json"
    proc = _sh(installed, repo, "harness", "bisect", "--repo", ".", "--good", good, "--bad", "HEAD", "--scenario", "plain",
               "--report", str(bisect_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"first bad commit: {history['regression']}" in proc.stdout
    found = json.loads(bisect_json.read_text())
    assert found["first_bad"] == history["regression"] and found["subject"] == lib.REGRESSION
    assert found["files"] == ["toyprefs/trainer.py"]
    assert [(f["case"], f["kind"]) for f in found["failures"]] == [(CASE, "golden-drift")]
    assert _state(repo) == before
