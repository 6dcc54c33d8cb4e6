"""Run a case on K data-parallel ranks through ``mlx.launch``, and judge the ranks.

The ranks are started by MLX's own launcher, not by this harness:

    mlx.launch --backend ring -n K --starting-port P --cwd DIR \\
        -- python -m mlxth.harness.rank_worker CASE.json DIR {check|trace}

``ring`` on 127.0.0.1 here and in CI; the same command with ``--hosts``
spans machines, and ``--backend nccl`` is what MLX's launcher picks on CUDA
(``MLXTH_LAUNCH_HOSTS`` and ``MLXTH_LAUNCH_BACKEND`` select them; across
machines the scratch folder must be on a filesystem every host sees, since
the ranks write their files there).  Each rank writes its files
(``rank_worker.py``); from them and the launcher's log this module builds
the case's result:

* rank 0's result (trace and checks) is the case's;
* ``ranks-agree``: every rank ended with bitwise identical weights, else
  ``rank-divergence`` naming the first tensor that differs;
* a rank that died (no result, and not one the launcher stopped because
  another died) is the case's error, ``rank-crash``, with the step it died
  in and its exit status; a rank that raised is the case's error with its
  own kind (``exception``, ``non-finite``...), named;
* a run past its time limit is killed, the whole process group at once,
  and is a ``timeout`` naming the step each rank had reached.

Nothing here can hang the run: the launcher is polled against a deadline,
and its process group is killed on the way out whatever happened.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import checks
from .env import environment

LAUNCH_HOSTS_ENV = "MLXTH_LAUNCH_HOSTS"
LAUNCH_BACKEND_ENV = "MLXTH_LAUNCH_BACKEND"
SIGTERM_STATUS = -signal.SIGTERM  # how mlx.launch stops the other ranks once one has failed

_NODE_EXIT = re.compile(r"Node with rank (\d+) exited with code (-?\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
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
    import mlx.core as mx

    return "nccl" if mx.cuda.is_available() else "ring"


def free_port_block(count: int) -> int:
    """A first port P with P..P+count-1 free on 127.0.0.1 and not handed to another case of this run."""
    import socket

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
            "--", sys.executable, "-m", "mlxth.harness.rank_worker", str(case_path), str(outdir), mode]


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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps_done(outdir: Path, rank: int) -> int:
    """Steps the rank finished, counting the check mode's rerun after the checked run."""
    try:
        return len((outdir / f"rank{rank}.steps").read_text().split())
    except OSError:
        return 0


def _where(done: int, steps: int) -> str:
    """Where a rank that finished ``done`` steps stopped, e.g. 'in step 2' or 'in step 1 of the rerun'."""
    run, step = divmod(done, steps)
    if run >= 1 and step == 0:
        return f"after its last step{' of the rerun' if run > 1 else ''}"
    return f"in step {step + 1}" + (" of the rerun" if run else "")


def _how(status) -> str:
    if status is None:
        return "no exit status reported"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def _error_result(case, kind, message, duration, ranks_info, log_tail) -> dict:
    result = {"case": case.to_dict(), "id": case.id, "environment": environment(), "steps": [], "checks": [],
              "error": {"kind": kind, "message": message, "step": None}, "duration_s": round(duration, 3),
              "ranks": ranks_info, "launcher_log": log_tail}
    result["checks"].append({"name": "completes", "status": "fail", "detail": message, "kind": kind})
    return checks.conclude(result)


def ranks_agree(infos) -> dict:
    """The ``ranks-agree`` check: every rank's final weights bitwise identical to rank 0's."""
    base = infos[0]["fingerprint"]
    for info in infos[1:]:
        differ = [k for k in base if info["fingerprint"].get(k) != base[k]]
        if differ:
            return {"name": "ranks-agree", "status": "fail", "kind": "rank-divergence",
                    "detail": f"rank {info['rank']}'s final weights differ from rank 0's in {len(differ)} of "
                              f"{len(base)} tensors (first: {differ[0]})"}
    return {"name": "ranks-agree", "status": "pass", "kind": None,
            "detail": f"{len(infos)} ranks ended with identical weights ({len(base)} tensors)"}


def judge(case, outdir: Path, log_text: str, timed_out: bool, duration: float, timeout: float,
          returncode=None) -> dict:
    """The case's result from the ranks' files and the launcher's log (``returncode``: the
    process's, for a single-process case, which has no launcher)."""
    ranks = case.settings.ranks
    log_text = _ANSI.sub("", log_text)
    infos = [_read_json(outdir / f"rank{r}.json") for r in range(ranks)]
    exits = {int(r): int(code) for r, code in _NODE_EXIT.findall(log_text)}
    if ranks == 1 and returncode is not None:
        exits.setdefault(0, returncode)
    steps = case.settings.steps
    summary = [{"rank": r, "started": (outdir / f"rank{r}.started").exists(), "steps_done": _steps_done(outdir, r),
                "status": (infos[r] or {}).get("status", "died"), "exit": exits.get(r)} for r in range(ranks)]
    tail = " | ".join(log_text.strip().splitlines()[-3:])
    at = ", ".join(f"rank {s['rank']} stuck {_where(s['steps_done'], steps)}" if s["started"]
                   else f"rank {s['rank']} never started" for s in summary)
    if timed_out:
        return _error_result(case, "timeout", f"no result after {timeout:g} s (killed); {at}",
                             duration, summary, tail)
    missing = [s for s in summary if infos[s["rank"]] is None]
    failed = [i for i in infos if i is not None and i["status"] == "error"]
    # A rank gone without its files is the culprit, unless the launcher stopped it (SIGTERM) after
    # another rank failed; a rank that raised is the culprit of the ranks stopped after it.
    culprits = [s for s in missing if s["exit"] != SIGTERM_STATUS] or ([] if failed else missing)
    if culprits:
        died = "; ".join(f"rank {s['rank']} died {_where(s['steps_done'], steps)} ({_how(s['exit'])})"
                         for s in culprits)
        stopped = [s["rank"] for s in missing if s not in culprits]
        note = f"; mlx.launch stopped rank(s) {', '.join(map(str, stopped))}" if stopped else ""
        kind = "rank-crash" if ranks > 1 else "crash"
        return _error_result(case, kind, f"{died}{note}. {tail}".strip(), duration, summary, tail)
    result = _read_json(outdir / "result.json")
    if failed and (result is None or result.get("error") is None):
        first = failed[0]
        return _error_result(case, first["error"]["kind"], f"rank {first['rank']}: {first['error']['message']}",
                             duration, summary, tail)
    if result is None:
        return _error_result(case, "rank-crash", f"rank 0 left no result. {tail}", duration, summary, tail)
    result["ranks"] = summary
    result["duration_s"] = round(duration, 3)
    if result.get("error") is None and ranks > 1:
        result["checks"].append(ranks_agree(infos))
    return checks.conclude(result)


def run_ranks(case, timeout: float, workdir: Path, mode: str = "check", backend: str = "", hosts: str = "") -> dict:
    """Run ``case`` on ``case.settings.ranks`` ranks (``mode``: see rank_worker) and return its result.

    A case of one rank runs as one plain process, with the same worker and
    files, so that equivalence-class members are all run the same way.
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
        cmd = [sys.executable, "-m", "mlxth.harness.rank_worker", str(case_path), str(outdir), mode]
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
