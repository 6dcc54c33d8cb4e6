"""Run a target against another released version of its library (``--target-version``).

The release is installed from PyPI, without its dependencies, into a
throw-away folder that is put first on ``PYTHONPATH`` for the worker
processes; the environment the harness itself runs in is never changed, and
the folder is deleted afterwards.  So one environment can answer "which
release introduced or fixed this finding" without a second virtualenv per
version.  (Dependencies stay those of the installed release; a version that
needs others fails its cases with ``import-error``, which says so.)
"""

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager


class VersionError(RuntimeError):
    pass


@contextmanager
def library_version(target, version: str):
    dist = getattr(target, "distribution", None)
    if not dist:
        raise VersionError(f"target {target.name!r} names no PyPI distribution, so it has no versions to install")
    folder = tempfile.mkdtemp(prefix=f"mlxth-{dist}-{version}-")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
           "--target", folder, f"{dist}=={version}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        last = (out.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise VersionError(f"cannot install {dist}=={version}: {last}")
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
