"""`harness sweep` over a toy library's locally built releases (no network: --find-links --no-index)."""

import json

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from support.toylib import EARLY_RELEASE, HISTORY, build


@pytest.fixture(scope="module")
def toylib(tmp_path_factory):
    return build(tmp_path_factory.mktemp("toy"))


def _sweep(toy, *args):
    return CliRunner().invoke(main, ["sweep", "--target", f"{toy['target']}:Target", "--find-links",
                                     str(toy["wheels"]), "--no-index", *args], catch_exceptions=False)


def test_sweep_reads_the_story_release_by_release(toylib, tmp_path):
    wheels = toylib["wheels"]
    (wheels / "toylib-1.4.0-py3-none-any.whl").write_bytes(b"not a zip file")  # a release that cannot be installed
    try:
        result = _sweep(toylib, "--from", EARLY_RELEASE, "--to", "1.4.0", "--trainer", "dpo", "--trainer", "simpo",
                        "--fixture", "tiny-linear-attn", "--steps", "1", "--reports", str(tmp_path))
    finally:
        (wheels / "toylib-1.4.0-py3-none-any.whl").unlink()
    assert result.exit_code == 1, result.output  # the releases without model.train() fail
    swept = json.loads(next(tmp_path.glob("*/sweep.json")).read_text())
    rows = {r["release"]: r for r in swept["releases"]}
    assert list(rows) == [EARLY_RELEASE, "1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    assert rows[EARLY_RELEASE]["note"] == f"not driven: toylib {EARLY_RELEASE} has no trainers yet"
    assert rows["1.4.0"]["note"].startswith("cannot install toylib==1.4.0")
    for release, train, simpo in [(r, t, s) for _, r, t, s in HISTORY if r]:
        dpo = rows[release]["cells"]["dpo/tiny-linear-attn/fp32"]
        assert (dpo["status"], dpo["kind"]) == (("pass", None) if train else ("error", "vjp-missing")), release
        assert rows[release]["cells"]["simpo/tiny-linear-attn/fp32"]["status"] == ("pass" if simpo else "not offered")
    table = result.output[result.output.index("release "):]
    assert "1.1.0      error vjp-missing       not offered" in table
    assert "1.3.0      pass                    pass" in table
    assert (next(tmp_path.glob("*/sweep.md")).read_text().count("| 1.") == 5)


@pytest.mark.parametrize("args, message", [
    (["--from", "1.0.0", "--to", "1.3.0", "--no-index"], "--no-index needs --find-links"),
    (["--from", "1.3.0", "--to", "1.0.0"], "--from 1.3.0 is newer than --to 1.0.0"),
    (["--from", "0.1.0", "--to", "1.0.0"], "--from 0.1.0: toylib has no such release"),
    (["--from", "one", "--to", "1.0.0"], "--from 'one' is not a version number"),
    (["--from", "1.0.0", "--to", "1.3.0", "--trainer", "nope"], "unknown trainer 'nope'"),
    (["--from", "1.0.0", "--to", "1.3.0", "--workaround"], "--workaround: target 'toylib' has none"),
])
def test_sweep_refuses_bad_ranges_in_one_line(toylib, args, message):
    base = ["sweep", "--target", f"{toylib['target']}:Target"]
    if "--no-index" not in args:
        base += ["--find-links", str(toylib["wheels"]), "--no-index"]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_sweep_needs_a_target_with_releases():
    result = CliRunner().invoke(main, ["sweep", "--target", "reference", "--from", "1", "--to", "2"])
    assert result.exit_code == 2 and "names no distribution" in result.output
