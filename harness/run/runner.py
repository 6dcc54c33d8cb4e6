"""Run a list of cases and hold each to its golden as it finishes; stop cleanly when interrupted.

One-process cases run in a ``pool`` of long-lived workers (``jobs`` at a
time); data-parallel cases keep their own ``mlx.launch`` path.  Results are
judged and held to their goldens in the calling thread, in the order they
finish, and handed to ``on_result`` (which rewrites the reports).

``stop_on_signals`` turns SIGINT and SIGTERM into a ``Stop``: every worker's
process group is killed at once, the cases that were running come back as
``interrupted`` and those not started as ``not-run``, and the scratch folder
is removed as on any other exit.
"""

import queue
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..env import environment
from ..judge import golden
from ..judge.checks import EXPLANATIONS
from . import launch
from .pool import WorkerPool
from .ranks import steps_done, where

UNFINISHED = ("interrupted", "not-run")


class Stop(threading.Event):
    """Set when the run must end now; ``reason`` says why (a signal's name)."""

    reason = None

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
            self.set()


@contextmanager
def stop_on_signals(stop: Stop):
    """While inside, SIGINT and SIGTERM set ``stop`` and kill every worker (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        stop.request(signal.Signals(signum).name)
        launch.kill_all()

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def unfinished_result(case, status: str, message: str, duration: float = 0.0) -> dict:
    """The result of a case the run stopped (``interrupted``) or never started (``not-run``)."""
    return {"case": case.to_dict(), "id": case.id, "environment": environment(), "steps": [], "checks": [],
            "error": None, "status": status, "duration_s": round(duration, 3),
            "failure": {"kind": status, "check": "completes", "message": message,
                        "explanation": EXPLANATIONS[status]}}


def run_cases(cases, *, jobs=1, timeout=launch.DEFAULT_TIMEOUT, snapshots=None, golden_key=None, update=False,
              on_result=None, logs=None, stop=None, timing=None):
    """Run ``cases`` (``jobs`` at a time), each held to its golden under ``snapshots``; return the
    results in the cases' order.  ``on_result(result, done, total)`` follows each case; ``logs``: a
    folder for each case's full output (empty ones are removed); ``timing``: a dict that receives
    ``worker_start_s``, the start-up (imports) of each pool worker."""
    stop = stop if stop is not None else Stop()
    todo, finished = queue.SimpleQueue(), queue.SimpleQueue()
    for case in cases:
        todo.put(case)
    started, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="mlxth-") as tmp:
        workdir = Path(tmp)
        pool = WorkerPool(workdir, cases[0].target_spec or cases[0].target if cases else "", jobs, stop)

        def run_one(case):
            log_path = (Path(logs) if logs else workdir) / f"{case.id.replace('/', '__')}.log"
            if case.settings.ranks > 1:
                return launch.run_process(case, timeout, workdir, log_path=log_path, stop=stop), log_path
            outdir = launch.case_folder(case, workdir, "check")
            return pool.run(case, timeout, outdir, log_path), log_path

        def work():
            while not stop.is_set():
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                started[case.id] = time.perf_counter()
                try:
                    finished.put((case, *run_one(case)))
                except BaseException as err:  # noqa: BLE001 - a fault of the harness itself: raised below
                    finished.put((case, err, None))
                    return

        threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, min(jobs, len(cases))))]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads) or not finished.empty():
                try:
                    case, result, log_path = finished.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(result, BaseException):
                    raise result
                if result is None:  # stopped while it ran
                    duration = time.perf_counter() - started[case.id]
                    outdir = workdir / f"{case.id.replace('/', '__')}.check"
                    at = (where(steps_done(outdir, 0), case.settings.steps) if (outdir / "rank0.started").exists()
                          else "before its first step")
                    result = unfinished_result(case, "interrupted", f"stopped by {stop.reason} after "
                                               f"{duration:.1f} s, {at}", duration)
                elif snapshots is not None:
                    result = golden.apply_golden(result, Path(snapshots), golden_key or case.target, update)
                _keep_log(result, log_path, logs)
                results[case.id] = result
                if on_result is not None:
                    on_result(result, len(results), len(cases))
        finally:
            if len(results) < len(cases):  # interrupted, or a fault of the harness: end the threads now
                stop.request("an error in the harness")
                pool.close()
            for thread in threads:
                thread.join()
            pool.close()  # idle workers, and any released after the first close
        if timing is not None:
            timing["worker_start_s"] = pool.start_times()
    for case in cases:
        if case.id not in results:
            results[case.id] = unfinished_result(case, "not-run", f"not started: the run was stopped by "
                                                                  f"{stop.reason}")
    return golden.golden_moved([results[c.id] for c in cases])


def _keep_log(result, log_path, logs) -> None:
    """Name the case's full log in its result, or remove it when the case printed nothing."""
    if not logs or log_path is None or not log_path.exists():
        return
    if log_path.stat().st_size == 0:
        log_path.unlink()
    else:
        result["log"] = str(log_path)
