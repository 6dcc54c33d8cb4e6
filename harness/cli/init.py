"""``harness init``: make the harness a library's CI gate (config table, target adapter, workflow)."""

import click

from ..project import ConfigError, project_root
from ..tools.scaffold import TARGET_FILE, init_project
from .common import fail_usage, main


@main.command("init")
def init_command():
    """Write the [tool.mlx-trainer-harness] table, a target adapter and a CI workflow into this project.

    The project root is found as pytest finds its rootdir (the nearest
    pyproject.toml).  An existing file is never overwritten: pyproject.toml
    and .gitignore are only appended to, any other file that exists is kept.
    """
    root = project_root()
    click.echo(f"harness init in {root}")
    done = []

    def report(path, what):
        done.append(what)
        click.echo(f"  {path:<40}  {what}")

    try:
        init_project(root, report)
    except ConfigError as err:
        fail_usage(str(err))
    if all(what.startswith("kept") for what in done):
        click.echo("Nothing written: the project is already set up.")
        return
    click.echo(f"""
Next:
  1. {TARGET_FILE} runs a worked example: make Target.prepare() drive your trainers.
  2. harness run --update-snapshots    record goldens (commit them, with why they are right)
  3. harness run --strict              what CI runs: every case held to its golden""")
