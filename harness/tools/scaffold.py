"""``harness init``: what a trainer library needs to make the harness its CI gate.

The ``[tool.mlx-trainer-harness]`` table (appended to pyproject.toml, or a new
one), a target adapter that documents the interface through a worked example,
a GitHub Actions workflow, and ``reports/`` in .gitignore.  Nothing that
exists is ever rewritten: an existing file is kept, or only appended to.
The texts are package data under ``templates/``.
"""

import re
from importlib.metadata import version
from pathlib import Path

from ..project import TABLE, harness_table, load_config, read_pyproject

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TARGET_FILE = "harness_target.py"
WORKFLOW_FILE = ".github/workflows/mlx-trainer-harness.yml"


def template(name: str) -> str:
    return (TEMPLATES / name).read_text()


def project_name(root: Path) -> str:
    """The library's name (pyproject's ``[project] name``, else the folder's), as a target name."""
    pyproject = root / "pyproject.toml"
    project = read_pyproject(pyproject).get("project", {}) if pyproject.is_file() else {}
    name = project.get("name") if isinstance(project, dict) and isinstance(project.get("name"), str) else root.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "mylib"


def _append(path: Path, text: str) -> None:
    """Add ``text`` at the end of ``path`` (its bytes so far unchanged)."""
    existing = path.read_text()
    with open(path, "a") as fh:
        fh.write(("" if not existing or existing.endswith("\n") else "\n") + text)


def _create(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as fh:  # "x": never replaces a file that appeared meanwhile
        fh.write(text)


def init_project(root: Path, report) -> None:
    """Write the files into the project at ``root``; ``report(relative path, what was done)`` follows
    each.  Raises ``ConfigError`` for a pyproject.toml that cannot be read (or whose table is bad)."""
    root = Path(root).resolve()
    pyproject = root / "pyproject.toml"
    table = template("config.toml").replace("@@TARGET_SPEC@@", f"{TARGET_FILE}:Target")
    if not pyproject.exists():
        _create(pyproject, table.lstrip("\n"))
        report("pyproject.toml", f"written, with [tool.{TABLE}]")
    elif harness_table(pyproject) is not None:
        report("pyproject.toml", f"kept: it already has [tool.{TABLE}]")
    else:
        _append(pyproject, table)
        report("pyproject.toml", f"[tool.{TABLE}] appended")
    _write_new(root, TARGET_FILE, template("harness_target.py.template").replace("@@NAME@@", project_name(root)),
               report)
    config = load_config(root)  # the table as it now stands, checked
    workflow = template("workflow.yml").replace("@@SNAPSHOTS@@", _relative(config.snapshots, root))
    # The release that wrote it: goldens are taken with one release of the harness, and CI runs that one.
    _write_new(root, WORKFLOW_FILE, workflow.replace("@@VERSION@@", version("mlx-trainer-harness")), report)
    line = _relative(config.reports, root).rstrip("/") + "/"
    ignore = root / ".gitignore"
    if ".." in Path(line).parts or Path(line).is_absolute():
        return  # reports outside the project: nothing to ignore
    if ignore.exists() and line in ignore.read_text().splitlines():
        report(".gitignore", f"kept: it already ignores {line}")
    elif ignore.exists():
        _append(ignore, line + "\n")
        report(".gitignore", f"{line} appended")
    else:
        _create(ignore, line + "\n")
        report(".gitignore", f"written, ignoring {line}")


def _write_new(root: Path, relative: str, text: str, report) -> None:
    path = root / relative
    if path.exists():
        report(relative, "kept: it exists")
    else:
        _create(path, text)
        report(relative, "written")


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()

