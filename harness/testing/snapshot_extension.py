"""Syrupy extension over the harness's golden traces, so that pytest and ``harness run`` share one truth.

Built on syrupy's ``SingleFileSnapshotExtension`` (one text file per
snapshot): a per-case subclass knows its golden's path (the case, not the
test, decides where the file is), matching is the harness's own golden
check (``golden.compare``), and ``pytest --snapshot-update`` rewrites a
golden byte for byte as ``harness run --update-snapshots`` would.  Nothing
is ever discovered as unused, so goldens no test selects are never deleted.
The folder: ``root=``, else ``$MLXTH_SNAPSHOTS``, else the project's
(``[tool.mlx-trainer-harness] snapshots`` of the project around pytest's
rootdir, as the CLI finds it).  syrupy is imported here, so only a session
that uses goldens needs it.

    assert result == golden_snapshot(snapshot, result)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syrupy.data import SnapshotCollection, SnapshotCollections
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from .. import testing
from ..judge import golden
from ..model import VARIANTS
from ..project import load_config
from ..target import registered_targets

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion
    from syrupy.location import PyTestLocation

ROOT_ENV = "MLXTH_SNAPSHOTS"


class GoldenRefused(ValueError):
    """The received data cannot be recorded as (or compared with) this golden."""


def snapshot_root(root=None) -> Path:
    """The golden folder: ``root``, else ``$MLXTH_SNAPSHOTS``, else the extension's default, else
    the project's (around pytest's rootdir, or the working directory)."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env)
    if GoldenTraceExtension.default_root is not None:
        return Path(GoldenTraceExtension.default_root)
    return load_config(testing.rootdir).snapshots


def golden_key_of(target: str) -> str:
    """The key a target's goldens are filed under: the CLI uses ``target.golden_key``, else its name."""
    entry = registered_targets().get(target)
    if entry is None:
        return target
    obj = entry.load()
    return getattr(obj, "golden_key", None) or target


def _is_result(data: dict) -> bool:
    return isinstance(data.get("case"), dict)


def _as_result(trace: dict) -> dict:
    """The fields of a case result that :func:`golden.compare` reads, from a trace."""
    trainer = _case_parts(trace["case"])[1] if trace.get("case") else ""
    return {"environment": trace["environment"], "steps": trace["steps"],
            "case": {"settings": trace["settings"], "trainer": trainer}}


def _case_parts(case_id: str):
    """``(target, trainer, fixture, variant, scenario)`` of a trace's case id,
    ``target/trainer/fixture/variant[/scenario]`` (a target spec may hold slashes)."""
    head, _, last = case_id.rpartition("/")
    case_id, scenario = (case_id, "") if last in VARIANTS else (head, last)
    return (*case_id.rsplit("/", 3), scenario)


class GoldenTraceExtension(SingleFileSnapshotExtension):
    """Compare a case result with its golden trace; record it under ``--snapshot-update``.

    Use a per-case subclass from :meth:`for_result` or :meth:`for_case`: the
    base class has no golden path.
    """

    default_root: Path | None = None
    file_extension = "json"
    _write_mode = WriteMode.TEXT

    # Set on per-case subclasses.
    golden_file: Path | None = None
    root: Path | None = None
    case_id: str | None = None
    backend: str | None = None
    # Under --snapshot-update, only byte-identical goldens match (so they are
    # rewritten exactly as the CLI would).
    exact: bool = False

    # -- per-case classes ---------------------------------------------------

    @classmethod
    def for_case(cls, *, backend: str, target: str, trainer: str, fixture: str, variant: str,
                 root=None, golden_key: str | None = None, exact: bool = False,
                 scenario: str = "") -> type[GoldenTraceExtension]:
        """A subclass bound to the golden of one case (``target`` is the case's target name; ``scenario``
        its scenario's name, empty for the trainer's defaults)."""
        base = snapshot_root(root)
        key = golden_key or golden_key_of(target)
        tail = f"{variant}/{scenario}" if scenario else variant
        attrs = {
            "golden_file": golden.golden_path(base, backend, key, trainer, fixture, variant, scenario),
            "root": base,
            "case_id": f"{target}/{trainer}/{fixture}/{tail}",
            "backend": backend,
            "exact": exact,
            "__module__": cls.__module__,
        }
        return type(f"{cls.__name__}[{key}/{trainer}/{fixture}/{tail}@{backend}]", (cls,), attrs)

    @classmethod
    def for_result(cls, data: dict, *, root=None, golden_key: str | None = None,
                   exact: bool = False) -> type[GoldenTraceExtension]:
        """A subclass bound to the golden of the case that ``data`` (a result or a trace) belongs to."""
        if _is_result(data):
            case = data["case"]
            target, trainer, fixture, variant = case["target"], case["trainer"], case["fixture"], case["variant"]
            scenario = case.get("scenario", "")
        else:
            target, trainer, fixture, variant, scenario = _case_parts(data["case"])
        return cls.for_case(backend=data["environment"]["backend"], target=target, trainer=trainer,
                            fixture=fixture, variant=variant, root=root, golden_key=golden_key, exact=exact,
                            scenario=scenario)

    @classmethod
    def _path(cls) -> Path:
        if cls.golden_file is None:
            raise TypeError(f"{cls.__name__} has no golden path: use GoldenTraceExtension.for_result(result) "
                            "or golden_snapshot(snapshot, result)")
        return Path(cls.golden_file)

    @classmethod
    def _relative(cls) -> str:
        path = cls._path()
        try:
            return str(path.relative_to(cls.root)) if cls.root is not None else str(path)
        except ValueError:
            return str(path)

    # -- serialisation ------------------------------------------------------

    def serialize(self, data: Any, *, exclude=None, include=None, matcher=None) -> str:
        if not isinstance(data, dict) or "environment" not in data or "steps" not in data:
            raise GoldenRefused(f"{type(self).__name__} takes a case result (worker.run_case) "
                                f"or its trace (golden.trace_of), not {type(data).__name__}")
        if _is_result(data):
            if data.get("status") == "error" or data.get("error") is not None:
                error = data.get("error") or {}
                raise GoldenRefused(f"case {data.get('id')} errored ({error.get('kind')}: {error.get('message')}); "
                                    "an errored case has no golden")
            failing = [c for c in data.get("checks", ()) if c["name"] != "golden" and c["status"] == "fail"]
            if failing:
                raise GoldenRefused(f"case {data.get('id')} fails other checks, so it is not compared with or "
                                    "recorded as a golden: "
                                    + "; ".join(f"{c['name']}: {c['detail']}" for c in failing))
            trace = golden.trace_of(data)
        else:
            trace = data
        if self.case_id is not None and trace["case"] != self.case_id:
            raise GoldenRefused(f"trace of case {trace['case']} given to the golden of {self.case_id}")
        if self.backend is not None and trace["environment"]["backend"] != self.backend:
            raise GoldenRefused(f"trace taken on {trace['environment']['backend']} given to a "
                                f"{self.backend} golden")
        return golden.dumps(trace)

    # -- comparison and report ----------------------------------------------

    def check(self, *, serialized_data: str, snapshot_data: str) -> dict:
        """The golden check (as :func:`golden.compare` gives it) of received vs recorded text."""
        try:
            want = json.loads(snapshot_data)
        except json.JSONDecodeError as err:
            return {"name": "golden", "status": "fail", "kind": "golden-invalid",
                    "detail": f"golden {self._path()}: line {err.lineno}: invalid JSON ({err.msg})"}
        return golden.compare(want, _as_result(json.loads(serialized_data)))

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        if self.exact:
            return serialized_data == snapshot_data
        return self.check(serialized_data=serialized_data, snapshot_data=snapshot_data)["status"] == "pass"

    def diff_lines(self, serialized_data: Any, snapshot_data: Any):
        if not snapshot_data:
            yield (f"no golden at {self._path()}: record it with `pytest --snapshot-update` "
                   "or `harness run --update-snapshots`")
            return
        check = self.check(serialized_data=serialized_data, snapshot_data=snapshot_data)
        yield f"golden {self._path()}: {check['status']}: {check['detail']}"
        if check["status"] == "pass" and self.exact:
            yield "(within tolerance, but not byte-identical)"
        yield from super().diff_lines(serialized_data, snapshot_data)

    # -- storage ------------------------------------------------------------

    @classmethod
    def get_location(cls, *, test_location: PyTestLocation, index=0) -> str:
        return str(cls._path())

    @classmethod
    def get_snapshot_name(cls, *, test_location: PyTestLocation, index=0) -> str:
        # Starts with the test's own name so syrupy can relate the two.
        return f"{test_location.snapshot_name} -> golden {cls._relative()}"

    @classmethod
    def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
        # A golden's path never relates to the test's module; it is the case's.
        return True

    def is_snapshot_location(self, *, location: str) -> bool:
        return self.golden_file is not None and Path(location) == self._path()

    def discover_snapshots(self, *, test_location: PyTestLocation, ignore_extensions=None) -> SnapshotCollections:
        # Nothing is discovered, so no golden is ever "unused" and none is deleted.
        return SnapshotCollections()

    def delete_snapshots(self, *, snapshot_location: str, snapshot_names: set[str]) -> None:
        # Goldens outlive the tests that happen to select them.
        return None

    @classmethod
    def write_snapshot_collection(cls, *, snapshot_collection: SnapshotCollection, name_order=None) -> None:
        data = next(iter(snapshot_collection)).data
        if not isinstance(data, str):
            raise TypeError(f"golden data must be text, got {type(data).__name__}")
        golden.write_atomic(Path(snapshot_collection.location), data)


def golden_snapshot(snapshot: SnapshotAssertion, data: dict, *, root=None,
                    golden_key: str | None = None) -> SnapshotAssertion:
    """``snapshot`` bound to the golden of ``data``'s case: ``assert result == golden_snapshot(snapshot, result)``."""
    extension = GoldenTraceExtension.for_result(data, root=root, golden_key=golden_key,
                                                exact=bool(snapshot.update_snapshots))
    return snapshot.use_extension(extension)
