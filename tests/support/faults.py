"""Run ``harness run`` as a user does (a process of its own) and look for what it left behind.

Every process the run starts inherits a marker in its environment, so that
orphans are found by scanning ``/proc`` (no psutil); the run gets a
temporary folder of its own, so that leftovers in it can be counted.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

MARKER_ENV = "MLXTH_FAULT_MARKER"
REPORTS = ("report.json", "report.md", "junit.xml")


class HarnessRun:
    """A ``harness run`` subprocess with its own marker, temporary folder and reports folder."""

    def __init__(self, tmp_path: Path, *args, umask=None):
        self.marker = uuid.uuid4().hex
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        self.reports = tmp_path / "reports"
        env = {**os.environ, MARKER_ENV: self.marker, "TMPDIR": str(self.tmpdir)}
        cmd = [sys.executable, "-m", "mlxth.harness.cli", "run", "--reports", str(self.reports), *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)

    def finish(self, limit=600):
        self.output, _ = self.proc.communicate(timeout=limit)
        return self.proc.returncode

    def report(self):
        """(run folder, report.json) of the run, or (None, None)."""
        found = sorted(self.reports.glob("*/report.json"))
        if not found:
            return None, None
        return found[-1].parent, json.loads(found[-1].read_text())

    def wait_for_cases(self, n: int, limit=300) -> dict:
        """Block until the report names ``n`` finished cases; that report."""
        def finished():
            _, report = self.report()
            done = [c for c in (report or {}).get("cases", []) if c["status"] not in ("not-run", "interrupted")]
            return report if len(done) >= n else None
        return wait_until(finished, limit, f"{n} finished case(s)")

    def leftovers(self):
        """The run's temporary folders still in its TMPDIR."""
        return sorted(p.name for p in self.tmpdir.glob("mlxth-*"))


def wait_until(predicate, limit: float, what: str):
    """Poll ``predicate`` until it returns something true (that value); fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"gave up waiting for {what} after {limit} s")


def marked_processes(marker: str) -> list:
    """``(pid, command line)`` of every live process whose environment holds ``marker``."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to look for processes")
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":  # a zombie holds nothing and is reaped with its parent
                    found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def orphans(marker: str, limit=30) -> list:
    """The marked processes still alive after up to ``limit`` seconds (a killed group takes a moment)."""
    deadline = time.monotonic() + limit
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def digest(folder: Path) -> dict:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}
