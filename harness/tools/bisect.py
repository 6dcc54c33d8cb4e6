"""``harness bisect``: the commit at which selected cases went from passing to failing.

``git bisect run`` in a throw-away linked worktree, so the user's working
tree, index and branch are never touched; each step is a fresh ``harness run``
against the code at that commit (a library's repository on ``PYTHONPATH``, or
this project's own folders mapped to ``mlxth.*``), held to the good
revision's goldens.  Exit codes follow git: good 0, bad 1, untestable 125.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 125


def git(repo, *args, check=True):
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def _own_project(tree: Path) -> bool:
    return all((tree / d / "__init__.py").exists() for d in ("harness", "trainers", "fixtures"))


def _shim(tree: Path, where: Path) -> Path:
    """A folder whose ``mlxth`` package is the worktree's three folders."""
    pkg = where / "mlxth"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for name in ("harness", "trainers", "fixtures"):
        link = pkg / name
        if not link.exists():
            link.symlink_to(tree / name)
    return where


def step(tree: Path, run_args, snapshots: Path, log: Path) -> int:
    """One bisect step at the commit checked out in ``tree``; returns git's exit code."""
    env = dict(os.environ)
    paths = [str(tree)]
    with tempfile.TemporaryDirectory(prefix="mlxth-bisect-step-") as tmp:
        if _own_project(tree):
            paths.insert(0, str(_shim(tree, Path(tmp) / "shim")))
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        reports = Path(tmp) / "reports"
        cmd = [sys.executable, "-m", "mlxth.harness.cli", "run", "--reports", str(reports),
               "--snapshots", str(snapshots), *run_args]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        found = sorted(reports.glob("*/report.json"))
        report = json.loads(found[-1].read_text()) if found else None
    commit = git(tree, "rev-parse", "HEAD")
    entry = {"commit": commit, "exit": proc.returncode, "failures": []}
    if report is not None:
        entry["failures"] = [{"case": c["id"], **c["failure"]} for c in report["cases"] if c["failure"]]
    if proc.returncode == 0:
        code = 0
    elif proc.returncode == 1 and report is not None and not any(
            f["kind"] == "import-error" for f in entry["failures"]):
        code = 1
    else:
        code = SKIP  # does not import, unknown cases, usage error: cannot be tested here
        entry["reason"] = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    entry["verdict"] = {0: "good", 1: "bad", SKIP: "skip"}[code]
    with open(log, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return code


def _export_goldens(repo, rev, dest: Path):
    """The good revision's snapshots/ folder (empty when it has none)."""
    dest.mkdir(parents=True, exist_ok=True)
    if git(repo, "ls-tree", "-d", rev, "snapshots", check=False):
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "snapshots"], capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest / "snapshots"
    return dest


def resolve(repo, rev: str, option: str) -> str:
    """The commit ``rev`` names in ``repo``; a one-line error naming the option otherwise."""
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", "--end-of-options",
                          f"{rev}^{{commit}}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{option} {rev!r} is not a commit in {repo}")
    return out.stdout.strip()


def bisect(repo, good, bad, run_args, echo=print):
    """Find the first bad commit; return a report dict (also printed through ``echo``).

    Raises ``RuntimeError`` (one line) for a bad revision, or when good and bad are the same commit."""
    repo = Path(repo).resolve()
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        raise RuntimeError(f"--repo {repo} is not a git repository")
    good_sha, bad_sha = resolve(repo, good, "--good"), resolve(repo, bad, "--bad")
    if good_sha == bad_sha:
        raise RuntimeError(f"--good {good} and --bad {bad} are the same commit ({good_sha[:10]}): nothing to bisect")
    with tempfile.TemporaryDirectory(prefix="mlxth-bisect-") as tmp:
        tmp = Path(tmp)
        tree, log = tmp / "worktree", tmp / "steps.jsonl"
        snapshots = _export_goldens(repo, good_sha, tmp / "goldens")
        git(repo, "worktree", "add", "--detach", str(tree), bad_sha)
        try:
            for rev, want, name in ((good_sha, 0, "good"), (bad_sha, 1, "bad")):
                git(tree, "checkout", "-q", "--detach", rev)
                if step(tree, run_args, snapshots, log) != want:
                    verdict = json.loads(log.read_text().splitlines()[-1])["verdict"]
                    return {"first_bad": None, "steps": [json.loads(x) for x in log.read_text().splitlines()],
                            "message": [f"the {name} revision {rev[:10]} tests {verdict}, not {name}: nothing to bisect"]}
            git(tree, "bisect", "start", bad_sha, good_sha)
            cmd = [sys.executable, "-m", "mlxth.harness.tools.bisect", "--step", str(tree), str(snapshots), str(log),
                   "--", *run_args]
            out = subprocess.run(["git", "-C", str(tree), "bisect", "run", *cmd], capture_output=True, text=True)
            first = git(tree, "rev-parse", "--verify", "-q", "refs/bisect/bad", check=False)
            steps = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            if "is the first bad commit" not in out.stdout:
                return {"first_bad": None, "steps": steps,
                        "message": (out.stdout + out.stderr).strip().splitlines()[-3:]}
        finally:
            git(tree, "bisect", "reset", check=False)
            git(repo, "worktree", "remove", "--force", str(tree), check=False)
            git(repo, "worktree", "prune", check=False)
    subject, date = git(repo, "log", "-1", "--format=%s%x00%aI", first).split("\x00")
    files = git(repo, "show", "--name-only", "--format=", first).splitlines()
    at_first = next((s for s in steps if s["commit"] == first), {"failures": []})
    return {"first_bad": first, "subject": subject, "author_date": date, "files": files,
            "failures": at_first["failures"], "steps": steps}


def format_report(result) -> str:
    if not result["first_bad"]:
        return "bisect found no first bad commit: " + " ".join(result.get("message", []))
    lines = [f"first bad commit: {result['first_bad']}", f"  subject: {result['subject']}",
             f"  author date: {result['author_date']}", f"  files changed: {', '.join(result['files'])}"]
    for f in result["failures"]:
        lines.append(f"  {f['case']}: {f['check']} failed ({f['kind']}): {f['message'][:160]}")
    lines.append("steps: " + ", ".join(f"{s['commit'][:10]} {s['verdict']}" for s in result["steps"]))
    return "\n".join(lines)


def main(argv=None):
    """Entry point of one bisect step (called by ``git bisect run``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["--step"] or "--" not in argv:
        print("usage: python -m mlxth.harness.tools.bisect --step TREE GOLDENS LOG -- RUN_ARGS...", file=sys.stderr)
        return SKIP
    sep = argv.index("--")
    tree, snapshots, log = (Path(a) for a in argv[1:sep])
    try:
        return step(tree, argv[sep + 1:], snapshots, log)
    except Exception as err:  # noqa: BLE001 - a step that cannot run is skipped, never fatal to bisect
        print(f"bisect step failed: {err}", file=sys.stderr)
        return SKIP


if __name__ == "__main__":
    sys.exit(main())
