"""The target interface: the one way the harness talks to an implementation under test.

A *target* is a trainer implementation (this project's reference trainers, or
another library's, through an adapter).  It needs three things:

    class MyTarget:
        name = "my-lib"
        def trainers(self) -> tuple[str, ...]: ...
        def prepare(self, trainer, model, tokenizer, rows, settings) -> TargetRun: ...

``prepare`` receives the model exactly as a user has it (loaded from disk, in
inference mode), the tokenizer, the dataset rows (with token ids) and the
case's ``Settings``; it returns a ``TargetRun`` whose ``step()`` takes one
optimizer step and returns that step's record: at least ``{"loss": float}``,
plus any metrics, named as TRL names them.  Optionally a run exposes
``reference_model`` (a separate frozen reference, checked for changes) and
``rows_for_step(k)`` (the rows step ``k`` will consume, 1-based; enables the
loss-recomputation check).

Targets are found by name in the ``mlxth.targets`` entry-point group (the
reference target is registered there by this project's pyproject), or given
as an import spec ``package.module:object`` or ``path/to/file.py:object``.
"""

import importlib
import importlib.util
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, Sequence

ENTRY_POINT_GROUP = "mlxth.targets"


@dataclass
class Settings:
    """Hyper-parameters every target is asked to honour for a case."""

    steps: int = 3
    learning_rate: float = 1e-4
    batch_size: int = 4
    grad_accumulation_steps: int = 1
    max_length: int = 64
    seed: int = 0
    lora_rank: int = 0
    compile: bool = False
    dtype: str = "float32"
    # Data-parallel ranks (launched with mlx.launch); ``batch_size`` is per rank, so a
    # step holds batch_size x grad_accumulation_steps x ranks rows.
    ranks: int = 1
    # Trainer-specific hyper-parameters (beta, loss_type, ...), passed through.
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


class TargetRun(Protocol):
    def step(self) -> dict: ...


class Target(Protocol):
    name: str

    def trainers(self) -> Sequence[str]: ...

    def prepare(self, trainer: str, model, tokenizer, rows, settings: Settings) -> TargetRun: ...


class TargetError(LookupError):
    """A target name or spec that cannot be resolved."""


def registered_targets() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_spec(spec: str):
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise TargetError(f"target file {where} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"_mlxth_target_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise TargetError(f"target spec {spec!r}: {where} has no attribute {attr!r}") from None


def load_target(name: str):
    """Resolve a target by entry-point name or import spec; return an instance."""
    registered = registered_targets()
    if name in registered:
        obj = registered[name].load()
    elif ":" in name:
        try:
            obj = _load_spec(name)
        except TargetError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever breaks the import, the target is unusable
            raise TargetError(f"target spec {name!r} cannot be imported: {type(err).__name__}: {err}") from err
    else:
        known = ", ".join(sorted(registered)) or "none"
        raise TargetError(f"unknown target {name!r}; registered targets: {known}")
    target = obj() if isinstance(obj, type) or callable(obj) and not hasattr(obj, "prepare") else obj
    if not hasattr(target, "prepare") or not hasattr(target, "trainers"):
        raise TargetError(f"target {name!r} does not implement prepare() and trainers()")
    return target
