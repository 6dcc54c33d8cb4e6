"""What every ``harness`` subcommand shares: the group, the case filters, target resolution, and the
project's ``[tool.mlx-trainer-harness]`` table as the default of every filter."""

import datetime
import secrets

import click

from ...fixtures import FIXTURES
from ..model import TRAINERS, VARIANTS, build_matrix
from ..project import ConfigError, load_config
from ..target import TargetError, load_target
from ..user_model import ModelFolderError, check_model_folder
from ..tools.versions import VersionError, library_version


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Reproducibility and regression harness for MLX preference and RL trainers."""


def fail_usage(message: str):
    raise click.UsageError(message)


def project_config():
    """The project's configuration (around the working directory); a bad table is a usage error."""
    try:
        return load_config()
    except ConfigError as err:
        fail_usage(str(err))


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
        click.option("--steps", type=click.IntRange(1, 1000), help="Steps per case.  [default: the project's, "
                                                                   "else 3]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def select_cases(target, trainers, fixtures, variants, steps, ranks=1, models=()):
    """The loaded target and its cases, every name checked; what the command line leaves
    out comes from the project's configuration."""
    config = project_config()
    if not models and not fixtures:  # else the command line chooses what the cases run on
        models, fixtures = config.models, config.fixtures
    target_obj = resolve_target(target or config.target)
    trainers, variants = trainers or config.trainers, variants or config.variants
    check_names("trainer", trainers, [t for t in TRAINERS if t in target_obj.trainers()])
    check_names("fixture", fixtures, list(FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    named_models = model_cases(models)
    try:
        return target_obj, build_matrix(target_obj, trainers, fixtures, variants, steps or config.steps, ranks,
                                        config.trainer_overrides, named_models)
    except ValueError as err:
        fail_usage(f"--ranks {ranks}: {err}")


def model_cases(models) -> list:
    """``(name, folder)`` of each model folder, checked; a bad one is a usage error."""
    named = []
    for path in models:
        try:
            folder = check_model_folder(path)
        except ModelFolderError as err:
            fail_usage(f"--model {path}: {err}")
        name = folder.name
        if name in FIXTURES or name in dict(named):
            fail_usage(f"--model {path}: its name {name!r} is already a fixture or another model's; rename the folder")
        named.append((name, folder))
    return named


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
