"""Run reports: ``report.json`` (everything), ``report.md`` (a CI job summary), ``junit.xml``.

All three are rewritten (atomically) after every case, so a run that is
killed leaves the last complete state; ``state`` says whether the run was
still ``running``, ended ``complete`` or was ``interrupted``.  The summary
always counts the checks that were skipped, and why.
"""

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from tabulate import tabulate

from ..judge.checks import ORDER
from ..judge.golden import write_atomic

STATUSES = ("pass", "fail", "error", "interrupted", "not-run")
HEADERS = ["case", "status", "steps", "final loss", "first failing check", "time"]


def _loss(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.6g}"
    return "" if value is None else str(value)  # a non-finite value is kept as its text ("nan")


def summary_rows(results):
    rows = []
    for r in results:
        final = next((s["loss"] for s in reversed(r["steps"]) if "loss" in s), None)
        failing = r["failure"]["check"] + f" ({r['failure']['kind']})" if r["status"] in ("fail", "error") else ""
        rows.append([r["id"], r["status"], len(r["steps"]), _loss(final), failing, f"{r['duration_s']:.1f}s"])
    return rows


def summary_table(results, fmt="simple"):
    return tabulate(summary_rows(results), headers=HEADERS, tablefmt=fmt)


def counts(results):
    out = dict.fromkeys(STATUSES, 0)
    for r in results:
        out[r["status"]] += 1
    return out


def counts_line(c: dict) -> str:
    line = f"{c['pass']} passed, {c['fail']} failed, {c['error']} errors"
    if c.get("interrupted"):
        line += f", {c['interrupted']} interrupted"
    if c.get("not-run"):
        line += f", {c['not-run']} not run"
    return line


def skipped_checks(results) -> list:
    """``[(check, reason, cases)]`` over every skipped check of the run, in check order."""
    found = Counter((c["name"], c.get("reason") or c["detail"]) for r in results for c in r["checks"]
                    if c["status"] == "skip")
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(((name, reason, n) for (name, reason), n in found.items()),
                  key=lambda t: (rank.get(t[0], len(rank)), t[1]))


def skipped_line(results) -> str:
    skipped = skipped_checks(results)
    if not skipped:
        return "skipped checks: none"
    return "skipped checks: " + "; ".join(f"{name}: {n} skipped, {reason}" for name, reason, n in skipped)


def timing_line(run: dict) -> str:
    starts = run.get("timing", {}).get("worker_start_s", [])
    if not starts:
        return ""
    each = ", ".join(f"{s:.1f}" for s in starts)
    return (f"{len(starts)} worker(s) started in {each} s (importing MLX, mlx-lm and the harness, "
            f"once per worker)")


def build_run(run_id, environment, command, results, duration_s, state="complete", stopped_by=None,
              timing=None) -> dict:
    run = {"run_id": run_id, "state": state, "environment": environment, "command": command,
           "summary": counts(results), "skipped_checks": [{"check": n, "reason": why, "cases": k}
                                                          for n, why, k in skipped_checks(results)],
           "duration_s": round(duration_s, 3), "timing": timing or {}, "cases": results}
    if stopped_by:
        run["stopped_by"] = stopped_by
    return run


def markdown(run: dict) -> str:
    c = run["summary"]
    env = run["environment"]
    lines = [f"# harness run {run['run_id']}", ""]
    if run.get("state") == "interrupted":
        lines += [f"**Interrupted by {run.get('stopped_by', 'a signal')}**: the cases below that ran are "
                  "reported; the others are marked interrupted or not run.", ""]
    elif run.get("state") == "running":
        lines += ["**Still running** when this report was written.", ""]
    lines += [f"**{counts_line(c)}** in {run['duration_s']:.1f} s on {env['backend']} ({env['device']}); "
              f"mlx {env['mlx']}, mlx-lm {env['mlx-lm']}, Python {env['python']}.", "",
              skipped_line(run["cases"]) + ".", ""]
    if timing_line(run):
        lines += [timing_line(run) + ".", ""]
    lines += [summary_table(run["cases"], fmt="github"), ""]
    for r in run["cases"]:
        if r["failure"] and r["status"] in ("fail", "error"):
            f = r["failure"]
            lines += [f"## {r['id']}: {f['kind']}", "", f"- check: `{f['check']}`", f"- {f['message']}"]
            if f.get("explanation"):
                lines.append(f"- why it matters: {f['explanation']}")
            others = [c for c in r["checks"] if c["status"] == "fail" and c["name"] != f["check"]]
            if others:
                lines.append("- also failing:")
                lines += [f"  - `{c['name']}` ({c['kind']}): {c['detail']}" for c in others]
            if r.get("log"):
                lines.append(f"- full output: `{r['log']}`")
            lines.append("")
    return "\n".join(lines) + "\n"


def junit(run: dict) -> str:
    c = run["summary"]
    suite = ET.Element("testsuite", name="harness", tests=str(len(run["cases"])), failures=str(c["fail"]),
                       errors=str(c["error"]), skipped=str(c.get("interrupted", 0) + c.get("not-run", 0)),
                       time=f"{run['duration_s']:.3f}")
    for r in run["cases"]:
        case = ET.SubElement(suite, "testcase", classname=f"harness.{r['case']['target']}",
                             name=r["id"], time=f"{r['duration_s']:.3f}")
        if r["status"] in ("interrupted", "not-run"):
            ET.SubElement(case, "skipped", message=r["failure"]["message"][:500])
        elif r["failure"]:
            tag = "error" if r["status"] == "error" else "failure"
            node = ET.SubElement(case, tag, type=r["failure"]["kind"], message=r["failure"]["message"][:500])
            node.text = "\n".join(f"{ch['name']}: {ch['status']}: {ch['detail']}" for ch in r["checks"])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(directory: Path, run: dict) -> Path:
    """Write (or rewrite) the run's three reports under ``directory/<run-id>``; that folder."""
    out = Path(directory) / run["run_id"]
    write_atomic(out / "report.json", json.dumps(run, indent=1, default=str) + "\n")
    write_atomic(out / "report.md", markdown(run))
    write_atomic(out / "junit.xml", junit(run))
    return out
