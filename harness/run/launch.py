"""Start cases in worker processes: one path for 1..K ranks, and a run of many cases.

A case of one rank is one plain worker process; a case of K ranks is started
by MLX's own launcher, ``mlx.launch`` (``ring`` on 127.0.0.1 here and in CI,
``nccl`` on CUDA; ``MLXTH_LAUNCH_BACKEND`` and ``MLXTH_LAUNCH_HOSTS`` choose).
Either way each rank writes its files into the case's scratch folder and
``ranks.judge`` builds the result from them.  Nothing here can hang the run:
the process is polled against a deadline and its process group is killed on
the way out, whatever happened.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import mlx.core as mx

from ..judge import golden
from .ranks import judge

DEFAULT_TIMEOUT = 300
LAUNCH_HOSTS_ENV = "MLXTH_LAUNCH_HOSTS"
LAUNCH_BACKEND_ENV = "MLXTH_LAUNCH_BACKEND"
WORKER = "mlxth.harness.run.worker"

_ports_lock = threading.Lock()
_ports_given: set = set()


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


def default_backend() -> str:
    """What mlx.launch itself would pick: NCCL on CUDA, ring otherwise."""
    if os.environ.get(LAUNCH_BACKEND_ENV):
        return os.environ[LAUNCH_BACKEND_ENV]
    return "nccl" if mx.cuda.is_available() else "ring"


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
            "--", sys.executable, "-m", WORKER, str(case_path), str(outdir), mode]


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


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_process(case, timeout: float, workdir: Path, mode: str = "check", backend: str = "", hosts: str = "") -> dict:
    """Run ``case`` in worker processes, one per rank (``mode``: see ``worker``); return its result.

    One rank is one plain process; more are started through mlx.launch.  Both
    leave the same files, judged the same way (``ranks.judge``).
    """
    stem = case.id.replace("/", "__")
    outdir = Path(workdir) / f"{stem}.{mode}"
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    case_path = outdir / "case.json"
    case_path.write_text(json.dumps(case.to_dict()))
    ranks = case.settings.ranks
    if ranks > 1:
        cmd = launch_command(case_path, outdir, mode, ranks, backend or default_backend(), free_port_block(ranks),
                             hosts)
    else:
        cmd = [sys.executable, "-m", WORKER, str(case_path), str(outdir), mode]
    log_path = outdir / "launcher.log"
    started = time.perf_counter()
    timed_out, lowered = False, ranks == 1
    with open(log_path, "w") as log:
        # stdin: a pipe left open and empty (the launcher polls its stdin; /dev/null would make it spin).
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=outdir)
        try:
            while proc.poll() is None:
                if time.perf_counter() - started > timeout:
                    timed_out = True
                    break
                if not lowered and all((outdir / f"rank{r}.started").exists() for r in range(ranks)):
                    _lower_priority(proc.pid)
                    lowered = True
                time.sleep(0.05)
        finally:
            _kill_group(proc)  # a hung run, or ranks the launcher left behind
            proc.wait()
            proc.stdin.close()
    duration = time.perf_counter() - started
    return judge(case, outdir, log_path.read_text(errors="replace"), timed_out, duration, timeout, proc.returncode)


def run_cases(cases, *, jobs=1, timeout=DEFAULT_TIMEOUT, snapshots=None, golden_key=None, update=False,
              on_result=None):
    """Run ``cases`` (``jobs`` at a time), each held to its golden under ``snapshots``; return the
    results in the cases' order.  ``on_result(result, done, total)`` follows each case."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlxth-") as tmp, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_process, case, timeout, Path(tmp)): case for case in cases}
        for future in as_completed(futures):
            case = futures[future]
            result = future.result()
            if snapshots is not None:
                result = golden.apply_golden(result, Path(snapshots), golden_key or case.target, update)
            results[case.id] = result
            if on_result is not None:
                on_result(result, len(results), len(cases))
    return [results[c.id] for c in cases]
