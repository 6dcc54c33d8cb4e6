"""The folders a library's repository imports its packages from: what goes first on PYTHONPATH to run its code.

The tree's own ``pyproject.toml`` says where its packages live: setuptools'
``package-dir`` (``"" = "src"``, or a package mapped to a folder of its name)
and ``packages.find.where``, hatch's wheel ``packages`` (the parent of each
``src/mylib``), poetry's ``packages`` (``from``); when it says nothing, a
``src/`` folder holding a package or module, by convention.  Those folders, then the
tree's root.  First on PYTHONPATH they win over an editable install of another
checkout (``pip install -e .``: a ``.pth`` path, or setuptools' finder, which
sits after the path finder on ``sys.meta_path``), so ``import mylib`` takes
the tree's code.
"""

from pathlib import Path

from ..project import ConfigError, read_pyproject


def _get(table, *keys):
    for key in keys:
        table = table.get(key) if isinstance(table, dict) else None
    return table


def _list(value) -> list:
    return value if isinstance(value, list) else []


def declared_roots(pyproject: dict) -> list:
    """The folders (relative, as written) that ``pyproject`` maps packages from."""
    tool = _get(pyproject, "tool") or {}
    folders = []
    package_dir = _get(tool, "setuptools", "package-dir")
    for name, folder in (package_dir.items() if isinstance(package_dir, dict) else ()):
        if isinstance(folder, str):
            if not name:
                folders.append(folder)
            elif "." not in name and Path(folder).name == name:
                folders.append(str(Path(folder).parent))
    where = _get(tool, "setuptools", "packages", "find", "where")
    folders += [w for w in _list(where) if isinstance(w, str)]
    for packages in (_get(tool, "hatch", "build", "targets", "wheel", "packages"),
                     _get(tool, "hatch", "build", "packages")):
        folders += [str(Path(p).parent) for p in _list(packages) if isinstance(p, str)]
    folders += [p["from"] for p in _list(_get(tool, "poetry", "packages"))
                if isinstance(p, dict) and isinstance(p.get("from"), str)]
    return folders


def import_roots(tree: Path) -> list:
    """``tree``'s import roots, the declared (or conventional ``src/``) folders first, then the root itself;
    only folders inside the tree that exist.  A missing or unreadable pyproject.toml declares nothing."""
    tree = Path(tree).resolve()
    try:
        folders = declared_roots(read_pyproject(tree / "pyproject.toml"))
    except (OSError, ConfigError):
        folders = []
    src = tree / "src"
    if not folders and src.is_dir() and any(p.suffix == ".py" or (p / "__init__.py").is_file() for p in src.iterdir()):
        folders = ["src"]
    roots = []
    for folder in [*folders, "."]:
        path = (tree / folder).resolve()
        if path.is_dir() and path.is_relative_to(tree) and path not in roots:
            roots.append(path)
    return roots
