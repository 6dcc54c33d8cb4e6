"""Start cases in worker processes of their own: one path for 1..K ranks; every process group tracked.

A case of one rank is one plain worker process; a case of K ranks is started
by MLX's own launcher, ``mlx.launch`` (``ring`` on 127.0.0.1 here and in CI,
``nccl`` on CUDA; ``MLXTH_LAUNCH_BACKEND`` and ``MLXTH_LAUNCH_HOSTS`` choose).
Either way each rank writes its files into the case's scratch folder and
``ranks.judge`` builds the result from them.  Nothing here can hang the run:
the process is polled against a deadline and its process group is killed on
the way out, whatever happened.  Every group started here (these, and the
pool's workers) is registered until reaped, so that ``kill_all`` can stop
them at once when the run is interrupted.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

from .. import torchless
from .ranks import judge, log_excerpt

DEFAULT_TIMEOUT = 300
LAUNCH_HOSTS_ENV = "MLXTH_LAUNCH_HOSTS"
LAUNCH_BACKEND_ENV = "MLXTH_LAUNCH_BACKEND"
WORKER = "mlxth.harness.run.worker"

_ports_lock = threading.Lock()
_ports_given: set = set()
_live_lock = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
_live: set = set()  # started process groups not reaped yet


def spawn(cmd, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, registered for ``kill_all``."""
    with _live_lock:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        _live.add(proc)
    return proc


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc) -> int:
    """Kill ``proc``'s process group, reap it and forget it; its exit status."""
    kill_group(proc)
    status = proc.wait()
    with _live_lock:
        _live.discard(proc)
    return status


def kill_all() -> int:
    """Kill every registered process group now (the run was interrupted); how many there were.

    Safe in a signal handler: the groups are killed, not reaped (their owners reap them)."""
    with _live_lock:
        procs = [p for p in _live if p.returncode is None]
    for proc in procs:
        kill_group(proc)
    return len(procs)


def live_groups() -> int:
    with _live_lock:
        return sum(1 for p in _live if p.returncode is None)


def launcher() -> list:
    """The ``mlx.launch`` command of the running interpreter's installation."""
    script = Path(sys.executable).with_name("mlx.launch")
    if script.exists():
        return [str(script)]
    found = shutil.which("mlx.launch")
    if found:
        return [found]
    # The console script's own entry point, when only the module is installed.
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]


def default_backend(ranks: int = 1) -> str:
    """What mlx.launch itself would pick: NCCL on CUDA with a GPU per rank, ring otherwise (NCCL
    refuses two ranks on one GPU)."""
    if os.environ.get(LAUNCH_BACKEND_ENV):
        return os.environ[LAUNCH_BACKEND_ENV]
    return "nccl" if mx.cuda.is_available() and mx.device_count(mx.gpu) >= ranks else "ring"


def free_port_block(count: int) -> int:
    """A first port P with P..P+count-1 free on 127.0.0.1 and not handed to another case of this run."""
    rng = random.Random()
    with _ports_lock:
        for _ in range(200):
            base = rng.randrange(20000, 60000 - count)
            block = set(range(base, base + count))
            if block & _ports_given:
                continue
            try:
                for port in block:
                    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                        sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _ports_given.update(block)
            return base
    raise RuntimeError(f"no block of {count} free ports found")


def launch_command(case_path: Path, outdir: Path, mode: str, ranks: int, backend: str, port: int,
                   hosts: str = "") -> list:
    hosts = hosts or os.environ.get(LAUNCH_HOSTS_ENV, "")
    where = ["--hosts", hosts, "-n", str(ranks // len(hosts.split(",")))] if hosts else ["-n", str(ranks)]
    return [*launcher(), "--backend", backend, *where, "--starting-port", str(port), "--cwd", str(outdir),
            "--env", f"MLXTH_DIST_BACKEND={backend}",
            "--", *torchless.command(WORKER, case_path, outdir, mode)]


def _lower_priority(pid: int) -> None:
    """Lower the priority of the launcher's threads (not of the ranks, already started).

    mlx.launch relays each rank's output from a thread that polls without
    blocking; on a 2-core machine that polling would take CPU from the ranks.
    Niceness is per thread on Linux; elsewhere this does nothing.
    """
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), 19)
    except (OSError, AttributeError, ValueError):
        pass


def case_folder(case, workdir: Path, mode: str) -> Path:
    """The case's empty scratch folder, holding only ``case.json`` (what a worker reads)."""
    outdir = Path(workdir) / f"{case.id.replace('/', '__')}.{mode}"
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    (outdir / "case.json").write_text(json.dumps(case.to_dict()))
    return outdir


def run_process(case, timeout: float, workdir: Path, mode: str = "check", backend: str = "", hosts: str = "",
                log_path=None, stop=None) -> dict:
    """Run ``case`` in worker processes, one per rank (``mode``: see ``worker``); return its result.

    One rank is one plain process; more are started through mlx.launch.  Both
    leave the same files, judged the same way (``ranks.judge``).  The output
    goes to ``log_path`` (default: the case's folder); only its tail is read
    back.  Returns None when ``stop`` was set meanwhile (the run was interrupted).
    """
    outdir = case_folder(case, workdir, mode)
    case_path = outdir / "case.json"
    ranks = case.settings.ranks
    if ranks > 1:
        cmd = launch_command(case_path, outdir, mode, ranks, backend or default_backend(ranks), free_port_block(ranks),
                             hosts)
    else:
        cmd = torchless.command(WORKER, case_path, outdir, mode)
    log_path = Path(log_path) if log_path else outdir / "launcher.log"
    started = time.perf_counter()
    timed_out, lowered = False, ranks == 1
    with open(log_path, "w") as log:
        # stdin: a pipe left open and empty (the launcher polls its stdin; /dev/null would make it spin).
        proc = spawn(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=outdir)
        try:
            while proc.poll() is None and not (stop is not None and stop.is_set()):
                if time.perf_counter() - started > timeout:
                    timed_out = True
                    break
                if not lowered and all((outdir / f"rank{r}.started").exists() for r in range(ranks)):
                    _lower_priority(proc.pid)
                    lowered = True
                time.sleep(0.05)
        finally:
            stop_process(proc)  # a hung run, or ranks the launcher left behind
            proc.stdin.close()
    if stop is not None and stop.is_set():
        return None
    duration = time.perf_counter() - started
    return judge(case, outdir, log_excerpt(log_path), timed_out, duration, timeout, proc.returncode)
