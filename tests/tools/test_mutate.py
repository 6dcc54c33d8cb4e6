"""`harness mutate`: the catalogue applies to the current trainers, and the runner scores what it should."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxth.harness.cli import main
from mlxth.harness.tools import mutate
from support import SNAPSHOTS

SMALL = ["--trainer", "dpo", "--fixture", "tiny-llama"]  # one case: each harness run takes seconds
NO_OP = {"id": "no-op-message", "file": "core.py",
         "old": 'rows cannot fill one step of {n} examples")',
         "new": 'rows cannot fill a step of {n} examples")',
         "description": "an error message reworded: code changes, behaviour on valid input does not",
         "kinds": ["exception"], "needs": "basics"}


def _toml(entries) -> str:
    def value(v):
        if isinstance(v, list):
            return "[" + ", ".join(f'"{x}"' for x in v) + "]"
        return "'''" + v + "'''"
    return "\n".join("[[mutant]]\n" + "\n".join(f"{k} = {value(v)}" for k, v in e.items()) + "\n" for e in entries)


def _entry(mutant) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(mutant).items() if v != ""}


# --------------------------------------------------------------------- the catalogue


def test_every_mutant_of_the_catalogue_applies_exactly_once_to_the_current_trainers():
    mutants = mutate.load_catalogue()
    assert len(mutants) >= 45
    mutate.check_catalogue(mutants)  # raises on an edit that does not apply exactly once or changes no code
    assert len({m.id for m in mutants}) == len(mutants)
    assert {m.file for m in mutants} == set(mutate.TRAINER_FILES)


@pytest.mark.parametrize("change, message", [
    ({"old": "this text is in no trainer"}, "occurs 0 times in trainers/core.py"),
    ({"old": "import", "new": "import"}, "occurs"),  # many times
    ({"new": 'rows cannot fill a step of {n} examples"'}, "no longer parses"),
    ({"old": "# Data order.", "new": "# The order of the data."}, "changes no code"),
    ({"kinds": ["golden-drift", "slow"]}, "field kinds: unknown slow"),
    ({"needs": "luck"}, "field needs: 'luck'"),
    ({"file": "../harness/model.py"}, "field file"),
])
def test_a_bad_catalogue_entry_is_named(tmp_path, change, message):
    path = tmp_path / "mutants.toml"
    path.write_text(_toml([{**NO_OP, **change}]))
    with pytest.raises(mutate.CatalogueError, match="no-op-message|mutant #1") as err:
        mutate.check_catalogue(mutate.load_catalogue(path))
    assert message in str(err.value)


def test_duplicate_ids_and_missing_fields_are_named(tmp_path):
    path = tmp_path / "mutants.toml"
    path.write_text(_toml([NO_OP, NO_OP]))
    with pytest.raises(mutate.CatalogueError, match=r"mutant #2 \(no-op-message\): duplicate id"):
        mutate.load_catalogue(path)
    path.write_text(_toml([{k: v for k, v in NO_OP.items() if k != "kinds"}]))
    with pytest.raises(mutate.CatalogueError, match="missing field.s. kinds"):
        mutate.load_catalogue(path)


# ------------------------------------------------------------------------ the verdict


def _report(*cases):
    return {"cases": [{"id": f"reference/dpo/{i}/fp32", "status": "fail" if kinds else "pass",
                       "failure": {"kind": kinds[0], "message": "m"} if kinds else None,
                       "checks": [{"name": "x", "status": "fail", "kind": k} for k in kinds]}
                      for i, kinds in enumerate(cases)]}


def test_the_verdict_caught_right_kind_golden_drift_alone_and_broken():
    m = mutate.Mutant("m", "losses.py", "a", "b", "d", ("loss-mismatch",), "recompute")
    right = mutate.judge(m, 1, _report(["loss-mismatch", "golden-drift"], []), "", 1.0)
    assert right["status"] == "caught" and right["right_kind"]
    # a golden alone catches it, but the kind does not name the fault
    drift = mutate.judge(m, 1, _report(["golden-drift", "loss-mismatch"]), "", 1.0)
    assert drift["status"] == "caught" and not drift["right_kind"]
    assert drift["listed_kind_failed"]  # the check order hid the listed kind
    assert not mutate.judge(m, 1, _report(["golden-drift"]), "", 1.0)["listed_kind_failed"]
    assert drift["checks"] == {"reference/dpo/0/fp32": ["golden-drift", "loss-mismatch"]}
    # every failing case must report a listed kind, or only golden-drift (it names no fault) beside one that does
    mixed = mutate.judge(m, 1, _report(["loss-mismatch"], ["exception"]), "", 1.0)
    assert mixed["status"] == "caught" and not mixed["right_kind"]
    beside = mutate.judge(m, 1, _report(["loss-mismatch"], ["golden-drift"]), "", 1.0)
    assert beside["status"] == "caught" and beside["right_kind"]
    assert not mutate.judge(m, 1, _report(["golden-drift"], ["golden-drift"]), "", 1.0)["right_kind"]
    assert mutate.judge(m, 0, _report([]), "", 1.0)["status"] == "survived"
    broken = mutate.judge(m, 2, None, "Error: no such option\n", 1.0)
    assert broken["status"] == "broken" and broken["reason"] == ["Error: no such option"] and not broken["right_kind"]
    assert mutate.judge(m, None, None, "(killed after 5 s)", 1.0)["status"] == "broken"


def test_the_summary_and_the_gate():
    m = [mutate.Mutant(str(i), "core.py", "a", "b", "d", ("no-update",), "basics") for i in range(20)]
    score = mutate.Score(m, results=[{"id": str(i), "status": "caught", "right_kind": i < 18, "cases": {}}
                                     for i in range(20)], reruns=[{"status": "survived", "cases": {}}] * 3)
    s = score.summary()
    assert (s["caught"], s["right_kind"], s["false_alarms"]) == (20, 18, 0) and s["gate"]
    score.results[0]["status"], score.results[0]["right_kind"] = "survived", False
    assert not score.summary()["gate"]  # 95% caught, 85% right
    score.results[0]["status"], score.results[0]["right_kind"] = "caught", True
    score.reruns.append({"status": "caught", "cases": {"x": "golden-drift"}})
    assert score.summary()["false_alarms"] == 1 and not score.summary()["gate"]


# ------------------------------------------------------------------------- the runner


def test_mutate_catches_a_sign_flip_and_reports_a_no_op_mutant_as_surviving(tmp_path):
    sign = next(m for m in mutate.load_catalogue() if m.id == "dpo-margin-sign")
    catalogue = tmp_path / "mutants.toml"
    catalogue.write_text(_toml([_entry(sign), NO_OP]))
    reports = tmp_path / "reports"
    result = CliRunner().invoke(main, ["mutate", "--catalogue", str(catalogue), "--reruns", "1", "--gate",
                                       "--jobs", "2", "--reports", str(reports), *SMALL], catch_exceptions=False)
    assert result.exit_code == 1, result.output  # 1 of 2 caught: below the gate
    found = json.loads(next(reports.glob("*/mutation.json")).read_text())
    by_id = {r["id"]: r for r in found["mutants"]}
    flipped = by_id["dpo-margin-sign"]
    assert flipped["status"] == "caught", flipped
    assert "loss-mismatch" in flipped["checks"]["reference/dpo/tiny-llama/fp32"]  # the mutated code really ran
    assert by_id["no-op-message"]["status"] == "survived" and not by_id["no-op-message"]["right_kind"]
    assert found["summary"]["false_alarms"] == 0 and found["reruns"][0]["status"] == "survived"
    assert "no-op-message" in result.output and "gate: FAIL" in result.output
    assert (next(reports.glob("*/mutation.md"))).read_text().startswith("# harness mutate")


def test_a_failing_unmodified_run_counts_as_a_false_alarm(tmp_path):
    snapshots = tmp_path / "snapshots"
    shutil.copytree(SNAPSHOTS, snapshots)
    golden = snapshots / "cpu" / "reference" / "dpo" / "tiny-llama--fp32.json"
    data = json.loads(golden.read_text())
    data["steps"][1]["loss"] *= 1.01  # a golden that no unmodified run can match
    golden.write_text(json.dumps(data))
    score = mutate.score([], SMALL, reruns=1, snapshots=snapshots)
    assert score.summary()["false_alarms"] == 1
    assert score.reruns[0]["cases"] == {"reference/dpo/tiny-llama/fp32": "golden-drift"}


@pytest.mark.parametrize("args, message", [
    (["--mutant", "no-such-mutant"], "unknown mutant 'no-such-mutant'"),
    (["--snapshots", "x", "--", "--snapshots", "y"], "set by harness mutate itself"),
    (["--trainer", "nope"], "unknown trainer 'nope'"),
    (["--frobnicate"], "harness run arguments '--frobnicate': No such option"),
])
def test_bad_arguments_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ["mutate", "--reruns", "0", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_a_catalogue_that_does_not_apply_is_a_usage_error(tmp_path):
    path = tmp_path / "mutants.toml"
    path.write_text(_toml([{**NO_OP, "old": "gone"}]))
    result = CliRunner().invoke(main, ["mutate", "--catalogue", str(path), "--reruns", "0"])
    assert result.exit_code == 2 and "occurs 0 times in trainers/core.py" in result.output



def test_the_to_do_table_groups_what_is_not_caught_right_by_what_should_catch_it():
    m = [mutate.Mutant("a", "core.py", "x", "y", "d", ("loss-mismatch",), "recompute"),
         mutate.Mutant("b", "core.py", "x", "y", "d", ("loss-mismatch",), "recompute"),
         mutate.Mutant("c", "core.py", "x", "y", "d", ("dead-knob",), "dead-knob"),
         mutate.Mutant("d", "core.py", "x", "y", "d", ("no-update",), "basics")]
    results = [{"id": "a", "status": "caught", "right_kind": False, "listed_kind_failed": True, "cases": {}},
               {"id": "b", "status": "caught", "right_kind": False, "listed_kind_failed": False, "cases": {}},
               {"id": "c", "status": "survived", "right_kind": False, "cases": {}},
               {"id": "d", "status": "caught", "right_kind": True, "cases": {}}]
    rows = [line.split(" | ") for line in mutate.todo(mutate.Score(m, results), fmt="github").splitlines()[2:]]
    assert [[c.strip("| ") for c in row] for row in rows] == [["recompute", "2", "-", "a", "b"],
                                                              ["dead-knob", "1", "c", "-", "-"]]


HANG_LINE = "        spec, config, model, dp = self.spec, self.config, self.model, self.dp"
HANG = {"id": "hang", "file": "core.py", "old": HANG_LINE, "new": HANG_LINE + '; __import__("time").sleep(600)',
        "description": "every step sleeps 10 minutes", "kinds": ["exception"], "needs": "basics"}


def test_a_run_past_its_timeout_is_broken_and_leaves_no_process_behind():
    hang = mutate.Mutant(**{**HANG, "kinds": tuple(HANG["kinds"])})
    result = mutate.run_copy(hang, SMALL, SNAPSHOTS, timeout=20)
    assert result["status"] == "broken" and "killed after 20 s" in result["reason"][0]
    assert len(result["killed"]) >= 2  # the harness run and the case worker it started in its own session
    _assert_gone(result["killed"])


def test_ctrl_c_stops_every_run_in_flight(tmp_path):
    catalogue = tmp_path / "mutants.toml"
    catalogue.write_text(_toml([HANG, {**HANG, "id": "hang-too"}]))
    cmd = [sys.executable, "-m", "mlxth.harness.cli", "mutate", "--catalogue", str(catalogue), "--jobs", "2",
           "--reruns", "0", "--reports", str(tmp_path / "reports"), *SMALL]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline, below, ok = time.monotonic() + 120, [], False
    try:
        while len(below) < 4 and time.monotonic() < deadline:  # two harness runs, each with its case worker
            time.sleep(0.5)
            below = mutate._descendants(proc.pid)
        assert len(below) >= 4, below
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) != 0
        _assert_gone(below)
        ok = True
    finally:
        if not ok:  # leave no sleeping process behind
            for pid in [proc.pid, *below]:
                mutate._kill_tree(pid)
        proc.wait()


def _assert_gone(pids):
    deadline = time.monotonic() + 30
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == []


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is dead


def test_rescore_judges_stored_runs_against_the_catalogue_as_it_is_now(tmp_path):
    m = mutate.Mutant("m", "losses.py", "a", "b", "d", ("loss-mismatch",), "recompute")
    run = mutate.judge(m, 1, _report(["metric-mismatch"]), "", 1.0)
    assert not run["right_kind"]
    stored = tmp_path / "mutation.json"
    stored.write_text(json.dumps(mutate.Score([m], results=[run], reruns=[{"status": "survived"}]).to_json(SMALL)))
    widened = mutate.Mutant("m", "losses.py", "a", "b", "d", ("loss-mismatch", "metric-mismatch"), "recompute")
    score, run_args = mutate.rescored(stored, [widened])
    assert run_args == SMALL and score.results[0]["right_kind"] and score.summary()["reruns"] == 1
    with pytest.raises(mutate.CatalogueError, match="not in the catalogue: m"):
        mutate.rescored(stored, [mutate.Mutant("other", "losses.py", "a", "b", "d", ("x",), "recompute")])
    stored.write_text("{}")
    with pytest.raises(mutate.CatalogueError, match="not a mutation.json"):
        mutate.rescored(stored, [widened])
    result = CliRunner().invoke(main, ["mutate", "--rescore", str(stored)])
    assert result.exit_code == 2 and "not a mutation.json" in result.output
