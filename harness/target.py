"""The target interface: the one way the harness talks to an implementation under test.

A target is a trainer implementation: this project's reference trainers, or
another library's through an adapter.  It is resolved once, by entry-point
name (group ``mlxth.targets``) or import spec (``package.module:Object`` or
``path/to/file.py:Object``), into a ``LoadedTarget`` that gives every optional
feature below its default, so no caller probes for attributes.
"""

import importlib
import importlib.util
import re
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Optional, Protocol, Sequence

from .model import Settings

ENTRY_POINT_GROUP = "mlxth.targets"


class TargetRun(Protocol):
    """One prepared training run.  Only ``step`` is required; the rest is optional."""

    def step(self) -> dict:
        """Take one optimizer step; return at least ``{"loss": float}`` plus metrics named as TRL names them."""

    # Optional:
    reference_model: object  # a separate frozen reference model, checked for changes (default: None)

    def rows_for_step(self, k: int) -> list:
        """The rows step ``k`` (1-based) consumes; enables the loss-recompute check."""

    def hyperparameters(self) -> dict:
        """The run's resolved hyper-parameters under the standard names (default: the reference's)."""

    def completions(self) -> list:
        """GRPO: the completions (token ids) sampled by the last step; the bench's lower bound runs on them."""

    def close(self) -> None:
        """Release what the run holds (a library's training loop suspended between steps)."""


class Target(Protocol):
    """A trainer implementation.  ``name``, ``trainers`` and ``prepare`` are required."""

    name: str

    def trainers(self) -> Sequence[str]: ...

    def prepare(self, trainer: str, model, tokenizer, rows, settings: Settings) -> TargetRun:
        """Receive the model as a user has it (loaded, in inference mode), the tokenizer, the data
        set's rows (with token ids) and the case's settings; return a run."""

    # Optional:
    golden_key: str  # the folder its goldens are filed under (default: name)
    distribution: str  # its PyPI distribution, for --target-version (default: none)
    data_parallel: bool  # trains over mlx.launch ranks (--ranks); the default matrix then has a 2-rank case

    def version(self) -> str: ...

    def unsupported(self) -> str:
        """Why the installed release of the library cannot be driven at all (one line); "" when it can."""

    def documented_hyperparameters(self, trainer: str) -> list:
        """``(name, value)`` pairs each of which must change the trace (conformance's dead-config probe)."""

    def workaround(self) -> Optional[tuple]:
        """``(extra_settings, description)`` that lets a target run where it otherwise cannot."""


class UnsupportedSetting(ValueError):
    """Raised by a target's ``prepare`` for hyper-parameters its library has no setting for (the
    case's kind is ``unsupported-setting``: the path the case exists for is missing)."""


class TargetError(LookupError):
    """A target name or spec that cannot be resolved."""


class LoadedRun:
    """A target's run with every optional feature defaulted."""

    def __init__(self, run):
        self.run = run
        self.reference_model = getattr(run, "reference_model", None)

    def step(self) -> dict:
        return self.run.step()

    def rows_for_step(self, k: int):
        method = getattr(self.run, "rows_for_step", None)
        return None if method is None else method(k)

    def hyperparameters(self):
        method = getattr(self.run, "hyperparameters", None)
        return None if method is None else method()

    def completions(self):
        method = getattr(self.run, "completions", None)
        return None if method is None else method()

    def close(self) -> None:
        method = getattr(self.run, "close", None)
        if method is not None:
            method()


class LoadedTarget:
    """A resolved target: the object, the spec it was loaded from, and every optional feature defaulted."""

    def __init__(self, obj, spec: str):
        self.obj, self.spec = obj, spec
        self.name = obj.name
        self.golden_key = getattr(obj, "golden_key", None) or obj.name
        self.distribution = getattr(obj, "distribution", None)
        self.data_parallel = bool(getattr(obj, "data_parallel", False))

    def trainers(self) -> tuple:
        return tuple(self.obj.trainers())

    def prepare(self, trainer, model, tokenizer, rows, settings) -> LoadedRun:
        return LoadedRun(self.obj.prepare(trainer, model, tokenizer, rows, settings))

    def version(self) -> str:
        method = getattr(self.obj, "version", None)
        return method() if method is not None else None

    def unsupported(self) -> str:
        method = getattr(self.obj, "unsupported", None)
        return (method() or "") if method is not None else ""

    def documented_hyperparameters(self, trainer) -> list:
        method = getattr(self.obj, "documented_hyperparameters", None)
        return list(method(trainer)) if method is not None else []

    def workaround(self):
        method = getattr(self.obj, "workaround", None)
        return method() if method is not None else None


def registered_targets() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def missing_extra(entry) -> Optional[str]:
    """For a target registered by a distribution with an extra of the target's name (``pip install
    'dist[name]'``): the install hint when a requirement of that extra is not installed."""
    dist = getattr(entry, "dist", None)
    if dist is None or entry.name not in (dist.metadata.get_all("Provides-Extra") or []):
        return None
    missing = []
    for requirement in dist.requires or []:
        name, _, marker = requirement.partition(";")
        if not re.search(r"""extra\s*==\s*["']%s["']""" % re.escape(entry.name), marker):
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", name.strip()).group()
        try:
            version(name)
        except PackageNotFoundError:
            missing.append(name)
    if not missing:
        return None
    return (f"target {entry.name!r} needs {', '.join(missing)} (not installed): "
            f"pip install '{dist.metadata['Name']}[{entry.name}]'")


def _load_spec(spec: str):
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise TargetError(f"target file {where} does not exist")
        # The file's folder is importable, as pytest makes a test's rootdir importable, so an
        # adapter at a library's root imports the checkout's package, not an installed copy.
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_spec = importlib.util.spec_from_file_location(f"_mlxth_target_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TargetError(f"target spec {spec!r}: {where} has no attribute {attr!r}") from None


def absolute_spec(spec: str) -> str:
    """A file spec made absolute, so that it means the same in a worker running elsewhere."""
    where, sep, attr = spec.rpartition(":")
    if sep and where.endswith(".py"):
        return f"{Path(where).resolve()}:{attr}"
    return spec


def load_target(spec: str) -> LoadedTarget:
    """Resolve a target by entry-point name or import spec."""
    registered = registered_targets()
    if spec in registered:
        hint = missing_extra(registered[spec])
        if hint:
            raise TargetError(hint)
        try:
            obj = registered[spec].load()
        except Exception as err:  # noqa: BLE001 - whatever breaks the import, the target is unusable
            raise TargetError(f"target {spec!r} cannot be imported: {type(err).__name__}: {err}") from err
    elif ":" in spec:
        try:
            obj = _load_spec(spec)
        except TargetError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever breaks the import, the target is unusable
            raise TargetError(f"target spec {spec!r} cannot be imported: {type(err).__name__}: {err}") from err
    else:
        known = ", ".join(sorted(registered)) or "none"
        raise TargetError(f"unknown target {spec!r}; registered targets: {known}")
    target = obj() if isinstance(obj, type) or callable(obj) and not hasattr(obj, "prepare") else obj
    if not hasattr(target, "prepare") or not hasattr(target, "trainers"):
        raise TargetError(f"target {spec!r} does not implement prepare() and trainers()")
    return LoadedTarget(target, absolute_spec(spec))
