"""``harness mutate``: this project's own mutation score.

Each mutant of the catalogue (``mutants.toml``: a small, realistic regression
of one file of ``trainers/`` and the failure kinds a good harness reports for
it) is applied to a copy of the project's ``harness/``, ``trainers/``,
``fixtures/`` and ``snapshots/``; the default ``harness run`` then runs there in
a fresh process, with the copy mapped to ``mlxth.*``, and its ``report.json``
says whether the mutant was caught and with which kinds.  Unmodified copies are
rerun to count false alarms.
"""

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from ... import fixtures, trainers
from ..judge.checks import EXPLANATIONS
from .bisect import package_shim

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CATALOGUE = Path(__file__).with_name("mutants.toml")
TRAINER_FILES = ("core.py", "reference.py", "losses.py", "grpo.py", "grpo_loss.py", "dpo.py", "orpo.py", "kto.py", "simpo.py",
                 "batching.py", "parallel.py")
# Every failure kind a case can report (the checks' own table, so the two cannot disagree).
KINDS = tuple(EXPLANATIONS)
NEEDS = ("recompute", "hp-cases", "dead-knob", "grpo-paths", "kto-z", "warm-fixture", "equivalence", "ranks", "lora",
         "bf16", "compiled", "config-golden", "preflight", "basics")
REQUIRED = ("id", "file", "old", "new", "description", "kinds", "needs")
# The gate (``--gate``): shares of the catalogue, and false alarms over the reruns.
THRESHOLDS = {"caught": 0.95, "right_kind": 0.90, "false_alarms": 0}
# ``harness run`` options this command sets itself.
RESERVED = ("--reports", "--snapshots", "--update-snapshots", "--target", "--target-version")
DEFAULT_TIMEOUT = 1800.0
_RUNNING = set()  # pids of the harness runs in flight, stopped on Ctrl-C


class CatalogueError(ValueError):
    """A catalogue entry that is malformed or does not apply to the current trainers."""


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    description: str
    kinds: tuple
    needs: str
    seen: str = ""

    def apply(self, source: str) -> str:
        """The mutated text of ``self.file`` (whose current text is ``source``)."""
        count = source.count(self.old)
        if count != 1:
            raise CatalogueError(f"mutant {self.id}: its old text occurs {count} times in trainers/{self.file}, "
                                 f"not once")
        mutated = source.replace(self.old, self.new)
        try:
            same = ast.dump(ast.parse(mutated)) == ast.dump(ast.parse(source))
        except SyntaxError as err:
            raise CatalogueError(f"mutant {self.id}: trainers/{self.file} no longer parses ({err.msg}, "
                                 f"line {err.lineno})") from None
        if same:
            raise CatalogueError(f"mutant {self.id}: the edit changes no code of trainers/{self.file}")
        return mutated


def load_catalogue(path=None) -> list:
    """The catalogue's mutants, every entry checked (``CatalogueError`` names the file and entry)."""
    path = Path(path or CATALOGUE)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise CatalogueError(f"{path}: {err}") from None
    entries = data.get("mutant")
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(f"{path}: no [[mutant]] entries")
    mutants, seen_ids = [], set()
    for n, entry in enumerate(entries, 1):
        where = f"{path}: mutant #{n} ({entry.get('id', '?')})"
        missing = [k for k in REQUIRED if k not in entry]
        unknown = sorted(set(entry) - set(REQUIRED) - {"seen"})
        if missing or unknown:
            raise CatalogueError(f"{where}: " + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])))
        if entry["id"] in seen_ids:
            raise CatalogueError(f"{where}: duplicate id")
        if entry["file"] not in TRAINER_FILES:
            raise CatalogueError(f"{where}: field file: {entry['file']!r} is not one of {', '.join(TRAINER_FILES)}")
        bad = [k for k in entry["kinds"] if k not in KINDS] if isinstance(entry["kinds"], list) else ["(not a list)"]
        if bad or not entry["kinds"]:
            raise CatalogueError(f"{where}: field kinds: unknown {', '.join(bad) or '(empty)'}; "
                                 f"known: {', '.join(KINDS)}")
        if entry["needs"] not in NEEDS:
            raise CatalogueError(f"{where}: field needs: {entry['needs']!r} is not one of {', '.join(NEEDS)}")
        seen_ids.add(entry["id"])
        mutants.append(Mutant(**{**entry, "kinds": tuple(entry["kinds"])}))
    return mutants


def project_sources() -> dict:
    """The folders a mutant's copy is made of: this installation's harness/, trainers/ and fixtures/."""
    return {"harness": Path(__file__).resolve().parents[1], "trainers": Path(trainers.__file__).resolve().parent,
            "fixtures": Path(fixtures.__file__).resolve().parent}


def check_catalogue(mutants, trainers_dir=None) -> None:
    """Every mutant applies exactly once to the current trainers (raises ``CatalogueError``)."""
    trainers_dir = Path(trainers_dir or project_sources()["trainers"])
    for m in mutants:
        m.apply((trainers_dir / m.file).read_text())


# ----------------------------------------------------------------------------
# One harness run on a (mutated) copy of the project.
# ----------------------------------------------------------------------------


def _copy_tree(dest: Path, sources: dict, snapshots: Path):
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, src in sources.items():
        shutil.copytree(src, dest / name, ignore=ignore, symlinks=True)
    if Path(snapshots).is_dir():
        shutil.copytree(snapshots, dest / "snapshots")
    else:
        (dest / "snapshots").mkdir()


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (harness run starts each case worker in its own session)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True).stdout
    children = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> list:
    """Freeze the run (so it starts nothing more), then kill it and everything it started; the pids killed."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return []
    killed = [pid, *_descendants(pid)]
    for p in killed:
        try:
            os.killpg(p, signal.SIGKILL)  # a session leader: its whole group
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return killed


def _run(cmd, cwd, env, timeout):
    """(exit code, output, pids killed); a run past ``timeout`` is killed with every process it started
    (exit None)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _RUNNING.add(proc.pid)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, []
    except subprocess.TimeoutExpired:
        killed = _kill_tree(proc.pid)
        out, _ = proc.communicate()
        return None, out + f"\n(killed after {timeout:g} s)", killed
    finally:
        if proc.poll() is None:  # interrupted: leave nothing running
            _kill_tree(proc.pid)
            proc.wait()
        _RUNNING.discard(proc.pid)


def run_copy(mutant, run_args, snapshots, sources=None, timeout=DEFAULT_TIMEOUT) -> dict:
    """``harness run RUN_ARGS`` on a copy of the project with ``mutant`` applied (None: unmodified)."""
    sources = sources or project_sources()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlxth-mutate-") as tmp:
        tmp = Path(tmp)
        tree, reports = tmp / "tree", tmp / "reports"
        _copy_tree(tree, sources, snapshots)
        if mutant is not None:
            target = tree / "trainers" / mutant.file
            target.write_text(mutant.apply(target.read_text()))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(package_shim(tree, tmp / "shim")), env.get("PYTHONPATH", "")]
                                            ).rstrip(os.pathsep)
        cmd = [sys.executable, "-m", "mlxth.harness.cli", "run", "--reports", str(reports),
               "--snapshots", str(tree / "snapshots"), *run_args]
        code, out, killed = _run(cmd, tree, env, timeout)
        found = sorted(reports.glob("*/report.json"))
        report = json.loads(found[-1].read_text()) if found else None
    result = judge(mutant, code, report, out, time.perf_counter() - started)
    if killed:
        result["killed"] = killed
    return result


def _case_kinds(case) -> list:
    kinds = [c["kind"] for c in case["checks"] if c["status"] == "fail" and c.get("kind")]
    if case["failure"] and case["failure"]["kind"] not in kinds:
        kinds.insert(0, case["failure"]["kind"])
    return kinds


def judge(mutant, code, report, output, duration) -> dict:
    """A run's verdict: caught (exit 1, some case failed), survived (exit 0), or broken (anything else)."""
    failing = [c for c in (report or {}).get("cases", []) if c["status"] != "pass"]
    result = {"id": mutant.id if mutant else None, "exit": code, "duration_s": round(duration, 1),
              "cases": {c["id"]: c["failure"]["kind"] for c in failing},
              "checks": {c["id"]: _case_kinds(c) for c in failing},
              "messages": {c["id"]: c["failure"]["message"][:300] for c in failing}}
    if code == 1 and report is not None and failing:
        result["status"] = "caught"
    elif code == 0 and report is not None:
        result["status"] = "survived"
    else:
        result["status"] = "broken"
        result["reason"] = (output or "").strip().splitlines()[-1:] or [""]
    if mutant is not None:
        rescore(mutant, result)
    return result


# A case that only drifted from its golden says "changed", and names no fault: beside cases that name
# the listed kind it does not make the catch wrong; alone it is not a named catch.
NEUTRAL_KINDS = ("golden-drift",)


def rescore(mutant, result) -> dict:
    """Set ``right_kind`` (every failing case reports a listed kind or a neutral one, and at least one
    a listed kind) and ``listed_kind_failed`` of ``result`` against ``mutant``'s kinds."""
    caught = result["status"] == "caught"
    kinds = list(result["cases"].values())
    result["right_kind"] = (caught and all(k in mutant.kinds or k in NEUTRAL_KINDS for k in kinds)
                            and any(k in mutant.kinds for k in kinds))
    # Caught with the wrong kind although a listed kind failed in every failing case: the check order hid it.
    result["listed_kind_failed"] = caught and all(
        any(k in mutant.kinds for k in kinds) for kinds in result["checks"].values())
    return result


# ----------------------------------------------------------------------------
# The catalogue, the reruns, the summary.
# ----------------------------------------------------------------------------


@dataclass
class Score:
    mutants: list
    results: list = field(default_factory=list)
    reruns: list = field(default_factory=list)

    def summary(self) -> dict:
        n = len(self.results)
        caught = sum(r["status"] == "caught" for r in self.results)
        right = sum(bool(r.get("right_kind")) for r in self.results)
        alarms = sum(r["status"] != "survived" for r in self.reruns)
        out = {"mutants": n, "caught": caught, "right_kind": right,
               "survived": sum(r["status"] == "survived" for r in self.results),
               "broken": sum(r["status"] == "broken" for r in self.results),
               "caught_share": caught / n if n else 0.0, "right_kind_share": right / n if n else 0.0,
               "reruns": len(self.reruns), "false_alarms": alarms, "thresholds": THRESHOLDS}
        out["gate"] = bool(n) and (out["caught_share"] >= THRESHOLDS["caught"]
                                   and out["right_kind_share"] >= THRESHOLDS["right_kind"]
                                   and alarms <= THRESHOLDS["false_alarms"])
        return out

    def to_json(self, run_args) -> dict:
        by_id = {m.id: m for m in self.mutants}
        results = [{**r, "file": by_id[r["id"]].file, "expected": list(by_id[r["id"]].kinds),
                    "needs": by_id[r["id"]].needs, "description": by_id[r["id"]].description} for r in self.results]
        return {"run_args": list(run_args), "summary": self.summary(), "mutants": results, "reruns": self.reruns}


def score(mutants, run_args=(), reruns=10, jobs=1, snapshots=None, timeout=DEFAULT_TIMEOUT, on_result=None) -> Score:
    """Run every mutant, then ``reruns`` unmodified copies; ``on_result(kind, result)`` follows each."""
    out = Score(list(mutants))
    sources = project_sources()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for kind, items, results in (("mutant", mutants, out.results), ("rerun", [None] * reruns, out.reruns)):
            futures = [pool.submit(run_copy, m, list(run_args), snapshots, sources, timeout) for m in items]
            for future in futures:
                results.append(future.result())
                if on_result:
                    on_result(kind, results[-1])
    except BaseException:  # Ctrl-C: start nothing more and stop what runs
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in list(_RUNNING):
            _kill_tree(pid)
        raise
    finally:
        pool.shutdown(wait=True)
    return out


def rescored(path, mutants):
    """``(Score, run_args)`` of the runs in an earlier ``mutation.json``, judged against ``mutants``
    (every mutant of the file must be in the catalogue)."""
    try:
        data = json.loads(Path(path).read_text())
        results, reruns, run_args = data["mutants"], data["reruns"], data["run_args"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CatalogueError(f"{path}: not a mutation.json of harness mutate ({err})") from None
    by_id = {m.id: m for m in mutants}
    unknown = [r["id"] for r in results if r["id"] not in by_id]
    if unknown:
        raise CatalogueError(f"{path}: mutant(s) not in the catalogue: {', '.join(unknown)}")
    kept = ("id", "exit", "duration_s", "cases", "checks", "messages", "status", "reason", "killed")
    out = Score([by_id[r["id"]] for r in results], reruns=reruns)
    out.results = [rescore(by_id[r["id"]], {k: r[k] for k in kept if k in r}) for r in results]
    return out, run_args


def _kinds_text(cases: dict) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(Counter(cases.values()).items()))


def table(score_: Score, fmt="simple") -> str:
    by_id = {m.id: m for m in score_.mutants}
    rows = []
    for r in score_.results:
        m = by_id[r["id"]]
        verdict = r["status"] + (" (right kind)" if r.get("right_kind") else
                                 " (wrong kind)" if r["status"] == "caught" else "")
        rows.append([m.id, m.file, verdict, _kinds_text(r["cases"]) or "-", ", ".join(m.kinds), m.needs])
    return tabulate(rows, headers=["mutant", "file", "result", "reported kinds (cases)", "expected", "needs"],
                    tablefmt=fmt)


def todo(score_: Score, fmt="simple") -> str:
    """Survivors and wrong-kind catches grouped by what in the harness should catch them."""
    by_id = {m.id: m for m in score_.mutants}
    slots = ("survived", "wrong kind, a listed kind failed later", "wrong kind, no listed kind failed")
    groups = {}
    for r in score_.results:
        if r.get("right_kind"):
            continue
        slot = slots[0] if r["status"] != "caught" else slots[1] if r.get("listed_kind_failed") else slots[2]
        groups.setdefault(by_id[r["id"]].needs, {s: [] for s in slots})[slot].append(r["id"])
    sep = ", " if fmt == "github" else "\n"  # one id a line in a terminal
    rows = [[need, sum(map(len, g.values()))] + [sep.join(g[s]) or "-" for s in slots]
            for need, g in sorted(groups.items(), key=lambda kv: NEEDS.index(kv[0]))]
    return tabulate(rows, headers=["needs", "n", *slots], tablefmt=fmt)


def summary_line(s: dict) -> str:
    return (f"{s['caught']}/{s['mutants']} caught ({s['caught_share']:.0%}), {s['right_kind']}/{s['mutants']} with the "
            f"right kind ({s['right_kind_share']:.0%}), {s['survived']} survived, {s['broken']} broken; "
            f"{s['false_alarms']} false alarm(s) in {s['reruns']} unmodified rerun(s)")


def markdown(score_: Score, run_args) -> str:
    s = score_.summary()
    lines = ["# harness mutate", "", f"**{summary_line(s)}**; `harness run {' '.join(run_args)}`.", "",
             f"Gate (`--gate`): caught >= {THRESHOLDS['caught']:.0%}, right kind >= {THRESHOLDS['right_kind']:.0%}, "
             f"false alarms <= {THRESHOLDS['false_alarms']}: {'pass' if s['gate'] else 'fail'}.", "",
             table(score_, "github"), "", "## What would catch the rest", "", todo(score_, "github"), ""]
    return "\n".join(lines)
