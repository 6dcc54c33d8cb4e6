"""A case's result from the files its ranks left, and the launcher's (or the process's) exit.

* rank 0's result (trace and checks) is the case's;
* ``ranks-agree``: every rank ended with bitwise identical weights, else
  ``rank-divergence`` naming the first tensor that differs;
* a rank that died without its files is the case's error (``rank-crash``, or
  ``crash`` for one process), naming the step it died in and its exit status;
  a rank that raised is the case's error with its own kind;
* a run past its time limit is a ``timeout`` naming the step each rank reached.
"""

import json
import re
import signal
from pathlib import Path

from ..env import environment
from ..judge import checks

SIGTERM_STATUS = -signal.SIGTERM  # how mlx.launch stops the other ranks once one has failed
_NODE_EXIT = re.compile(r"Node with rank (\d+) exited with code (-?\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


TAIL_BYTES = 64 * 1024


def log_excerpt(path: Path, tail_bytes: int = TAIL_BYTES) -> str:
    """What ``judge`` needs of a log, in bounded memory: the launcher's lines on how each rank
    exited (wherever they are) and the last ``tail_bytes`` of the log.  The full log stays on disk."""
    exits = []
    try:
        with open(path, "rb") as fh:
            carry = b""
            while chunk := fh.read(1 << 20):
                lines = (carry + chunk).split(b"\n")
                carry = lines.pop()[-4096:]  # a line still open: its end says how a rank exited
                exits += [line[-512:].decode(errors="replace") for line in lines if b"exited with code" in line]
                del exits[:-256]
            if b"exited with code" in carry:
                exits.append(carry[-512:].decode(errors="replace"))
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return ""
    if size > tail_bytes and "\n" in tail:
        tail = tail.partition("\n")[2]  # drop the line cut in two
    in_tail = set(tail.splitlines())
    return "".join(f"{line}\n" for line in exits if line not in in_tail) + tail


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps_done(outdir: Path, rank: int) -> int:
    """Steps the rank finished, counting the check mode's rerun after the checked run."""
    try:
        return len((outdir / f"rank{rank}.steps").read_text().split())
    except OSError:
        return 0


def where(done: int, steps: int) -> str:
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


def error_result(case, kind, message, duration, ranks_info=None, log_tail="") -> dict:
    """The result of a case that produced no result of its own."""
    result = {"case": case.to_dict(), "id": case.id, "environment": environment(), "steps": [], "checks": [],
              "error": {"kind": kind, "message": message, "step": None}, "duration_s": round(duration, 3)}
    if ranks_info is not None:
        result.update(ranks=ranks_info, launcher_log=log_tail)
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
    summary = [{"rank": r, "started": (outdir / f"rank{r}.started").exists(), "steps_done": steps_done(outdir, r),
                "status": (infos[r] or {}).get("status", "died"), "exit": exits.get(r)} for r in range(ranks)]
    tail = " | ".join(log_text.strip().splitlines()[-3:])
    rank_info = summary if ranks > 1 else None  # a one-process case has no ranks to report
    at = ", ".join(f"rank {s['rank']} stuck {where(s['steps_done'], steps)}" if s["started"]
                   else f"rank {s['rank']} never started" for s in summary)
    if timed_out:
        return error_result(case, "timeout", f"no result after {timeout:g} s (killed); {at}",
                             duration, rank_info, tail)
    missing = [s for s in summary if infos[s["rank"]] is None]
    failed = [i for i in infos if i is not None and i["status"] == "error"]
    # A rank gone without its files is the culprit, unless the launcher stopped it (SIGTERM) after
    # another rank failed; a rank that raised is the culprit of the ranks stopped after it.
    culprits = [s for s in missing if s["exit"] != SIGTERM_STATUS] or ([] if failed else missing)
    who = "rank {}" if ranks > 1 else "the case's process"  # one process has no ranks to name
    if culprits:
        died = "; ".join(f"{who.format(s['rank'])} died {where(s['steps_done'], steps)} ({_how(s['exit'])})"
                         for s in culprits)
        stopped = [s["rank"] for s in missing if s not in culprits]
        note = f"; mlx.launch stopped rank(s) {', '.join(map(str, stopped))}" if stopped else ""
        # One process: killed by a signal is a crash; an exit status of its own is an exception.
        kind = "rank-crash" if ranks > 1 else "crash" if (culprits[0]["exit"] or -1) < 0 else "exception"
        return error_result(case, kind, f"{died}{note}. {tail}".strip(), duration, rank_info, tail)
    result = _read_json(outdir / "result.json")
    if failed and (result is None or result.get("error") is None):
        first = failed[0]
        return error_result(case, first["error"]["kind"], f"rank {first['rank']}: {first['error']['message']}",
                             duration, rank_info, tail)
    if result is None:
        return error_result(case, "rank-crash" if ranks > 1 else "crash", f"{who.format(0)} left no result. {tail}",
                            duration, rank_info, tail)
    if rank_info is not None:
        result["ranks"] = rank_info
    result["duration_s"] = round(duration, 3)
    if result.get("error") is None and ranks > 1:
        result["checks"].append(ranks_agree(infos))
    return checks.conclude(result)
