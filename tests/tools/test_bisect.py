"""`harness bisect` on a small trainer library's history."""

import json
import site
import subprocess
import sys
from pathlib import Path

from support.bisect_repo import build
from support.toylib import repo_state as _state
from click.testing import CliRunner

from mlxth.harness.cli import main


def test_bisect_names_the_commit_that_dropped_model_train(tmp_path):
    repo = tmp_path / "mylib"
    hashes = build(repo, commits=12, drop_train=9, broken=(6, 7))
    (repo / "CHANGES").write_text("an uncommitted edit of the user's\n")  # a dirty working tree
    (repo / "notes.txt").write_text("untracked\n")
    before = _state(repo)
    report = tmp_path / "bisect.json"
    result = CliRunner().invoke(main, [
        "bisect", "--repo", str(repo), "--good", hashes[0], "--bad", hashes[-1],
        "--target", "harness_target.py:Target", "--trainer", "dpo", "--fixture", "tiny-linear-attn",
        "--steps", "2", "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    found = json.loads(report.read_text())
    assert found["first_bad"] == hashes[8]
    assert found["subject"] == "Simplify the step" and found["author_date"]
    assert found["files"] == ["CHANGES", "mylib/dpo.py"]
    assert [f["kind"] for f in found["failures"]] == ["vjp-missing"]
    assert found["failures"][0]["case"] == "mylib/dpo/tiny-linear-attn/fp32"
    verdicts = {s["commit"]: s["verdict"] for s in found["steps"]}
    assert any(verdicts.get(hashes[i]) == "skip" for i in (5, 6)), verdicts  # the commits that don't import
    assert all(verdicts[h] == "skip" for h in (hashes[5], hashes[6]) if h in verdicts)
    assert f"first bad commit: {hashes[8]}" in result.output and "vjp-missing" in result.output
    assert _state(repo) == before


def test_bisect_without_a_regression_reports_none(tmp_path):
    repo = tmp_path / "mylib"
    hashes = build(repo, commits=4, drop_train=99, broken=())
    before = _state(repo)
    result = CliRunner().invoke(main, [
        "bisect", "--repo", str(repo), "--good", hashes[0], "--bad", hashes[-1],
        "--target", "harness_target.py:Target", "--trainer", "dpo", "--fixture", "tiny-llama", "--steps", "2"])
    assert result.exit_code == 1
    assert "no first bad commit" in result.output
    assert _state(repo) == before


def test_bisect_says_which_case_made_the_good_end_bad(tmp_path):
    repo = tmp_path / "mylib"
    hashes = build(repo, commits=2, drop_train=1, broken=())
    result = CliRunner().invoke(main, [
        "bisect", "--repo", str(repo), "--good", hashes[0], "--bad", hashes[-1],
        "--target", "harness_target.py:Target", "--trainer", "dpo", "--fixture", "tiny-linear-attn", "--steps", "2"])
    assert result.exit_code == 1
    assert (f"the good revision {hashes[0]} tests bad, not good (first failing case "
            "mylib/dpo/tiny-linear-attn/fp32: check completes, kind vjp-missing): nothing to bisect") in result.output


def editable_install(venv, checkout):
    """A venv holding this one's packages and ``checkout`` (a src layout) as ``pip install -e`` leaves it:
    setuptools writes the ``src`` folder's path into a .pth file (an import hook only for other layouts,
    and that one sits after PYTHONPATH's path finder)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = "; ".join(f"site.addsitedir({d!r})" for d in site.getsitepackages())
    (Path(purelib) / "harness-env.pth").write_text(f"import site; {ours}\n")
    (Path(purelib) / "__editable__.mylib-0.1.pth").write_text(f"{checkout / 'src'}\n")
    return python


def test_bisect_takes_the_commits_src_layout_over_an_editable_install(tmp_path):
    """The user's checkout (at the bad HEAD) is installed with pip install -e; each step still imports
    the commit's src/mylib."""
    repo = tmp_path / "mylib"
    hashes = build(repo, commits=4, drop_train=3, broken=(), src=True)
    python = editable_install(tmp_path / "venv", repo)
    where = subprocess.run([str(python), "-c", "import mylib.dpo; print(mylib.dpo.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(repo / "src" / "mylib" / "dpo.py")  # the install is live
    report = tmp_path / "bisect.json"
    out = subprocess.run([str(python), "-m", "mlxth.harness.cli", "bisect", "--repo", ".", "--good", hashes[0],
                          "--bad", "HEAD", "--target", "harness_target.py:Target", "--trainer", "dpo",
                          "--fixture", "tiny-linear-attn", "--steps", "2", "--report", str(report)],
                         cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    found = json.loads(report.read_text())
    assert found["first_bad"] == hashes[2] and found["files"] == ["CHANGES", "src/mylib/dpo.py"]
    assert [f["kind"] for f in found["failures"]] == ["vjp-missing"]


def test_bisect_rejects_an_unknown_revision(tmp_path):
    repo = tmp_path / "mylib"
    build(repo, commits=2, drop_train=99, broken=())
    result = CliRunner().invoke(main, ["bisect", "--repo", str(repo), "--good", "nope", "--bad", "HEAD"])
    assert result.exit_code == 2 and "nope" in result.output


def test_bisect_over_this_projects_own_history(tmp_path):
    """Each step runs the project's own code at that commit (mlxth mapped to the worktree)."""
    import shutil

    root = Path(__file__).resolve().parents[2]
    repo = tmp_path / "own"
    repo.mkdir()
    for name in ("harness", "trainers", "fixtures"):
        shutil.copytree(root / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))

    def commit(message):
        for args in (["add", "-A"], ["commit", "-q", "-m", message]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()

    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.email", "dev@example.invalid"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.name", "dev"], check=True)
    good = commit("Reference trainers")
    core = repo / "trainers" / "core.py"
    text = core.read_text()
    marker = "        model.train()  # the training-mode contract"
    assert marker in text
    core.write_text(text.replace(marker, "        pass  # mode left as the caller had it"))
    bad_one = commit("Leave the model's mode alone")
    (repo / "trainers" / "NOTES").write_text("later work\n")
    bad = commit("Later work")
    result = CliRunner().invoke(main, ["bisect", "--repo", str(repo), "--good", good, "--bad", bad,
                                       "--trainer", "kto", "--fixture", "tiny-linear-attn", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert f"first bad commit: {bad_one}" in result.output
    assert "vjp-missing" in result.output and "trainers/core.py" in result.output


def test_commits_older_than_the_harness_table_run_the_checkouts_target(tmp_path):
    """A library adopts the harness after the regression: the commits before its table are still tested
    with its target (a copy of the checkout's adapter), never with the built-in reference trainers."""
    repo = tmp_path / "mylib"
    hashes = build(repo, commits=4, drop_train=3, broken=())
    (repo / "pyproject.toml").write_text('[tool.mlx-trainer-harness]\ntarget = "harness_target.py:Target"\n')
    for args in (["add", "-A"], ["commit", "-q", "-m", "Adopt mlx-trainer-harness"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    report = tmp_path / "bisect.json"
    out = subprocess.run([sys.executable, "-m", "mlxth.harness.cli", "bisect", "--repo", ".", "--good", hashes[0],
                          "--bad", "HEAD", "--trainer", "dpo", "--fixture", "tiny-linear-attn", "--steps", "2",
                          "--report", str(report)], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "a commit whose table names no target runs the checkout's: " in out.stdout
    found = json.loads(report.read_text())
    assert found["first_bad"] == hashes[2] and found["subject"] == "Simplify the step"
    assert [f["kind"] for f in found["failures"]] == ["vjp-missing"]
    assert all(s.get("target", "").endswith("harness_target.py:Target") for s in found["steps"]
               if s["commit"] in hashes), found["steps"]
