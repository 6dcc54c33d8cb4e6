"""``harness bisect`` over commits: the commit at which selected cases flipped, either way.

``git bisect run`` in a throw-away linked worktree, so the user's working
tree, index and branch are never touched; each step is a fresh ``harness run``
against the code at that commit, with the worktree's import roots first on
``PYTHONPATH`` (a library's repository: its root and the folders its
pyproject.toml maps packages from, such as ``src/``, so ``import`` takes the
commit's code over an editable install, whichever target drives it; this
project's own history: its folders mapped to ``mlxth.*``),
held to the goldens of the passing end.  Both ends are tested first: passing
then failing is a regression (the first bad commit is found), failing then
passing a fix (the first good commit).  A revision is bad when a selected case
fails (with one of ``kinds``, when given); one that cannot be tested is
skipped (git's 125).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .import_roots import import_roots

SKIP = 125
REGRESSION, FIX = "regression", "fix"
# git bisect's terms per direction: (old, new); a fix bisects with the terms "broken" and "fixed".
TERMS = {REGRESSION: ("good", "bad"), FIX: ("broken", "fixed")}


def git(repo, *args, check=True):
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def state_of(failures, kinds=()) -> str:
    """``"bad"`` when a failure counts (any, or one of ``kinds``), else ``"good"``; ``"skip"`` when the code
    under test does not import (unless ``import-error`` is itself the kind asked for)."""
    if "import-error" not in kinds and any(f["kind"] == "import-error" for f in failures):
        return "skip"
    return "bad" if any(not kinds or f["kind"] in kinds for f in failures) else "good"


def _own_project(tree: Path) -> bool:
    return all((tree / d / "__init__.py").exists() for d in ("harness", "trainers", "fixtures"))


def package_shim(tree: Path, where: Path) -> Path:
    """A folder whose ``mlxth`` package is the worktree's three folders."""
    pkg = where / "mlxth"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for name in ("harness", "trainers", "fixtures"):
        link = pkg / name
        if not link.exists():
            link.symlink_to(tree / name)
    return where


def names_target(tree: Path) -> bool:
    """Whether the commit checked out in ``tree`` configures its target (a broken table: its run says so)."""
    from ..project import ConfigError, harness_table

    try:
        table = harness_table(tree / "pyproject.toml") if (tree / "pyproject.toml").is_file() else None
    except (ConfigError, OSError):
        return True
    return table is not None and (not isinstance(table, dict) or "target" in table)


def test_revision(tree: Path, run_args, snapshots: Path, kinds=(), fallback_target=None) -> dict:
    """Run the cases at the commit checked out in ``tree``: ``{"commit", "exit", "failures", "verdict"}``.
    ``fallback_target``: the target of a commit whose table names none (older than the harness's table),
    so that it is not the built-in reference that such a commit is tested with."""
    env = dict(os.environ)
    fallback = fallback_target and "--target" not in run_args and not names_target(tree)
    run_args = ["--target", fallback_target, *run_args] if fallback else run_args
    paths = [str(p) for p in import_roots(tree)]
    with tempfile.TemporaryDirectory(prefix="mlxth-bisect-step-") as tmp:
        if _own_project(tree):
            paths.insert(0, str(package_shim(tree, Path(tmp) / "shim")))
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        reports = Path(tmp) / "reports"
        cmd = [sys.executable, "-m", "mlxth.harness.cli", "run", "--reports", str(reports),
               "--snapshots", str(snapshots), *run_args]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        found = sorted(reports.glob("*/report.json"))
        report = json.loads(found[-1].read_text()) if found else None
    entry = {"commit": git(tree, "rev-parse", "HEAD"), "exit": proc.returncode, "failures": []}
    if fallback:
        entry["target"] = fallback_target
    if report is not None:
        entry["failures"] = [{"case": c["id"], **c["failure"]} for c in report["cases"] if c["failure"]]
    if report is None or proc.returncode not in (0, 1):
        entry["verdict"] = "skip"  # unknown cases, usage error, a crash of the harness: not testable here
    else:
        entry["verdict"] = state_of(entry["failures"], kinds)
    if entry["verdict"] == "skip":
        entry["reason"] = ((proc.stdout + proc.stderr).strip().splitlines() or [""])[-1]
        if report is not None:
            entry["reason"] = next((f["message"] for f in entry["failures"] if f["kind"] == "import-error"),
                                   entry["reason"])
    return entry


def step(tree: Path, run_args, snapshots: Path, log: Path, kinds=(), direction=REGRESSION, fallback_target=None) -> int:
    """One ``git bisect run`` step; returns git's exit code (0 the old term, 1 the new one, 125 skip)."""
    entry = test_revision(tree, run_args, snapshots, kinds, fallback_target)
    with open(log, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    if entry["verdict"] == "skip":
        return SKIP
    bad = entry["verdict"] == "bad"
    return int(bad) if direction == REGRESSION else int(not bad)


def _export_goldens(repo, rev, dest: Path, folder: str = "snapshots"):
    """The revision's golden folder (empty when it has none)."""
    dest.mkdir(parents=True, exist_ok=True)
    if git(repo, "ls-tree", "-d", rev, folder, check=False):
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, folder], capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest / folder
    return dest


def resolve(repo, rev: str, option: str) -> str:
    """The commit ``rev`` names in ``repo``; a one-line error naming the option otherwise."""
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options",
                          f"{rev}^{{commit}}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{option} {rev!r} is not a commit in {repo}")
    return out.stdout.strip()


def why_bad(entry, kinds=()) -> str:
    """The first failure that made ``entry`` bad, its check and kind, and how many more ("" when none)."""
    counted = [f for f in entry.get("failures", ()) if not kinds or f["kind"] in kinds]
    if not counted:
        return ""
    first, more = counted[0], f"; {len(counted) - 1} more failing" if len(counted) > 1 else ""
    return f" (first failing case {first['case']}: check {first['check']}, kind {first['kind']}{more})"


def ends_message(old, new, old_entry, new_entry, direction, kinds=()):
    """Why there is nothing to bisect, or None.  ``direction`` is what was asked for (None: either way);
    ``new_entry`` is None when the old end already settled it; ``kinds``: the failures that count."""
    names = ("--from", "--to") if direction is None else ("--good", "--bad")
    for name, rev, entry in ((names[0], old, old_entry), (names[1], new, new_entry or {})):
        if entry.get("verdict") == "skip":
            return f"{name} {rev} cannot be tested: {entry.get('reason') or 'the run did not complete'}"
    if direction == REGRESSION and old_entry["verdict"] != "good":
        return f"the good revision {old} tests bad, not good{why_bad(old_entry, kinds)}: nothing to bisect"
    if direction == REGRESSION and new_entry["verdict"] != "bad":
        return f"the bad revision {new} tests good, not bad: nothing to bisect"
    if old_entry["verdict"] == new_entry["verdict"]:
        return (f"both ends test {old_entry['verdict']}{why_bad(old_entry, kinds)}: the cases did not flip "
                f"between {old} and {new}")
    return None


def bisect(repo, old, new, run_args, kinds=(), direction=None, goldens_folder="snapshots", fallback_target=None):
    """Find the commit where the cases flipped between ``old`` and ``new``; return a report dict.

    ``direction`` ``"regression"`` requires ``old`` good and ``new`` bad (``--good``/``--bad``);
    ``None`` takes whichever way the two ends differ (``--from``/``--to``).  ``goldens_folder``:
    the golden folder, relative to the repository's root.  ``fallback_target``: the target of a commit
    whose table names none (see ``test_revision``).
    """
    repo = Path(repo).resolve()
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        raise RuntimeError(f"--repo {repo} is not a git repository")
    names = ("--from", "--to") if direction is None else ("--good", "--bad")
    old_sha, new_sha = resolve(repo, old, names[0]), resolve(repo, new, names[1])
    if old_sha == new_sha:
        raise RuntimeError(f"{names[0]} {old} and {names[1]} {new} are the same commit ({old_sha[:10]}): "
                           "nothing to bisect")
    steps = []
    with tempfile.TemporaryDirectory(prefix="mlxth-bisect-") as tmp:
        tmp = Path(tmp)
        tree, log = tmp / "worktree", tmp / "steps.jsonl"
        goldens = _export_goldens(repo, old_sha, tmp / "goldens-old", goldens_folder)
        git(repo, "worktree", "add", "--detach", str(tree), new_sha)
        try:
            git(tree, "checkout", "-q", "--detach", old_sha)
            fallback = _pinned(fallback_target, repo, tmp / "target")
            old_entry = {**test_revision(tree, run_args, goldens, kinds, fallback), "rev": old}
            steps.append(old_entry)
            new_entry = None
            if old_entry["verdict"] != "skip" and (direction is None or old_entry["verdict"] == "good"):
                if old_entry["verdict"] == "bad":  # a fix: held to the goldens of the passing end, the new one
                    goldens = _export_goldens(repo, new_sha, tmp / "goldens-new", goldens_folder)
                git(tree, "checkout", "-q", "--detach", new_sha)
                new_entry = {**test_revision(tree, run_args, goldens, kinds, fallback), "rev": new}
                steps.append(new_entry)
            message = ends_message(old, new, old_entry, new_entry, direction, kinds)
            if message:
                return {"direction": direction, "unit": "commit", "kinds": list(kinds), "first_bad": None,
                        "first_good": None, "found": None, "steps": steps, "message": [message]}
            found_direction = REGRESSION if old_entry["verdict"] == "good" else FIX
            term_old, term_new = TERMS[found_direction]
            git(tree, "bisect", "start", f"--term-old={term_old}", f"--term-new={term_new}", new_sha, old_sha)
            options = json.dumps({"kinds": list(kinds), "direction": found_direction, "fallback_target": fallback})
            cmd = [sys.executable, "-m", "mlxth.harness.tools.bisect", "--step", str(tree), str(goldens), str(log),
                   options, "--", *run_args]
            out = subprocess.run(["git", "-C", str(tree), "bisect", "run", *cmd], capture_output=True, text=True)
            first = git(tree, "rev-parse", "--verify", "-q", f"refs/bisect/{term_new}", check=False)
            steps += [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            if f"is the first {term_new} commit" not in out.stdout:
                return {"direction": found_direction, "unit": "commit", "kinds": list(kinds), "first_bad": None,
                        "first_good": None, "found": None, "steps": steps,
                        "message": (out.stdout + out.stderr).strip().splitlines()[-3:]}
        finally:
            git(tree, "bisect", "reset", check=False)
            git(repo, "worktree", "remove", "--force", str(tree), check=False)
            git(repo, "worktree", "prune", check=False)
    subject, date = git(repo, "log", "-1", "--format=%s%x00%aI", first).split("\x00")
    files = git(repo, "show", "--name-only", "--format=", first).splitlines()
    # A regression shows what fails at the first bad commit; a fix, what failed before it.
    shown = next((s for s in steps if s["commit"] == first), None) if found_direction == REGRESSION else old_entry
    return {"direction": found_direction, "unit": "commit", "kinds": list(kinds), "found": first,
            "first_bad": first if found_direction == REGRESSION else None,
            "first_good": first if found_direction == FIX else None,
            "subject": subject, "author_date": date, "files": files,
            "failures": (shown or {"failures": []})["failures"], "steps": steps}


def _pinned(spec, repo: Path, where: Path):
    """``spec`` usable at any commit: a target file inside the repository is copied out of it first
    (the copy as the working tree has it now; what it imports still comes from the commit's code)."""
    path, sep, attr = (spec or "").rpartition(":")
    if not (sep and path.endswith(".py")) or not Path(path).resolve().is_relative_to(repo):
        return spec
    where.mkdir(parents=True, exist_ok=True)
    copy = where / Path(path).name
    shutil.copy2(path, copy)
    return f"{copy}:{attr}"


def format_report(result) -> str:
    unit = result.get("unit", "commit")
    if not result["found"]:
        what = f"first bad {unit}" if result["direction"] == REGRESSION else f"{unit} where the cases flipped"
        return f"bisect found no {what}: " + " ".join(result.get("message", []))
    kinds = " or ".join(result.get("kinds") or [])
    if result["direction"] == REGRESSION:
        how = f"fail with {kinds} from it, not before" if kinds else "pass before it and fail from it"
        lines = [f"first bad {unit}: {result['found']}", f"  a regression: the cases {how}"]
    else:
        how = f"fail with {kinds} before it, not from it" if kinds else "fail before it and pass from it"
        lines = [f"first good {unit}: {result['found']}", f"  a fix: the cases {how}"]
    if unit == "commit":
        lines += [f"  subject: {result['subject']}", f"  author date: {result['author_date']}",
                  f"  files changed: {', '.join(result['files'])}"]
    label = "fails there" if result["direction"] == REGRESSION else "failed before"
    for f in result["failures"]:
        lines.append(f"  {f['case']} {label}: {f['check']} ({f['kind']}): {f['message'][:160]}")
    lines.append("steps: " + ", ".join(f"{s[unit][:10] if unit == 'commit' else s[unit]} {s['verdict']}"
                                       for s in result["steps"]))
    return "\n".join(lines)


def main(argv=None):
    """Entry point of one bisect step (called by ``git bisect run``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--step"] or "--" not in argv or argv.index("--") != 5:
        print("usage: python -m mlxth.harness.tools.bisect --step TREE GOLDENS LOG OPTIONS_JSON -- RUN_ARGS...",
              file=sys.stderr)
        return SKIP
    tree, snapshots, log = (Path(a) for a in argv[1:4])
    try:
        options = json.loads(argv[4])
        return step(tree, argv[6:], snapshots, log, tuple(options["kinds"]), options["direction"],
                    options.get("fallback_target"))
    except Exception as err:  # noqa: BLE001 - a step that cannot run is skipped, never fatal to bisect
        print(f"bisect step failed: {err}", file=sys.stderr)
        return SKIP


if __name__ == "__main__":
    sys.exit(main())
