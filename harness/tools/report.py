"""Run reports: ``report.json`` (everything), ``report.md`` (a CI job summary), ``junit.xml``."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tabulate import tabulate

from ..judge.golden import write_atomic


def summary_rows(results):
    rows = []
    for r in results:
        final = next((s["loss"] for s in reversed(r["steps"]) if "loss" in s), None)
        failing = r["failure"]["check"] + f" ({r['failure']['kind']})" if r["failure"] else ""
        rows.append([r["id"], r["status"], len(r["steps"]), "" if final is None else f"{final:.6g}",
                     failing, f"{r['duration_s']:.1f}s"])
    return rows


HEADERS = ["case", "status", "steps", "final loss", "first failing check", "time"]


def summary_table(results, fmt="simple"):
    return tabulate(summary_rows(results), headers=HEADERS, tablefmt=fmt)


def counts(results):
    out = {"pass": 0, "fail": 0, "error": 0}
    for r in results:
        out[r["status"]] += 1
    return out


def markdown(run: dict) -> str:
    c = run["summary"]
    env = run["environment"]
    lines = [f"# harness run {run['run_id']}", "",
             f"**{c['pass']} passed, {c['fail']} failed, {c['error']} errors** "
             f"in {run['duration_s']:.1f} s on {env['backend']} ({env['device']}); "
             f"mlx {env['mlx']}, mlx-lm {env['mlx-lm']}, Python {env['python']}.", "",
             summary_table(run["cases"], fmt="github"), ""]
    for r in run["cases"]:
        if r["failure"]:
            f = r["failure"]
            lines += [f"## {r['id']}: {f['kind']}", "", f"- check: `{f['check']}`", f"- {f['message']}"]
            if f.get("explanation"):
                lines.append(f"- why it matters: {f['explanation']}")
            others = [c for c in r["checks"] if c["status"] == "fail" and c["name"] != f["check"]]
            if others:
                lines.append("- also failing:")
                lines += [f"  - `{c['name']}` ({c['kind']}): {c['detail']}" for c in others]
            lines.append("")
    return "\n".join(lines) + "\n"


def junit(run: dict) -> str:
    c = run["summary"]
    suite = ET.Element("testsuite", name="harness", tests=str(len(run["cases"])), failures=str(c["fail"]),
                       errors=str(c["error"]), time=f"{run['duration_s']:.3f}")
    for r in run["cases"]:
        case = ET.SubElement(suite, "testcase", classname=f"harness.{r['case']['target']}",
                             name=r["id"], time=f"{r['duration_s']:.3f}")
        if r["failure"]:
            tag = "error" if r["status"] == "error" else "failure"
            node = ET.SubElement(case, tag, type=r["failure"]["kind"], message=r["failure"]["message"][:500])
            node.text = "\n".join(f"{ch['name']}: {ch['status']}: {ch['detail']}" for ch in r["checks"])
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_reports(directory: Path, run: dict) -> Path:
    out = Path(directory) / run["run_id"]
    write_atomic(out / "report.json", json.dumps(run, indent=1, default=str) + "\n")
    write_atomic(out / "report.md", markdown(run))
    write_atomic(out / "junit.xml", junit(run))
    return out
