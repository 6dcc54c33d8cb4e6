"""The ``harness`` command line: parse, call, print.

Exit codes: 0 every case passed; 1 a case failed or regressed; 2 a usage or
configuration error (unknown names, a missing golden in ``--strict`` mode, an
unloadable target, a path the run cannot write), always with a one-line
reason; 3 ``harness run`` was interrupted (SIGINT or SIGTERM) and its reports
hold what ran.
"""

from .. import torchless

torchless.install()  # before anything imports mlx-lm: the command never needs torch

import click  # noqa: E402
from tabulate import tabulate  # noqa: E402

from ...fixtures import FIXTURES  # noqa: E402
from ..judge.equivalence import CLASSES  # noqa: E402
from ..judge.golden import EQUIVALENCE  # noqa: E402
from ..model import (DATA_PARALLEL_CASE, DEFAULT_VARIANTS, RELEASE_VARIANTS, SCENARIOS, TRAINERS,  # noqa: E402
                     VARIANT_FIXTURE, VARIANTS)
from ..target import load_target, registered_targets  # noqa: E402
from .common import main, project_config  # noqa: E402
from . import bench, conformance, init, mutate, run, sweep, tools  # noqa: E402, F401 - each registers its commands on ``main``

__all__ = ["main"]


@main.command("list")
def list_command():
    """List targets, trainers, fixtures, variants and equivalence classes."""
    config = project_config()  # a bad table is an error here too
    names = sorted(registered_targets())
    rows = []
    for name in names + ([config.target] if config.target not in names else []):
        try:
            trainers = ", ".join(load_target(name).trainers())
        except Exception as err:  # noqa: BLE001 - a broken third-party target is listed, not fatal
            trainers = f"(cannot load: {err})"
        rows.append([name + (" (the project's)" if name == config.target else ""), trainers])
    click.echo(tabulate(rows, headers=["target", "trainers"]))
    click.echo()
    click.echo("trainers: " + ", ".join(TRAINERS))
    click.echo("fixtures: " + ", ".join(FIXTURES))
    click.echo("variants: " + ", ".join(f"{k}{' (default)' if k in DEFAULT_VARIANTS else ''}" for k in VARIANTS)
               + f"; the default run adds {', '.join(RELEASE_VARIANTS)} on {VARIANT_FIXTURE}, and "
               f"{DATA_PARALLEL_CASE[0]} on {DATA_PARALLEL_CASE[1]} ranks for a data-parallel target")
    click.echo()
    click.echo("scenarios (fp32, in the default run; --scenario plain for the trainers' defaults alone):")
    for trainer, scenarios in SCENARIOS.items():
        click.echo(f"  {trainer}: " + ", ".join(f"{name} ({spec.fixture})" for name, spec in scenarios.items()))
    click.echo()
    click.echo("equivalence classes (the first member is the golden):")
    for cls in CLASSES.values():
        click.echo(f"  {cls.name}: {cls.describe()}")
    click.echo(f"  tolerance, every trainer: rtol {EQUIVALENCE.rtol:g}, atol {EQUIVALENCE.atol:g}, "
               f"weights {EQUIVALENCE.weights:g} x the largest update")
