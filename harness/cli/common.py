"""What every ``harness`` subcommand shares: the group, the case filters, target resolution, and the
project's ``[tool.mlx-trainer-harness]`` table as the default of every filter."""

import datetime
import math
import secrets

import click

from ..project import ConfigError, load_config
from ..selection import SelectionError, configured_target, select
from ..selection import check_names as _check_names
from ..target import TargetError
from ..tools.versions import VersionError, library_version


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproducibility and regression harness for MLX preference and RL trainers."""


class ConfigurationError(click.ClickException):
    """A usage or configuration problem found before any case runs: ``Error: <one line>``, exit 2.
    (click's own option errors keep its usage hint.)"""

    exit_code = 2


def fail_usage(message: str):
    raise ConfigurationError(message)


class Seconds(click.ParamType):
    """A finite number of seconds greater than 0."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: give a finite number of seconds greater than 0", param, ctx)
        return seconds


SECONDS = Seconds()


def resolve_target(spec):
    """The loaded target (``None``: the project's); an unknown one is a usage error."""
    try:
        return configured_target(None if spec else project_config(), spec)
    except TargetError as err:
        fail_usage(str(err))


def check_names(kind, given, known):
    try:
        _check_names(kind, given, known)
    except SelectionError as err:
        fail_usage(str(err))


def project_config():
    """The project's configuration (around the working directory); a bad table is a usage error."""
    try:
        return load_config()
    except ConfigError as err:
        fail_usage(str(err))


def filter_options(func=None, *, multi_target=False):
    if func is None:
        return lambda f: filter_options(f, multi_target=multi_target)
    options = [
        click.option("--target", multiple=multi_target,
                     help="Target name (entry point) or import spec module:object / file.py:object"
                          + (" (repeat to compare targets side by side)" if multi_target else "")
                          + ".  [default: the project's target, else reference]"),
        click.option("--trainer", "trainers", multiple=True, help="Trainer(s) to run.  [default: the project's, "
                                                                  "else all]"),
        click.option("--fixture", "fixtures", multiple=True, help="Fixture(s) to run.  [default: the project's, "
                                                                  "else all]"),
        click.option("--model", "models", multiple=True, type=click.Path(),
                     help="An mlx-lm model folder (config, weights, tokenizer) to run as a case beside the "
                          "fixtures (instead of them when no --fixture is given)."),
        click.option("--variant", "variants", multiple=True, help="Variant(s).  [default: the project's, "
                                                                  "else fp32]"),
        click.option("--scenario", "scenarios", multiple=True,
                     help="Scenario(s) by name, 'plain' for the trainers' defaults.  [default: all; harness list "
                          "names them]"),
        click.option("--steps", type=click.IntRange(1, 1000), help="Steps per case.  [default: the project's, "
                                                                   "else 3]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def select_cases(target, trainers, fixtures, variants, steps, ranks=1, models=(), scenarios=()):
    """The loaded target and its cases, every name checked; what the command line leaves
    out comes from the project's configuration."""
    trainers, fixtures, variants = (tuple(dict.fromkeys(names)) for names in (trainers, fixtures, variants))
    scenarios, models = tuple(dict.fromkeys(scenarios)), tuple(dict.fromkeys(models))
    config = project_config()
    try:
        target_obj, cases = select(config, target, trainers, fixtures, variants, steps, ranks, models, scenarios)
    except (SelectionError, TargetError) as err:
        fail_usage(str(err))
    for key in config.nonstandard:  # a library's own field, or a typo: said, not hidden
        if key.split(".", 1)[0] in {c.trainer for c in cases}:
            click.echo(f"warning: {config.key('hyperparameters.' + key)}: not a standard name; passed to "
                       f"{target_obj.name} as it is", err=True)
    return target_obj, cases


def use_library_version(target_obj, version):
    """Worker processes of this command import ``version`` of the target's library."""
    try:
        folder = click.get_current_context().with_resource(library_version(target_obj, version))
    except VersionError as err:
        fail_usage(str(err))
    click.echo(f"{target_obj.name}: using release {version}")
    return folder


def new_run_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
