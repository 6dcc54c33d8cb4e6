"""What the target adapters share: stepping a library's "train for N steps" function one step at a
time (``StepLoop``, a greenlet suspended at a point the library exposes), routing its console output,
and mapping the standard hyper-parameter names onto its fields.
"""

import collections
import copy
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import fields
from pathlib import Path

try:
    from greenlet import greenlet
except ImportError:  # only the library adapters step with it, and their extras install it; the
    greenlet = None  # reference target (this package too) must load without it

from packaging.version import InvalidVersion, Version

from ...trainers import SPECS
from ..target import UnsupportedSetting

# The standard hyper-parameters of each trainer (the reference trainers' names).
STANDARD = {
    "dpo": ("beta", "loss_type", "label_smoothing"),
    "orpo": ("beta",),
    "simpo": ("beta", "gamma"),
    "kto": ("beta", "desirable_weight", "undesirable_weight"),
    "grpo": ("beta", "loss_type", "num_generations", "max_completion_length", "temperature",
             "epsilon", "epsilon_high", "num_iterations", "scale_rewards"),
}
NOT_OFFERED = object()  # a standard hyper-parameter the library has no equivalent of


def library_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


_PROJECT_VERSION = re.compile(r'^\[project\][^\[]*?^version\s*=\s*["\']([^"\']+)["\']', re.M | re.S)
_DUNDER_VERSION = re.compile(r'^__version__\s*=\s*["\']([^"\']+)["\']', re.M)


def describe_version(module: str, distribution: str) -> str:
    """The version of the code ``import module`` takes, for a report ("not installed", or marked as a checkout)."""
    found, where = code_version(module, distribution)
    if found is None:
        return "not installed"
    return found if where == "installed" else f"{found} (source checkout)"


def code_release(module: str, distribution: str):
    """The release (a ``packaging`` ``Version``) of the code ``import module`` takes, or None."""
    found, _ = code_version(module, distribution)
    try:
        return Version(found) if found else None
    except InvalidVersion:
        return None


def code_version(module: str, distribution: str):
    """``(version, where)`` of the code ``import module`` takes, read without importing it.

    The version comes from the distribution's metadata beside the package (a
    site-packages or ``pip install --target`` folder: ``where`` is
    ``"installed"``), else from the ``pyproject.toml`` or ``__version__`` of a
    source checkout on the path (``"source"``); ``(None, None)`` when the
    module is not importable.  Unlike ``importlib.metadata``, this follows
    ``PYTHONPATH``: a checkout put first is what is reported.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None, None
    package = Path(spec.origin).parent
    for info in sorted(package.parent.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        if _normalise(name) == _normalise(distribution):
            return version, "installed"
    for path, pattern in ((package.parent / "pyproject.toml", _PROJECT_VERSION),
                          (Path(spec.origin), _DUNDER_VERSION)):
        found = pattern.search(path.read_text(errors="replace")) if path.is_file() else None
        if found:
            return found.group(1), "source"
    return library_version(distribution), "installed"


def standard_defaults(trainer: str) -> dict:
    names = STANDARD[trainer]
    return {f.name: f.default for f in fields(SPECS[trainer].config_class) if f.name in names}


def resolve_hyperparameters(library, trainer, settings, offered: dict, fixed: dict, control=()):
    """Map the standard hyper-parameters (defaults + ``settings.extra``) onto a library.

    ``offered`` maps a standard name to the library's field; ``fixed`` gives,
    for a standard name the library has no field for, the value its behaviour
    corresponds to (``NOT_OFFERED`` when it has no equivalent at all).
    Returns ``(standard, library_fields, control)``: the standard values as the
    library is configured, the library's config fields to set, and the
    adapter's own options (``control`` names) taken out of ``extra``.
    Asking for values the library cannot be configured to raises ``UnsupportedSetting`` naming them all.
    """
    extra = dict(settings.extra)
    ctl = {k: extra.pop(k) for k in control if k in extra}
    standard = standard_defaults(trainer)
    for name in list(extra):
        if name in standard:
            standard[name] = extra.pop(name)
    lib_fields, missing = {}, []
    for name, value in list(standard.items()):
        if name in offered:
            lib_fields[offered[name]] = value
            continue
        fixed_value = fixed.get(name, NOT_OFFERED)
        if name in settings.extra and value != fixed_value:
            missing.append(f"{name}={value!r}" + ("" if fixed_value is NOT_OFFERED
                                                  else f" (its behaviour is {name}={fixed_value!r})"))
        if fixed_value is NOT_OFFERED:
            del standard[name]
        else:
            standard[name] = fixed_value
    if missing:
        raise UnsupportedSetting(f"{library} {trainer} has no setting for {', '.join(missing)}")
    lib_fields.update(extra)  # library-specific fields pass through under the library's own names
    return standard, lib_fields, ctl


class _Router:
    """Stands in for sys.stdout or sys.stderr; writes made inside a registered greenlet go to its handler."""

    def __init__(self, stream):
        self._stream = stream
        self.handlers = {}

    def write(self, text):
        handler = self.handlers.get(id(greenlet.getcurrent()))
        if handler is None:
            return self._stream.write(text)
        handler(text)
        return len(text)

    def flush(self):
        if id(greenlet.getcurrent()) not in self.handlers:
            self._stream.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


_ROUTERS = {}  # one router per stream name, reused: a library may keep a reference to it (tqdm does)


def _route(name: str, key: int, handler):
    current = getattr(sys, name)
    router = _ROUTERS.get(name)
    if router is None:
        router = _ROUTERS[name] = _Router(current)
    if current is not router:
        router._stream = current
        setattr(sys, name, router)
    router.handlers[key] = handler


def _unroute(name: str, key: int):
    stream = getattr(sys, name)
    if isinstance(stream, _Router):
        stream.handlers.pop(key, None)
        if not stream.handlers:
            setattr(sys, name, stream._stream)


class StepLoop:
    """Run a library's whole training function as a coroutine, one step at a time.

    ``body()`` runs the library's training in a greenlet (same OS thread as
    the harness: MLX keeps its PRNG state and streams per thread, and a
    stream used from a second thread made the process abort at exit);
    whatever the library exposes at the end of an optimizer step (a callback,
    a log line) calls ``pause(record)``, which hands ``record`` to the
    harness and suspends the library until the harness asks for the next
    step.  ``on_text(text)`` receives what the library prints (stdout and
    stderr); by default the last 200 writes are kept in ``output``, so
    progress bars do not flood the harness's own output.
    """

    def __init__(self, body, on_text=None):
        self._body = body
        self._on_text = on_text or self.output_append
        self._glet = None
        self._done = False
        self.output = collections.deque(maxlen=200)

    def output_append(self, text):
        self.output.append(text)

    def pause(self, record: dict):
        self._glet.parent.switch(("step", record))

    def _main(self):
        try:
            self._body()
            return ("done", None)
        except BaseException as err:  # noqa: BLE001 - handed to the harness
            return ("error", err)

    def _resume(self):
        if self._glet is None:
            self._glet = greenlet(self._main)
        self._glet.parent = greenlet.getcurrent()
        key = id(self._glet)
        _route("stdout", key, self._on_text)  # only while the library runs
        _route("stderr", key, self._on_text)
        try:
            kind, payload = self._glet.switch()
        finally:
            _unroute("stdout", key)
            _unroute("stderr", key)
        if kind == "error":
            self._done = True
            raise payload
        if kind == "done":
            self._done = True
        return kind, payload

    def next(self) -> dict:
        if self._done:
            raise RuntimeError("the library's training loop has already ended")
        kind, payload = self._resume()
        if kind == "done":
            raise RuntimeError("the library's training loop ended before reporting another step")
        return payload

    def finish(self):
        """Let the library run to its end (final saves) after the last step; raise what it raised."""
        while self._glet is not None and not self._done:
            self._resume()


def importable_class(obj):
    """The first class in ``type(obj)``'s MRO that its module exports by name.

    Instrumentation may swap an instance's class for a runtime subclass (the
    harness's ``ModeProbe`` does); a deep copy would inherit that subclass.
    """
    for cls in type(obj).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return cls
    return type(obj)


def frozen_copy(model):
    """A frozen copy of ``model`` as it is now, of its own (uninstrumented) class, in inference mode."""
    ref = copy.deepcopy(model)
    ref.__class__ = importable_class(model)
    ref.freeze()
    ref.eval()
    return ref
