"""``harness bench --against``: baseline and candidate steps interleaved in one run.

Each side is a worker process (``python -m mlxth.harness.tools.abtest``) that
loads the case, takes its warm-up steps and then times one step per request;
the parent alternates the sides (ABBA), so a burst of machine noise lands on
both.  The sides differ only in what the baseline imports (``baseline.py``).
The worker keeps its stdout for the protocol (one JSON line per request) and
sends everything else the target prints to stderr, which goes to a log file.
"""

import inspect
import json
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from ... import trainers
from .. import torchless
from ..env import environment
from ..model import Case
from .bench import CaseBench, Rounds, summarize
from .gate import verdict

WORKER = "mlxth.harness.tools.abtest"


class SideError(RuntimeError):
    """A side's worker failed: its message ends with the last line the worker logged."""


class Side:
    def __init__(self, name, case, rounds: Rounds, env, workdir: Path, timeout: float):
        self.name, self.timeout = name, timeout
        case_path = workdir / f"{name}.case.json"
        case_path.write_text(json.dumps({"case": case.to_dict(), "rounds": rounds.__dict__}))
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(torchless.command(WORKER, case_path), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=workdir,
                                     start_new_session=True, text=True)

    def _fail(self, what):
        self.log.flush()
        lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
        raise SideError(f"{self.name}: {what}: {lines[-1] if lines else 'no output'}")

    def read(self) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.close()
            self._fail(f"no answer within {self.timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._fail(f"worker exited with status {self.proc.returncode}")
        reply = json.loads(line)
        if "error" in reply:
            self._fail("error")
        return reply

    def ask(self, command: str) -> dict:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait()
            self._fail(f"worker exited with status {self.proc.returncode}")
        return self.read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
        self.log.close()


def ab_case(case, rounds: Rounds, baseline_env: dict, candidate_env: dict, threshold_pct: float,
            baseline_spec: str = "", timeout: float = 600.0) -> dict:
    """Time ``case`` on both sides, interleaved; return both summaries and the gate's verdict.

    The baseline side loads the target from ``baseline_spec`` (default: the case's own)."""
    base_case = replace(case, target_spec=baseline_spec or case.target_spec)
    rounds = rounds.resolved()
    with tempfile.TemporaryDirectory(prefix="mlxth-ab-") as tmp:
        sides = {}
        try:
            for name, side_case, env in (("baseline", base_case, baseline_env), ("candidate", case, candidate_env)):
                sides[name] = Side(name, side_case, rounds, env, Path(tmp), timeout)
            ready = {name: side.read() for name, side in sides.items()}
            steps = {name: [] for name in sides}
            bounds = {name: [] for name in sides}
            paired = []
            while rounds.more(len(steps["baseline"]), sum(map(sum, steps.values())) / 1000):
                order = ("baseline", "candidate") if len(paired) % 2 == 0 else ("candidate", "baseline")
                for name in order:
                    steps[name].append(sides[name].ask("step")["ms"])
                if len(steps["baseline"]) % rounds.bound_every == 1 or rounds.bound_every == 1:
                    for name in order:
                        bounds[name].append(sides[name].ask("bound")["ms"])
                    paired.append(len(steps["baseline"]) - 1)
                else:
                    paired.append(None)
            finals = {name: side.ask("finish") for name, side in sides.items()}
        finally:
            for side in sides.values():
                side.close()
    marks = [i for i in paired if i is not None]
    summaries = {name: summarize(case, steps[name], bounds[name], ready[name]["warm_ms"], finals[name]["tokens"],
                                 finals[name]["peak_bytes"], marks, rounds.timer, finals[name]["wall_ms"])
                 for name in sides}
    result = {**summaries["candidate"], "baseline": summaries["baseline"],
              "environment": ready["candidate"]["environment"],
              "code": {name: ready[name]["code"] for name in sides}}
    result["verdict"] = verdict(case.id, steps["baseline"], steps["candidate"], threshold_pct, paired=True)
    return result


def code_origin(target) -> dict:
    """Where this side imported the code under test from (the target's module, the reference trainers)."""
    cls = type(target.obj)
    files = [v.__code__.co_filename for v in vars(cls).values() if inspect.isfunction(v)]
    return {"target": files[0] if files else cls.__module__, "trainers": str(Path(trainers.__path__[0]).resolve())}


def worker(case_path: str) -> int:
    """One side: load the case, warm up, then answer ``step`` / ``bound`` / ``finish`` / ``stop``."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the target prints goes to the log, never into the protocol
    sys.stdout = sys.stderr

    def reply(**fields):
        proto.write(json.dumps(fields) + "\n")
        proto.flush()

    spec = json.loads(Path(case_path).read_text())
    try:
        timed = CaseBench(Case.from_dict(spec["case"]), Rounds(**spec["rounds"]))
    except Exception as err:  # noqa: BLE001 - any failure to start is this side's error
        print(f"cannot start the case: {type(err).__name__}: {err}", file=sys.stderr)
        reply(error=f"{type(err).__name__}: {err}")
        return 1
    reply(warm_ms=timed.warm_ms, environment=environment(), code=code_origin(timed.target))
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "step":
                reply(ms=timed.step())
            elif command == "bound":
                reply(ms=timed.bound())
            elif command == "finish":
                reply(tokens=timed.tokens, peak_bytes=mx.get_peak_memory(), wall_ms=timed.wall_ms)
            elif command == "stop":
                break
        except Exception as err:  # noqa: BLE001 - a failing step ends this side, with its reason logged
            print(f"{command} failed: {type(err).__name__}: {err}", file=sys.stderr)
            reply(error=f"{type(err).__name__}: {err}")
            return 1
    timed.close()
    return 0


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1]))
