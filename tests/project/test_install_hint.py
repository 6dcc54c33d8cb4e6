"""A target whose extra is not installed says which extra to install, in ``harness list`` and ``--target``."""

from click.testing import CliRunner

from mlxth.harness.cli import main

METADATA = """\
Metadata-Version: 2.1
Name: {name}
Version: 1.0
"""

TARGET = '''\
class PlugTarget:
    name = "plug"

    def trainers(self):
        return ("dpo",)

    def prepare(self, trainer, model, tokenizer, rows, settings):
        raise NotImplementedError
'''


def _dist(site, name, metadata="", entry_points=""):
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(METADATA.format(name=name) + metadata)
    if entry_points:
        (info / "entry_points.txt").write_text(entry_points)


def test_a_missing_extra_is_named_with_the_pip_command(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "plug_targets").mkdir(parents=True)
    (site / "plug_targets" / "__init__.py").write_text(TARGET)
    # A distribution registering the target "plug", whose extra "plug" needs a package that is not installed.
    _dist(site, "plug-dist", 'Provides-Extra: plug\nRequires-Dist: mlxth-test-plug-backend>=1; extra == "plug"\n',
          "[mlxth.targets]\nplug = plug_targets:PlugTarget\n")
    monkeypatch.syspath_prepend(str(site))
    hint = "target 'plug' needs mlxth-test-plug-backend (not installed): pip install 'plug-dist[plug]'"

    listing = CliRunner().invoke(main, ["list"])
    assert listing.exit_code == 0
    assert f"(cannot load: {hint})" in listing.output
    run = CliRunner().invoke(main, ["run", "--target", "plug", "--reports", str(tmp_path / "r")])
    assert run.exit_code == 2 and f"Error: {hint}" in run.output

    # Installed, the extra's requirement satisfies the check and the target loads.
    _dist(site, "mlxth-test-plug-backend")
    listing = CliRunner().invoke(main, ["list"])
    (row,) = [line for line in listing.output.splitlines() if line.startswith("plug ")]
    assert row.split() == ["plug", "dpo"]
