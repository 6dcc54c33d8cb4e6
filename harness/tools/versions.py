"""Install another released version of a target's library aside (``--target-version``, the sweep).

The release is installed, without its dependencies, into a throw-away folder
that is put first on ``PYTHONPATH`` for the worker processes; the environment
the harness itself runs in is never changed, and the folder is deleted
afterwards.  So one environment can answer "which release introduced or fixed
this finding" without a second virtualenv per version.  (Dependencies stay
those of the installed release; a version that needs others fails its cases
with ``import-error``, which says so.)  Releases come from PyPI, or from a
local folder of built packages (``find_links``, with ``index=False`` for it
alone).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager

from packaging.version import InvalidVersion, Version


class VersionError(RuntimeError):
    pass


def _pip_source(find_links=None, index=True) -> list:
    args = [] if index else ["--no-index"]
    return args + (["--find-links", str(find_links)] if find_links else [])


def _distribution(target) -> str:
    dist = getattr(target, "distribution", None)
    if not dist:
        raise VersionError(f"target {target.name!r} names no PyPI distribution, so it has no versions to install")
    return dist


def install(target, version: str, folder: str, find_links=None, index=True) -> None:
    """Install release ``version`` of the target's distribution into ``folder`` (no dependencies)."""
    dist = _distribution(target)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
           "--no-compile", "--target", folder, *_pip_source(find_links, index), f"{dist}=={version}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if not line.startswith("WARNING")]
        raise VersionError(f"cannot install {dist}=={version}: {(lines or ['pip failed'])[-1].strip()}")


@contextmanager
def library_version(target, version: str, find_links=None, index=True):
    dist = _distribution(target)
    folder = tempfile.mkdtemp(prefix=f"mlxth-{dist}-{version}-")
    try:
        install(target, version, folder, find_links, index)
    except VersionError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = folder + (os.pathsep + saved if saved else "")
    try:
        yield folder
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        shutil.rmtree(folder, ignore_errors=True)


_AVAILABLE = re.compile(r"^Available versions:\s*(.*)$", re.M)


def releases(target, first=None, last=None, find_links=None, index=True, pre=False) -> list:
    """The target's released versions from ``first`` to ``last`` (inclusive), oldest first, as pip lists them."""
    dist = _distribution(target)
    bounds = []
    for name, value in (("--from", first), ("--to", last)):
        try:
            bounds.append(Version(value) if value else None)
        except InvalidVersion:
            raise VersionError(f"{name} {value!r} is not a version number") from None
    cmd = [sys.executable, "-m", "pip", "index", "versions", "--disable-pip-version-check",
           *_pip_source(find_links, index), *(["--pre"] if pre else []), dist]
    out = subprocess.run(cmd, capture_output=True, text=True)
    found = _AVAILABLE.search(out.stdout)
    if out.returncode != 0 or not found:
        lines = [line for line in out.stderr.strip().splitlines() if not line.startswith("WARNING")]
        raise VersionError(f"cannot list the releases of {dist}: {(lines or ['pip index failed'])[-1].strip()}")
    versions = sorted({Version(v.strip()) for v in found.group(1).split(",") if v.strip()})
    low, high = bounds
    if low and high and low > high:
        raise VersionError(f"--from {first} is newer than --to {last}")
    chosen = [v for v in versions if (low is None or v >= low) and (high is None or v <= high)]
    for name, bound in (("--from", low), ("--to", high)):
        if bound is not None and bound not in versions:
            shown = ", ".join(map(str, versions[-8:]))
            raise VersionError(f"{name} {bound}: {dist} has no such release (its releases: "
                               f"{'..., ' if len(versions) > 8 else ''}{shown})")
    return [str(v) for v in chosen]
