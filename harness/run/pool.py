"""Long-lived worker processes (``serve``) that each run many one-process cases.

A worker pays for importing MLX, mlx-lm and the harness once; ``start_s``
records what that cost.  Each case still gets the isolation of a process of
its own: the worker puts the process back as it was after every case
(``serve.Baseline``), and a worker whose case crashed, hung past its time
limit or was interrupted is killed with its whole process group and
replaced.  The result is judged from the case's files exactly as for a
process of its own (``ranks.judge``), so the failure kinds are the same.
"""

import json
import os
import select
import subprocess
import threading
import time
from pathlib import Path

from .. import torchless
from . import launch
from .ranks import judge, log_excerpt

SERVE = "mlxth.harness.run.serve"
STARTUP_LIMIT = 120  # seconds a worker may take to import everything (18 s seen on a GPU host with torch)


class WorkerGone(Exception):
    """The worker's pipe closed: it exited or was killed."""


class PoolWorker:
    """One ``serve`` process: started at once, ready once it has imported everything."""

    def __init__(self, workdir: Path, target_spec: str, index: int):
        self.log_path = Path(workdir) / f"worker{index}.log"
        self.started = time.perf_counter()
        self.start_s = None
        with open(self.log_path, "w") as log:
            self.proc = launch.spawn(torchless.command(SERVE, target_spec), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, cwd=workdir)
        self._pending = b""

    def _line(self, deadline: float, stop) -> dict:
        """The next reply; ``TimeoutError`` past ``deadline``, ``WorkerGone`` when the pipe closes."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            if stop is not None and stop.is_set():
                raise WorkerGone("interrupted")
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise WorkerGone("exited")
                self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def wait_ready(self, deadline: float, stop=None) -> None:
        self._line(deadline, stop)
        self.start_s = round(time.perf_counter() - self.started, 3)

    def send(self, command: dict) -> None:
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def kill(self) -> int:
        """Kill the worker's process group (before reaping it, so that its id cannot have been reused)
        and close its pipes; its exit status."""
        status = launch.stop_process(self.proc)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        return status


class WorkerPool:
    """Up to ``size`` workers for one run; ``run(case)`` returns the case's judged result."""

    def __init__(self, workdir: Path, target_spec: str, size: int, stop=None):
        self.workdir, self.target_spec, self.stop = Path(workdir), target_spec, stop
        self.idle, self.all = [], []
        self.lock = threading.Lock()

    def _acquire(self) -> PoolWorker:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            worker = PoolWorker(self.workdir, self.target_spec, len(self.all))
            self.all.append(worker)
            return worker

    def _release(self, worker: PoolWorker) -> None:
        with self.lock:
            self.idle.append(worker)

    def start_times(self) -> list:
        """Seconds from spawn to ready of every worker that got ready."""
        return [w.start_s for w in self.all if w.start_s is not None]

    def run(self, case, timeout: float, outdir: Path, log_path: Path, mode: str = "check"):
        """Run ``case`` in a worker; its result, or None when the run was stopped meanwhile.

        ``timeout`` bounds the case; a worker still starting gets ``STARTUP_LIMIT`` if that is longer."""
        worker = self._acquire()
        started, limit = time.perf_counter(), max(timeout, STARTUP_LIMIT)
        timed_out, returncode, alive = False, 0, False
        try:
            if worker.start_s is None:
                worker.wait_ready(started + limit, self.stop)
            started, limit = time.perf_counter(), timeout  # the case's own time; start-up is reported apart
            # The worker runs in its own folder: relative paths (a relative --reports) would miss.
            outdir, log_path = Path(outdir).absolute(), Path(log_path).absolute()
            worker.send({"case": str(outdir / "case.json"), "outdir": str(outdir), "mode": mode,
                         "log": str(log_path)})
            worker._line(started + timeout, self.stop)
            alive = True
        except TimeoutError:
            timed_out = True
        except (WorkerGone, OSError):  # OSError: the pipe broke while sending
            pass
        finally:
            if alive:
                self._release(worker)
            else:
                returncode = worker.kill()
        if self.stop is not None and self.stop.is_set() and not alive:
            return None
        text = log_excerpt(log_path) if log_path.exists() else ""
        if not alive and worker.start_s is None:
            text = log_excerpt(worker.log_path) + text  # it never got ready: its own log says why
        return judge(case, outdir, text, timed_out, time.perf_counter() - started, limit, returncode)

    def close(self) -> None:
        """Kill every worker: idle ones hold nothing worth a graceful exit."""
        with self.lock:
            workers, self.idle = list(self.all), []
        for worker in workers:
            if worker.proc.returncode is None:
                worker.kill()
