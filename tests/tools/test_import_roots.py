"""Where a library's tree imports its packages from (bisect steps and the ``--against`` baseline)."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from mlxth.harness.tools.baseline import baseline_side
from mlxth.harness.tools.import_roots import import_roots

LAYOUTS = {
    "setuptools package-dir": ('[tool.setuptools.package-dir]\n"" = "lib"\n', "lib"),
    "setuptools find": ('[tool.setuptools.packages.find]\nwhere = ["lib"]\n', "lib"),
    "setuptools package mapped": ('[tool.setuptools.package-dir]\nmylib = "lib/mylib"\n', "lib"),
    "hatch": ('[tool.hatch.build.targets.wheel]\npackages = ["lib/mylib"]\n', "lib"),
    "poetry": ('[tool.poetry]\npackages = [{include = "mylib", from = "lib"}]\n', "lib"),
    "src by convention": ('[project]\nname = "mylib"\n', "src"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_folder_a_pyproject_maps_packages_from_comes_before_the_root(tmp_path, layout):
    table, folder = LAYOUTS[layout]
    (tmp_path / folder / "mylib").mkdir(parents=True)
    (tmp_path / folder / "mylib" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(table)
    assert import_roots(tmp_path) == [tmp_path / folder, tmp_path]


def test_a_flat_layout_a_broken_pyproject_and_a_folder_outside_the_tree_give_the_root(tmp_path):
    (tmp_path / "mylib").mkdir()
    (tmp_path / "mylib" / "__init__.py").write_text("")
    assert import_roots(tmp_path) == [tmp_path]
    (tmp_path / "src").mkdir()  # no package in it
    (tmp_path / "pyproject.toml").write_text("[tool.setuptools\n")
    assert import_roots(tmp_path) == [tmp_path]
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools.packages.find]\nwhere = ["..", "missing"]\n')
    assert import_roots(tmp_path) == [tmp_path]


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_against_baseline_imports_the_revisions_package_over_the_checkouts(tmp_path, monkeypatch):
    repo = tmp_path / "mylib"
    (repo / "lib" / "mylib").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[tool.hatch.build.targets.wheel]\npackages = ["lib/mylib"]\n')
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "dev@example.invalid")
    _git(repo, "config", "user.name", "dev")
    revs = []
    for rev in (1, 2):
        (repo / "lib" / "mylib" / "__init__.py").write_text(f"REV = {rev}\n")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", f"revision {rev}")
        revs.append(_git(repo, "rev-parse", "HEAD"))
    monkeypatch.setenv("PYTHONPATH", str(repo / "lib"))  # the checkout (at revision 2) is importable, as installed
    target = SimpleNamespace(spec="mylib.target:Target", name="mylib", golden_key="mylib", distribution=None)
    with baseline_side(revs[0], target, repo) as (env, _, what):
        out = subprocess.run([sys.executable, "-c", "import mylib; print(mylib.REV)"], env=env, cwd=tmp_path,
                             capture_output=True, text=True)
    assert what == f"mylib at {revs[0][:10]}"
    assert out.stdout.strip() == "1", out.stderr
