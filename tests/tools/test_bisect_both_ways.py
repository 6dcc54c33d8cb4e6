"""`harness bisect --from/--to`: the flip found either way, over a toy library's commits or its releases."""

import json
import zipfile

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.tools import release_bisect
from support.toylib import HISTORY, build, git, repo_state

CASE = ["--trainer", "dpo", "--fixture", "tiny-linear-attn", "--steps", "1"]


@pytest.fixture(scope="module")
def toylib(tmp_path_factory):
    return build(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def fixed_release_on_path(toylib, tmp_path, monkeypatch):
    """The fixed release importable from PYTHONPATH: a bisect that did not put the commit's code first would
    test it at every step and find nothing."""
    folder = tmp_path / "site"
    with zipfile.ZipFile(toylib["wheels"] / "toylib-1.3.0-py3-none-any.whl") as zf:
        zf.extractall(folder)
    monkeypatch.setenv("PYTHONPATH", str(folder))


def _bisect(toy, *args, report=None):
    extra = ["--report", str(report)] if report else []
    return CliRunner().invoke(main, ["bisect", "--target", f"{toy['target']}:Target", *CASE, *args, *extra],
                              catch_exceptions=False)


def test_from_to_finds_the_regression_commit(toylib, tmp_path, fixed_release_on_path):
    repo, commits = toylib["repo"], toylib["commits"]
    (repo / "CHANGES").write_text("an uncommitted edit\n")
    before = repo_state(repo)
    result = _bisect(toylib, "--repo", str(repo), "--from", commits[0], "--to", commits[3],
                     report=tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "r.json").read_text())
    assert (found["direction"], found["first_bad"], found["first_good"]) == ("regression", commits[1], None)
    assert found["subject"] == HISTORY[1][0] and "toylib/dpo.py" in found["files"]
    assert [f["kind"] for f in found["failures"]] == ["vjp-missing"]
    assert f"first bad commit: {commits[1]}" in result.output and "a regression" in result.output
    assert repo_state(repo) == before
    git(repo, "checkout", "--", "CHANGES")


def test_from_to_finds_the_fixing_commit(toylib, tmp_path, fixed_release_on_path):
    repo, commits = toylib["repo"], toylib["commits"]
    before = repo_state(repo)
    result = _bisect(toylib, "--repo", str(repo), "--from", commits[1], "--to", commits[5],
                     report=tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "r.json").read_text())
    assert (found["direction"], found["first_good"], found["first_bad"]) == ("fix", commits[4], None)
    assert found["subject"] == "Put the model in training mode"
    assert [f["kind"] for f in found["failures"]] == ["vjp-missing"]  # what failed before the fix
    verdicts = {s["commit"]: s["verdict"] for s in found["steps"]}
    assert verdicts[commits[1]] == "bad" and verdicts[commits[5]] == "good"
    assert all(verdicts[c] == "bad" for c in commits[2:4] if c in verdicts)
    assert f"first good commit: {commits[4]}" in result.output and "a fix" in result.output
    assert repo_state(repo) == before


def test_ends_that_agree_have_nothing_to_bisect(toylib):
    repo, commits = toylib["repo"], toylib["commits"]
    before = repo_state(repo)
    result = _bisect(toylib, "--repo", str(repo), "--from", commits[4], "--to", commits[5])
    assert result.exit_code == 1
    assert "both ends test good: the cases did not flip" in result.output
    # Counting only one kind: the pre-fix commit has no `no-update` failure, so nothing flips either.
    result = _bisect(toylib, "--repo", str(repo), "--from", commits[1], "--to", commits[4], "--kind", "no-update")
    assert result.exit_code == 1 and "both ends test good" in result.output
    assert repo_state(repo) == before


def test_releases_bisect_both_ways(toylib):
    common = ["--releases", "--find-links", str(toylib["wheels"]), "--no-index"]
    result = _bisect(toylib, *common, "--from", "1.0.0", "--to", "1.2.0")
    assert result.exit_code == 0, result.output
    assert "first bad release: 1.1.0" in result.output and "a regression" in result.output
    result = _bisect(toylib, *common, "--from", "1.1.0", "--to", "1.3.0")
    assert result.exit_code == 0, result.output
    assert "first good release: 1.3.0" in result.output and "a fix" in result.output
    assert "steps: 1.1.0 bad, 1.3.0 good, 1.2.0 bad" in result.output
    result = _bisect(toylib, *common, "--from", "0.9.0", "--to", "1.3.0")
    assert result.exit_code == 1
    assert "--from 0.9.0 cannot be tested: not driven: toylib 0.9.0 has no trainers yet" in result.output


@pytest.mark.parametrize("args, message", [
    (["--repo", ".", "--good", "a", "--to", "b"], "either --good/--bad"),
    (["--repo", "."], "give both ends"),
    (["--releases", "--repo", ".", "--from", "1", "--to", "2"], "takes no --repo"),
    (["--from", "1", "--to", "2"], "--repo is required"),
    (["--repo", ".", "--from", "1", "--to", "2", "--kind", "slow"], "unknown --kind 'slow'"),
])
def test_bisect_usage_errors_are_one_line(args, message):
    result = CliRunner().invoke(main, ["bisect", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_release_search_skips_untestable_releases(monkeypatch):
    """The search itself, on a planted list: good up to 1.3, bad from 1.4, with 1.2 not testable."""
    listed = ["1.0", "1.1", "1.2", "1.3", "1.4", "1.5"]
    states = {"1.0": "good", "1.1": "good", "1.2": "skip", "1.3": "good", "1.4": "bad", "1.5": "bad"}
    tested = []

    def fake_test(target, release, selection, kinds, options):
        tested.append(release)
        return {"release": release, "verdict": states[release], "failures": [], "rev": release,
                "reason": "planted" if states[release] == "skip" else None}

    monkeypatch.setattr(release_bisect, "releases", lambda *a, **k: listed)
    monkeypatch.setattr(release_bisect, "test_release", fake_test)
    options = dict(steps=1, snapshots=None, jobs=1, timeout=1)
    found = release_bisect.bisect_releases(None, "1.0", "1.5", [], **options)
    assert (found["direction"], found["found"]) == ("regression", "1.4")
    assert "1.2" in tested  # tried, skipped, and the search went on around it
    states["1.3"] = "skip"  # now the flip lies between 1.1 and 1.4 with 1.2 and 1.3 untestable
    found = release_bisect.bisect_releases(None, "1.0", "1.5", [], **options)
    assert found["found"] is None
    assert found["message"] == ["the cases flipped between 1.1 and 1.4, but 1.2, 1.3 could not be tested"]
    states.update({"1.0": "bad", "1.1": "bad", "1.2": "bad", "1.3": "good", "1.4": "good", "1.5": "good"})
    found = release_bisect.bisect_releases(None, "1.0", "1.5", [], **options)
    assert (found["direction"], found["found"], found["first_good"]) == ("fix", "1.3", "1.3")
