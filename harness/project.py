"""Where a project's goldens and reports live: paths resolve from the project root, never from the install.

The root is found as pytest finds its rootdir: the nearest folder, from the
working directory up, that holds a ``pyproject.toml``; else the working
directory itself.
"""

from pathlib import Path


def project_root(start=None) -> Path:
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return here


def default_snapshots(start=None) -> Path:
    return project_root(start) / "snapshots"


def expected_findings(snapshots) -> Path:
    """The list of conformance findings a project accepts, kept beside its goldens."""
    return Path(snapshots) / "expected_findings.json"
