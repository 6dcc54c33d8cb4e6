"""Run cases, each in its own worker process, and hold the traces against goldens."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from . import checks, golden
from .env import environment

DEFAULT_TIMEOUT = 300


def _error_result(case, env, kind, message, duration):
    result = {"case": case.to_dict(), "id": case.id, "environment": env, "steps": [], "checks": [],
              "error": {"kind": kind, "message": message, "step": None}, "duration_s": round(duration, 3)}
    result["checks"].append({"name": "completes", "status": "fail", "detail": message, "kind": kind})
    return checks.conclude(result)


def run_in_worker(case, timeout: float, workdir: Path) -> dict:
    """Run one case in a fresh process; a crash or a hang becomes this case's error."""
    stem = case.id.replace("/", "__")
    case_path, result_path = workdir / f"{stem}.case.json", workdir / f"{stem}.result.json"
    case_path.write_text(json.dumps(case.to_dict()))
    cmd = [sys.executable, "-m", "mlxth.harness.worker", str(case_path), str(result_path)]
    started = time.perf_counter()
    # The worker runs in the scratch folder: a checkout's own folders never shadow the installed package.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=workdir)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return _error_result(case, environment(), "timeout", f"no result after {timeout:g} s (killed)",
                             time.perf_counter() - started)
    duration = time.perf_counter() - started
    if proc.returncode == 0 and result_path.exists():
        return json.loads(result_path.read_text())
    tail = " | ".join(output.strip().splitlines()[-3:])
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        return _error_result(case, environment(), "crash", f"worker killed by {name}. {tail}".strip(), duration)
    return _error_result(case, environment(), "exception", f"worker exited with status {proc.returncode}. {tail}",
                         duration)


def _run_one(case, timeout: float, workdir: Path) -> dict:
    if case.settings.ranks > 1:  # data parallel: the ranks start through mlx.launch
        from .distributed import run_ranks

        return run_ranks(case, timeout, workdir)
    return run_in_worker(case, timeout, workdir)


def apply_golden(result: dict, root: Path, golden_key: str, update: bool) -> dict:
    """Add the golden check (7) to a result; with ``update``, (re)write the golden of a passing case."""
    if result["status"] == "error":
        return result
    case = result["case"]
    update = update and case["settings"].get("ranks", 1) == 1  # goldens are single-process traces
    path = golden.golden_path(root, result["environment"]["backend"], golden_key, case["trainer"],
                              case["fixture"], case["variant"])
    others_pass = result["status"] == "pass"
    if update and others_pass:
        golden.write_atomic(path, golden.dumps(golden.trace_of(result)))
        check = {"name": "golden", "status": "pass", "kind": None, "detail": f"written to {path}"}
    elif path.exists() and case["settings"].get("ranks", 1) > 1:
        from .equivalence import golden_check  # a data-parallel run is a member of the golden's class

        check = golden_check(golden.read(path), result)
    elif path.exists():
        check = golden.compare(golden.read(path), result)
    else:
        check = checks.skipped("golden", f"no golden at {path} (run with --update-snapshots to record one)")
    if update and not others_pass:
        check["detail"] += " (not updated: the case fails other checks)"
    result["checks"] = [c for c in result["checks"] if c["name"] != "golden"] + [check]
    result["golden_path"] = str(path)
    return checks.conclude(result)


def run_cases(cases, *, jobs=1, timeout=DEFAULT_TIMEOUT, snapshots=golden.DEFAULT_DIR, golden_key=None,
              update=False, on_result=None):
    """Run ``cases`` (``jobs`` at a time); return their results in the cases' order."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="mlxth-") as tmp, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, case, timeout, Path(tmp)): case for case in cases}
        for future in as_completed(futures):
            case = futures[future]
            result = apply_golden(future.result(), Path(snapshots), golden_key or case.target, update)
            results[case.id] = result
            if on_result is not None:
                on_result(result, len(results), len(cases))
    return [results[c.id] for c in cases]
