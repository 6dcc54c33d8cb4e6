"""Which cases a command runs: what it names, over the project's configuration.

One resolution for the CLI and the pytest plugin, so both run the same
matrix: the target, trainers, fixtures, model folders, variants and steps a
caller leaves out come from ``[tool.mlx-trainer-harness]``, and every name
is checked against what exists.
"""

from ..fixtures import FIXTURES
from .model import TRAINERS, VARIANTS, build_matrix, scenario_names
from .target import load_target
from .user_model import ModelFolderError, check_model_folder


class SelectionError(ValueError):
    """A name that does not exist, a bad model folder, or a batch that cannot be split; one line."""


def check_names(kind, given, known):
    unknown = [g for g in given if g not in known]
    if unknown:
        raise SelectionError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


def model_cases(models, checked=False) -> list:
    """``(name, folder)`` of each model folder (checked unless ``checked``)."""
    named = []
    for path in models:
        try:
            folder = path if checked else check_model_folder(path)
        except ModelFolderError as err:
            raise SelectionError(f"--model {path}: {err}") from None
        if folder.name in FIXTURES or folder.name in dict(named):
            raise SelectionError(f"--model {path}: its name {folder.name!r} is already a fixture's or another "
                                 "model's; rename the folder")
        named.append((folder.name, folder))
    return named


def select(config, target=None, trainers=(), fixtures=(), variants=(), steps=None, ranks=1, models=(), scenarios=()):
    """``(loaded target, cases)``.  Raises ``SelectionError``, or ``TargetError`` for the target."""
    from_config = not models and not fixtures  # else the caller chooses what the cases run on
    if from_config:
        models, fixtures = config.models, config.fixtures
    target_obj = load_target(target or config.target)
    trainers, variants = trainers or config.trainers, variants or config.variants
    check_names("trainer", trainers, [t for t in TRAINERS if t in target_obj.trainers()])
    check_names("fixture", fixtures, list(FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    check_names("scenario", scenarios, scenario_names())
    named = model_cases(models, checked=from_config)  # the configuration's are checked as it is read
    try:
        return target_obj, build_matrix(target_obj, trainers, fixtures, variants, steps or config.steps, ranks,
                                        config.trainer_overrides, named, scenarios)
    except ValueError as err:
        raise SelectionError(f"--ranks {ranks}: {err}") from None
