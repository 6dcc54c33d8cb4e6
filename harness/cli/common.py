"""What every ``harness`` subcommand shares: the group, the case filters, target resolution."""

import datetime
import math
import secrets

import click

from ...fixtures import FIXTURES
from ..model import TRAINERS, VARIANTS, build_matrix
from ..target import TargetError, load_target
from ..tools.versions import VersionError, library_version


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproducibility and regression harness for MLX preference and RL trainers."""


def fail_usage(message: str):
    raise click.UsageError(message)


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


def resolve_target(spec: str):
    try:
        return load_target(spec)
    except TargetError as err:
        fail_usage(str(err))


def check_names(kind, given, known):
    unknown = [g for g in given if g not in known]
    if unknown:
        fail_usage(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


def filter_options(func=None, *, multi_target=False):
    if func is None:
        return lambda f: filter_options(f, multi_target=multi_target)
    options = [
        click.option("--target", default=("reference",) if multi_target else "reference", show_default=True,
                     multiple=multi_target,
                     help="Target name (entry point) or import spec module:object / file.py:object"
                          + (" (repeat to compare targets side by side)." if multi_target else ".")),
        click.option("--trainer", "trainers", multiple=True, help="Trainer(s) to run; default all."),
        click.option("--fixture", "fixtures", multiple=True, help="Fixture(s) to run; default all."),
        click.option("--variant", "variants", multiple=True, help="Variant(s); default fp32."),
        click.option("--steps", default=3, show_default=True, type=click.IntRange(1, 1000)),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def select_cases(target, trainers, fixtures, variants, steps, ranks=1):
    """The loaded target and its cases, every name checked and repeated names dropped."""
    trainers, fixtures, variants = (tuple(dict.fromkeys(names)) for names in (trainers, fixtures, variants))
    target_obj = resolve_target(target)
    check_names("trainer", trainers, [t for t in TRAINERS if t in target_obj.trainers()])
    check_names("fixture", fixtures, list(FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    try:
        return target_obj, build_matrix(target_obj, trainers, fixtures, variants, steps, ranks)
    except ValueError as err:
        fail_usage(f"--ranks {ranks}: {err}")


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
