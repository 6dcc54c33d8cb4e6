"""The source tree's shape: layering, no import cycles, modules readable in one sitting, one CLI."""

import ast
from pathlib import Path

import pytest

from support import REPOSITORY

PACKAGES = ("fixtures", "trainers", "harness")  # installed as mlxth.<name>
BANNED = {"fixtures": ("mlxth.trainers", "mlxth.harness"), "trainers": ("mlxth.harness",)}
MAX_LINES = 400


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("mlxth", *parts))


def imports_of(root: Path, path: Path) -> set:
    """The mlxth modules ``path`` imports, relative imports resolved (``from . import x`` counts x)."""
    name = module_name(root, path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("mlxth.")}


def graph(root: Path) -> dict:
    files = [p for pkg in PACKAGES if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")]
    modules = {module_name(root, p): p for p in files}
    return {m: {i for i in imports_of(root, p) if i in modules and i != m} for m, p in modules.items()}


def layering_breaches(edges: dict) -> list:
    return sorted(f"{m} imports {i}" for m, targets in edges.items() for i in targets
                  for banned in BANNED.get(m.split(".")[1], ()) if i == banned or i.startswith(banned + "."))


def cycles(edges: dict) -> list:
    """Every module on an import cycle (Tarjan's strongly connected components of size > 1)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_fixtures_and_trainers_never_import_the_harness():
    assert layering_breaches(graph(REPOSITORY)) == []


def test_there_are_no_import_cycles():
    assert cycles(graph(REPOSITORY)) == []


def test_no_module_runs_past_400_lines():
    long = [f"{p.relative_to(REPOSITORY)}: {n}" for pkg in PACKAGES for p in (REPOSITORY / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert long == []


def test_the_harness_has_one_command_line():
    users = [str(p.relative_to(REPOSITORY)) for p in (REPOSITORY / "harness").rglob("*.py")
             if "argparse" in p.read_text()]
    assert users == []


@pytest.fixture
def scratch_tree(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    return tmp_path


def test_the_checks_see_a_planted_cycle_and_a_planted_breach(scratch_tree):
    (scratch_tree / "harness" / "a.py").write_text("from .b import x\n")
    (scratch_tree / "harness" / "b.py").write_text("from . import a\n")
    (scratch_tree / "trainers" / "core.py").write_text("from ..harness import a\n")
    (scratch_tree / "fixtures" / "m.py").write_text("import mlxth.trainers.core\n")
    edges = graph(scratch_tree)
    assert cycles(edges) == [["mlxth.harness.a", "mlxth.harness.b"]]
    assert layering_breaches(edges) == ["mlxth.fixtures.m imports mlxth.trainers.core",
                                        "mlxth.trainers.core imports mlxth.harness",
                                        "mlxth.trainers.core imports mlxth.harness.a"]
