"""A project's harness configuration: the ``[tool.mlx-trainer-harness]`` table of its pyproject.toml.

The project root is found as pytest finds its rootdir: from the working
directory up, the first folder whose ``pyproject.toml`` holds the table, else
the first folder with a ``pyproject.toml`` at all, else the working directory.
Goldens, reports, a target file and model folders are relative to that root,
never to the install, so a wheel behaves as a checkout does.  Command-line
flags override the table; ``ConfigError`` names the file and the key.
"""

import math
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from ..fixtures import FIXTURES
from .model import SETTINGS_FIELDS, TRAINERS, VARIANTS, Settings, scenario_names
from .user_model import ModelFolderError, check_model_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

TABLE = "mlx-trainer-harness"
DEFAULT_TARGET = "reference"
DEFAULT_STEPS = 3
# Case settings a project may set per trainer; dtype, LoRA and compilation are variants.
TRAINER_SETTINGS = ("learning_rate", "batch_size", "grad_accumulation_steps", "max_length", "seed")


class ConfigError(ValueError):
    """A ``[tool.mlx-trainer-harness]`` table that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    file: Path = None  # the pyproject.toml read, or None
    target: str = DEFAULT_TARGET
    snapshots: Path = None
    reports: Path = None
    trainers: tuple = ()
    fixtures: tuple = ()
    variants: tuple = ()
    scenarios: tuple = ()
    models: tuple = ()  # mlx-lm model folders, as absolute paths
    steps: int = DEFAULT_STEPS
    # trainer -> {Settings field: value, "extra": {hyper-parameter: value}}
    trainer_overrides: dict = field(default_factory=dict)
    # "<trainer>.<name>" of hyper-parameters that are no standard name: passed to the target as they are
    nonstandard: tuple = ()
    keys: tuple = ()  # the keys the table sets

    def key(self, name: str) -> str:
        return table_key(self.file, name)


def table_key(file, name: str) -> str:
    """How an error names one of a table's keys."""
    return f"{file}: [tool.{TABLE}] {name}"


def read_pyproject(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def harness_table(path: Path):
    """The ``[tool.mlx-trainer-harness]`` table of a pyproject.toml, or None."""
    data = read_pyproject(path)
    return data.get("tool", {}).get(TABLE) if isinstance(data.get("tool"), dict) else None


def _has_table(path: Path) -> bool:
    try:
        return harness_table(path) is not None
    except (ConfigError, OSError):
        return True  # a broken file that may hold the table: read it, so its error is reported


def project_root(start=None) -> Path:
    here = Path(start or Path.cwd()).resolve()
    folders = (here, *here.parents)
    for folder in folders:
        if (folder / "pyproject.toml").is_file() and _has_table(folder / "pyproject.toml"):
            return folder
    for folder in folders:
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def expected_findings(snapshots) -> Path:
    """The list of conformance findings a project accepts, kept beside its goldens."""
    return Path(snapshots) / "expected_findings.json"


class _Reader:
    def __init__(self, file: Path, root: Path):
        self.file, self.root = file, root

    def fail(self, key, problem):
        raise ConfigError(f"{table_key(self.file, key)}: {problem}")

    def string(self, table, key, default):
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def path(self, table, key, default) -> Path:
        return (self.root / self.string(table, key, default)).resolve()

    def names(self, table, key, known) -> tuple:
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"expected a list of names, got {value!r}")
        if known is not None:
            unknown = [v for v in value if v not in known]
            if unknown:
                self.fail(key, f"unknown {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
        return tuple(value)

    def target(self, table) -> str:
        spec = self.string(table, "target", DEFAULT_TARGET)
        where, sep, attr = spec.rpartition(":")
        if sep and where.endswith(".py"):
            path = self.root / where
            if not path.is_file():
                self.fail("target", f"{where} does not exist (paths are relative to {self.root})")
            return f"{path.resolve()}:{attr}"
        return spec

    def steps(self, table) -> int:
        value = table.get("steps", DEFAULT_STEPS)
        if type(value) is not int or not 1 <= value <= 1000:
            self.fail("steps", f"expected an integer from 1 to 1000, got {value!r}")
        return value

    def per_trainer(self, table, key):
        value = table.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, f"expected a table of trainers ([tool.{TABLE}.{key}.<trainer>])")
        for trainer, entries in value.items():
            if trainer not in TRAINERS:
                self.fail(f"{key}.{trainer}", f"unknown trainer; known: {', '.join(TRAINERS)}")
            if not isinstance(entries, dict):
                self.fail(f"{key}.{trainer}", f"expected a table, got {entries!r}")
        return value

    def trainer_overrides(self, table) -> dict:
        types = {f.name: f.type for f in fields(Settings)}
        out = {}
        for trainer, entries in self.per_trainer(table, "settings").items():
            for name, value in entries.items():
                where = f"settings.{trainer}.{name}"
                if name not in TRAINER_SETTINGS:
                    why = " (a variant sets it)" if name in types else ""
                    self.fail(where, f"not a per-trainer setting{why}; allowed: {', '.join(TRAINER_SETTINGS)}")
                want = types[name]
                ok = (isinstance(value, (int, float)) and type(value) is not bool if want is float
                      else type(value) is int)
                if not ok:
                    self.fail(where, f"expected {'a number' if want is float else 'an integer'}, got {value!r}")
                if not math.isfinite(value):
                    self.fail(where, f"expected a finite number, got {value!r}")
                if name == "seed" and not 0 <= value < 2**32:
                    self.fail(where, f"expected an integer from 0 to 2**32 - 1, got {value!r}")
                if name != "seed" and value <= 0:
                    self.fail(where, f"must be positive, got {value!r}")
                out.setdefault(trainer, {})[name] = float(value) if want is float else value
        self.nonstandard = []
        for trainer, entries in self.per_trainer(table, "hyperparameters").items():
            for name, value in entries.items():
                self.hyperparameter(trainer, name, value)
            out.setdefault(trainer, {})["extra"] = dict(entries)
        return out

    def hyperparameter(self, trainer, name, value):
        """Check a standard hyper-parameter's value against the reference trainer's field; note other names."""
        from .adapters.reference import config_fields  # only when a table sets hyper-parameters: no MLX before

        where = f"hyperparameters.{trainer}.{name}"
        if isinstance(value, dict):
            self.fail(where, "expected a value, got a table")
        if name in SETTINGS_FIELDS:
            place = f"settings.{trainer}" if name in TRAINER_SETTINGS else "a variant"
            self.fail(where, f"a case setting, not a hyper-parameter: {place} sets it")
        spec = config_fields(trainer).get(name)
        if spec is None:
            self.nonstandard.append(f"{trainer}.{name}")
            return
        default = spec.default if spec.default is not MISSING else None
        kind = type(default) if default is not None else spec.type
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float and not (number and math.isfinite(value)):
            self.fail(where, f"expected a finite number, got {value!r}")
        if kind is int and type(value) is not int:
            self.fail(where, f"expected an integer, got {value!r}")
        if kind in (str, bool) and type(value) is not kind:
            self.fail(where, f"expected {'a string' if kind is str else 'true or false'}, got {value!r}")
        choices = spec.metadata.get("choices")
        if choices and value not in choices:
            self.fail(where, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")

    def models(self, table) -> tuple:
        out = []
        for entry in self.names(table, "models", None):
            try:
                out.append(check_model_folder(self.root / entry))
            except ModelFolderError as err:
                self.fail("models", f"{entry}: {err} (paths are relative to {self.root})")
        return tuple(out)


KEYS = ("target", "snapshots", "reports", "trainers", "fixtures", "variants", "scenarios", "models", "steps",
        "settings", "hyperparameters")


def load_config(start=None) -> ProjectConfig:
    """The configuration of the project around ``start`` (default: the working directory)."""
    root = project_root(start)
    file = root / "pyproject.toml"
    table = harness_table(file) if file.is_file() else None
    if table is None:
        return ProjectConfig(root=root, file=file if file.is_file() else None,
                             snapshots=root / "snapshots", reports=root / "reports")
    reader = _Reader(file, root)
    if not isinstance(table, dict):
        reader.fail("", "expected a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        reader.fail(unknown[0], f"unknown key; known: {', '.join(KEYS)}")
    return ProjectConfig(
        root=root, file=file, target=reader.target(table),
        snapshots=reader.path(table, "snapshots", "snapshots"), reports=reader.path(table, "reports", "reports"),
        trainers=reader.names(table, "trainers", TRAINERS), fixtures=reader.names(table, "fixtures", FIXTURES),
        variants=reader.names(table, "variants", tuple(VARIANTS)),
        scenarios=reader.names(table, "scenarios", scenario_names()), models=reader.models(table),
        steps=reader.steps(table), trainer_overrides=reader.trainer_overrides(table),
        nonstandard=tuple(reader.nonstandard), keys=tuple(table))
