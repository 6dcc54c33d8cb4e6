"""``harness sweep``: the selected cases over a range of a target's releases, one table release x case.

Each release is installed aside (``versions.library_version``); a fresh
process asks the target what that release offers (``probe``), so a trainer a
release lacks is "not offered" and a release the adapter cannot drive says
why, and the offered cases run as in ``harness run`` (every check, held to
the goldens).  ``run_release`` is also what bisecting over releases runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tabulate import tabulate

from .. import torchless
from ..judge.golden import write_atomic
from ..model import Case, case_settings
from ..run.runner import run_cases
from .versions import VersionError, library_version

NOT_OFFERED = "not offered"


def probe(spec: str) -> dict:
    """What the target offers with the library ``PYTHONPATH`` now puts first (a fresh process)."""
    cmd = torchless.command("mlxth.harness.tools.sweep", "--probe", spec)
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"version": None, "trainers": [], "unsupported": f"the target does not load: {last}"}


def case_key(trainer, fixture, variant) -> str:
    return f"{trainer}/{fixture}/{variant}"


def _settings(trainer, variant, steps, extra):
    settings = case_settings(trainer, variant, steps)
    settings.extra.update(extra or {})
    return settings


def run_release(target, release, selection, *, steps, snapshots, jobs, timeout, find_links=None, index=True,
                extra=None, on_result=None) -> dict:
    """Run ``selection`` (``(trainer, fixture, variant)`` triples) on one release of ``target``.

    Returns ``{"release", "version", "note", "results": {key: result}, "offered": [...]}``; ``note``
    says why nothing ran (the release cannot be installed, or the adapter cannot drive it).  ``extra``
    goes into every case's ``Settings.extra`` (a target's workaround).
    """
    entry = {"release": release, "version": None, "note": "", "offered": [], "results": {}}
    try:
        with library_version(target, release, find_links, index):
            info = probe(target.spec)
            entry["version"], entry["offered"] = info["version"], list(info["trainers"])
            if info["unsupported"]:
                entry["note"] = f"not driven: {info['unsupported']}"
                return entry
            cases = [Case(target.name, t, f, v, _settings(t, v, steps, extra), target.spec)
                     for t, f, v in selection if t in entry["offered"]]
            results = run_cases(cases, jobs=jobs, timeout=timeout, snapshots=snapshots,
                                golden_key=target.golden_key, on_result=on_result) if cases else []
    except VersionError as err:
        entry["note"] = str(err)
        return entry
    entry["results"] = {case_key(r["case"]["trainer"], r["case"]["fixture"], r["case"]["variant"]): r
                        for r in results}
    return entry


def failures(entry) -> list:
    """Every failing case of a release entry: ``{"case", "kind", "check", "message"}``."""
    return [{"case": r["id"], **{k: r["failure"][k] for k in ("kind", "check", "message")}}
            for r in entry["results"].values() if r["failure"]]


def cell(entry, key) -> dict:
    """One table cell: status and failure kind (every failing check's kind kept in ``kinds``)."""
    if entry["note"]:
        return {"status": "-", "kind": None}
    result = entry["results"].get(key)
    if result is None:
        return {"status": NOT_OFFERED, "kind": None}
    kinds = [c["kind"] for c in result["checks"] if c["status"] == "fail"]
    failure = result["failure"]
    out = {"status": result["status"], "kind": failure["kind"] if failure else None, "kinds": kinds}
    if failure:
        out["message"] = failure["message"][:300]
    return out


def cell_text(c, every_kind=False) -> str:
    """``status kind``; with ``every_kind``, the other failing checks' kinds follow in brackets."""
    if c["kind"] is None:
        return c["status"]
    others = [k for k in dict.fromkeys(c.get("kinds", [])) if k != c["kind"]] if every_kind else []
    return f"{c['status']} {c['kind']}" + (f" (+{', '.join(others)})" if others else "")


def sweep(target, releases, selection, *, steps, snapshots, jobs, timeout, find_links=None, index=True,
          extra=None, on_release=None, on_result=None) -> dict:
    """Run ``selection`` over ``releases``; return the sweep (``table_rows`` makes the table)."""
    keys = [case_key(*s) for s in selection]
    out = {"target": target.name, "steps": steps, "cases": keys, "extra": dict(extra or {}), "releases": []}
    for release in releases:
        entry = run_release(target, release, selection, steps=steps, snapshots=snapshots, jobs=jobs,
                            timeout=timeout, find_links=find_links, index=index, extra=extra,
                            on_result=on_result)
        row = {"release": release, "version": entry["version"], "note": entry["note"], "offered": entry["offered"],
               "cells": {key: cell(entry, key) for key in keys}}
        out["releases"].append(row)
        if on_release is not None:
            on_release(row)
    return out


def short_keys(keys) -> dict:
    """Column headers: ``trainer/fixture``, with the variant only where the sweep has several."""
    variants = {k.rsplit("/", 1)[1] for k in keys}
    return {k: k if len(variants) > 1 else k.rsplit("/", 1)[0] for k in keys}


def table(result, fmt="simple") -> str:
    heads = short_keys(result["cases"])
    rows = [[r["release"], *(cell_text(r["cells"][k]) for k in result["cases"]), r["note"]]
            for r in result["releases"]]
    notes = any(r["note"] for r in result["releases"])
    headers = ["release", *(heads[k] for k in result["cases"])] + (["note"] if notes else [])
    return tabulate([row if notes else row[:-1] for row in rows], headers=headers, tablefmt=fmt)


def counts(result) -> dict:
    out = {"pass": 0, "fail": 0, "error": 0, NOT_OFFERED: 0, "not run": 0}
    for r in result["releases"]:
        for c in r["cells"].values():
            out[c["status"] if c["status"] in out else "not run"] += 1
    return out


def write(directory: Path, run_id: str, result: dict) -> Path:
    out = Path(directory) / run_id
    write_atomic(out / "sweep.json", json.dumps(result, indent=1, default=str) + "\n")
    md = [f"# harness sweep {run_id}: {result['target']}, releases {result['releases'][0]['release']} to "
          f"{result['releases'][-1]['release']}", "", table(result, fmt="github"), ""] if result["releases"] else []
    write_atomic(out / "sweep.md", "\n".join(md) + "\n")
    return out


def _probe_main(spec: str) -> int:
    from ..target import load_target

    target = load_target(spec)
    print(json.dumps({"version": target.version(), "trainers": list(target.trainers()),
                      "unsupported": target.unsupported()}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--probe"] or len(sys.argv) != 3:
        print("usage: python -m mlxth.harness.tools.sweep --probe TARGET_SPEC", file=sys.stderr)
        sys.exit(2)
    sys.exit(_probe_main(sys.argv[2]))
