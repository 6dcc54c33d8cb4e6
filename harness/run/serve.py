"""A pool worker: import MLX, mlx-lm and the harness once, then run one-process cases one after another.

    python -m mlxth.harness.run.serve TARGET_SPEC

``pool.PoolWorker`` starts it in a session of its own.  It answers on the
pipe it got as stdout: first ``{"ready": PID}``, then, for each
command line read on the pipe it got as stdin (``{"case": CASE.json, "outdir": DIR, "mode": ...,
"log": FILE}``), ``{"done": 0}`` once ``worker.main`` has run the case and
left its files in DIR, exactly as a process of its own would.  During a case,
file descriptors 1 and 2 go to FILE; stdin reads nothing.

A case must not see what an earlier one left in the process.  ``Baseline``
records, after the imports, what a case may change and a fresh process would
not have, and puts it back after every case: environment variables, working
folder, ``sys.path``, modules imported from outside the Python installation
(a target file and its helpers), attributes rebound in MLX's, mlx-lm's and
this project's modules and classes (a patch left behind, ``ModeProbe``'s
included), the default device and stream, compilation on or off,
stdout/stderr objects, logging and warning settings, cached environment
facts.  Before each case it reseeds MLX's, NumPy's and Python's generators
from fresh entropy, as a new process seeds them; after it, it releases
MLX's buffers.  Contents changed in place (a dict filled) are not undone.

An exception that escapes a case ends the worker with status 1 (SystemExit:
its own status), as it would end a process of its own; a crash or a hang is
seen by the pool, which kills the worker's process group and starts another.
The worker also exits when the harness that started it has gone.
"""

import gc
import json
import logging
import os
import random
import signal
import sys
import sysconfig
import threading
import time
import traceback
import warnings
from types import ModuleType

import mlx.core as mx
import numpy as np

from ...fixtures import FIXTURES, load_fixture
from .. import env
from ..target import load_target
from . import worker

_INSTALLED = tuple({os.path.realpath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib")
                    if (p := sysconfig.get_paths().get(key))})
# Modules (and the classes they define) whose attributes a case may rebind: put back after each case.
_PATCHABLE = ("mlx.", "mlx_lm.", "mlxth.")


def _namespaces() -> list:
    """The modules of ``_PATCHABLE`` imported now, and the classes each defines."""
    out = []
    for name, module in list(sys.modules.items()):
        if isinstance(module, ModuleType) and (name + ".").startswith(_PATCHABLE):
            out.append(module)
            out += [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == name]
    return out


def _installed(module) -> bool:
    """Whether a module comes with the interpreter or an installed distribution (kept between cases)."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return True  # built in, a namespace, or an extension module (these cannot be unloaded)
    return os.path.realpath(path).startswith(_INSTALLED)


class Baseline:
    """What the process looks like between cases; ``restore`` puts it back after a case."""

    def __init__(self):
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.modules = set(sys.modules)
        self.attributes = [(ns, dict(vars(ns))) for ns in _namespaces()]
        self.device = mx.default_device()
        self.compile = "MLX_DISABLE_COMPILE" not in os.environ
        self.streams = (sys.stdout, sys.stderr)
        root = logging.getLogger()
        self.logging = (list(root.handlers), root.level)
        self.warnings = list(warnings.filters)

    def fresh(self) -> None:
        """Before a case: generators seeded from entropy, as a new process seeds them."""
        random.seed()
        np.random.seed()
        mx.random.seed(int.from_bytes(os.urandom(8), "little") >> 1)
        env.environment.cache_clear()

    def restore(self) -> None:
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        sys.path[:] = self.path
        for name in [n for n in sys.modules if n not in self.modules]:
            if not _installed(sys.modules[name]):
                del sys.modules[name]
        for namespace, saved in self.attributes:  # rebinding is undone; contents changed in place are not
            current = vars(namespace)
            for name in [n for n, v in current.items() if n not in saved and not n.startswith("__")
                         and not isinstance(v, ModuleType)]:
                delattr(namespace, name)
            for name, value in saved.items():
                if current.get(name) is not value:
                    setattr(namespace, name, value)
        mx.set_default_device(self.device)
        mx.set_default_stream(mx.default_stream(self.device))
        (mx.enable_compile if self.compile else mx.disable_compile)()
        sys.stdout, sys.stderr = self.streams
        handlers, level = self.logging
        root = logging.getLogger()
        root.handlers[:] = handlers
        root.setLevel(level)
        warnings.filters[:] = self.warnings
        env.environment.cache_clear()
        gc.collect()
        mx.clear_cache()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _watch_parent(parent: int) -> None:
    """End this worker (and its children) once the harness that started it is gone."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(0, signal.SIGKILL)


def warm(target_spec: str) -> None:
    """Import what the run's cases import: the target and what it brings, and what loading each fixture
    brings (its architecture, the tokenizer's machinery)."""
    try:
        load_target(target_spec)
        for name in FIXTURES:
            load_fixture(name)
    except Exception:  # noqa: BLE001 - what cannot load is each case's error, reported there
        pass
    gc.collect()


def serve(target_spec: str) -> int:
    commands = os.fdopen(os.dup(0), "r")
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    quiet = os.open(os.devnull, os.O_RDONLY)
    os.dup2(quiet, 0)  # a case that reads stdin reads nothing, as before, and never a command
    os.close(quiet)
    os.dup2(2, 1)  # stray output between cases goes to the worker's own log
    idle = os.dup(2)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    warm(target_spec)
    baseline = Baseline()
    gc.freeze()  # what the imports made lives as long as the worker: later collections skip it
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in commands:
        command = json.loads(line)
        _flush()
        log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        baseline.fresh()
        os.chdir(command["outdir"])
        try:
            worker.main([command["case"], command["outdir"], command["mode"]])
        except SystemExit as stop:  # the status a process of its own would end with
            _flush()
            os._exit(0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1)
        except BaseException:  # noqa: BLE001 - as an uncaught exception ends a process of its own
            traceback.print_exc()
            _flush()
            os._exit(1)
        _flush()
        os.dup2(idle, 1)
        os.dup2(idle, 2)
        baseline.restore()
        reply.write(json.dumps({"done": 0}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
