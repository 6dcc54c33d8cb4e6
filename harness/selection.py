"""Which cases a command runs: what it names, over the project's configuration.

One resolution for the CLI and the pytest plugin, so both run the same
matrix: the target, trainers, fixtures, model folders, variants and steps a
caller leaves out come from ``[tool.mlx-trainer-harness]``, and every name
is checked against what exists.
"""

from ..fixtures import FIXTURES
from .model import SETTINGS_FIELDS, TRAINERS, VARIANTS, build_matrix, scenario_names
from .target import TargetError, load_target
from .user_model import ModelFolderError, check_model_folder


class SelectionError(ValueError):
    """A name that does not exist, a bad model folder, or a batch that cannot be split; one line."""


def check_names(kind, given, known):
    unknown = [g for g in given if g not in known]
    if unknown:
        raise SelectionError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


def standard_names(trainer: str) -> list:
    """The hyper-parameters a trainer has under the standard names (its settings aside)."""
    from .adapters.reference import config_fields

    return [name for name in config_fields(trainer) if name not in SETTINGS_FIELDS]


def configured_target(config, target=None):
    """The target named, else the table's (``config``: None when one is named); a table's that cannot
    be loaded names its key."""
    try:
        return load_target(target or config.target)
    except TargetError as err:
        if target or "target" not in config.keys:
            raise
        raise TargetError(f"{config.key('target')}: {err}") from None


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
    target_obj = configured_target(config, target)
    given_trainers = trainers
    trainers, variants = trainers or config.trainers, variants or config.variants
    scenarios = scenarios or config.scenarios
    try:
        check_names("trainer", trainers, [t for t in TRAINERS if t in target_obj.trainers()])
    except SelectionError as err:  # the table's trainers, where the target lacks one: name the key
        raise SelectionError(str(err) if given_trainers else f"{config.key('trainers')}: {err}") from None
    check_names("fixture", fixtures, list(FIXTURES))
    check_names("variant", variants, list(VARIANTS))
    check_names("scenario", scenarios, scenario_names())
    named = model_cases(models, checked=from_config)  # the configuration's are checked as it is read
    if target_obj.name == "reference":  # its trainers take the standard names only
        for key in config.nonstandard:
            trainer, name = key.split(".", 1)
            if not trainers or trainer in trainers:
                raise SelectionError(f"{config.key('hyperparameters.' + key)}: not a hyper-parameter of the "
                                     f"reference {trainer} trainer; known: {', '.join(standard_names(trainer))}")
    try:
        cases = build_matrix(target_obj, trainers, fixtures, variants, steps or config.steps, ranks,
                             config.trainer_overrides, named, scenarios)
    except ValueError as err:
        raise SelectionError(f"--ranks {ranks}: {err}") from None
    if not cases:
        asked = [f"{what} {', '.join(names)}" for what, names in (
            ("trainers", trainers), ("fixtures", fixtures or [n for n, _ in named]), ("variants", variants),
            ("scenarios", scenarios)) if names]
        raise SelectionError(f"no case selected: no {target_obj.name} case has {'; '.join(asked)} "
                             "(a scenario runs in fp32 on its own fixture; `harness list` names them)")
    return target_obj, cases
