"""What the baseline side of an A/B bench imports (``harness bench --against REV``).

``REV`` is, in this order: a folder (an installed copy of the target's
library, put first on PYTHONPATH); a git revision of the target's repository
(exported into a throw-away folder: for this project's own repository its
``trainers/`` folder becomes ``mlxth.trainers`` beside the running harness and
fixtures, so both sides run the same bench; a library's export puts its
import roots first on PYTHONPATH, ``src/`` and the like: ``import_roots``); or
a release of the target's PyPI distribution, installed aside
(``versions.library_version``).  A target given as a file inside the
repository is loaded from the export.
"""

import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ... import harness as _harness_pkg
from ... import trainers as _trainers_pkg
from ... import fixtures as _fixtures_pkg
from .import_roots import import_roots
from .versions import VersionError, library_version


class BaselineError(ValueError):
    """``--against`` names nothing usable (a usage error)."""


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def default_repo(target) -> Path:
    """The target's repository: the one holding its file, this project's for the reference trainers,
    else the working directory's."""
    where, sep, _ = target.spec.rpartition(":")
    if sep and where.endswith(".py"):
        start = Path(where).parent
    elif target.golden_key == "reference":
        start = Path(_trainers_pkg.__path__[0]).parent
    else:
        start = Path.cwd()
    top = _git(start, "rev-parse", "--show-toplevel")
    return Path(top.stdout.strip()) if top.returncode == 0 else start


def _own_project(tree: Path) -> bool:
    return all((tree / d / "__init__.py").is_file() for d in ("harness", "trainers", "fixtures"))


def _shim(tree: Path, where: Path) -> Path:
    """A folder whose ``mlxth`` is the running harness and fixtures with ``tree``'s trainers."""
    pkg = where / "mlxth"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, folder in (("harness", _harness_pkg.__path__[0]), ("fixtures", _fixtures_pkg.__path__[0]),
                         ("trainers", tree / "trainers")):
        (pkg / name).symlink_to(Path(folder).resolve())
    return where


def _with_path(env: dict, folders) -> dict:
    env = dict(env)
    parts = [str(f) for f in folders] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _spec_in(spec: str, repo: Path, tree: Path) -> str:
    where, sep, attr = spec.rpartition(":")
    if sep and where.endswith(".py"):
        try:
            return f"{tree / Path(where).resolve().relative_to(repo.resolve())}:{attr}"
        except ValueError:
            return spec  # a target file outside the repository stays as it is
    return spec


@contextmanager
def baseline_side(against: str, target, repo=None):
    """Yield ``(env, spec, description)`` for the baseline side's worker."""
    base_env = dict(os.environ)
    folder = Path(against).expanduser()
    if folder.is_dir():
        yield _with_path(base_env, [folder.resolve()]), target.spec, f"{folder} first on PYTHONPATH"
        return
    repo = Path(repo) if repo else default_repo(target)
    sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{against}^{{commit}}")
    if sha.returncode == 0:
        sha = sha.stdout.strip()
        with tempfile.TemporaryDirectory(prefix="mlxth-against-") as tmp:
            tree = Path(tmp) / "tree"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(repo), "archive", sha], capture_output=True)
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            if _own_project(tree):
                env = _with_path(base_env, [_shim(tree, Path(tmp) / "shim")])
                what = f"{repo.name} {sha[:10]}'s trainers/"
            else:
                env = _with_path(base_env, import_roots(tree))
                what = f"{repo.name} at {sha[:10]}"
            yield env, _spec_in(target.spec, repo, tree), what
        return
    if not target.distribution:
        raise BaselineError(f"--against {against}: neither a folder nor a revision of the git repository "
                            f"{repo}, and target {target.name!r} names no PyPI distribution")
    try:
        with library_version(target, against) as where:
            yield dict(os.environ), target.spec, f"{target.distribution} {against} (installed in {where})"
    except VersionError as err:
        raise BaselineError(f"--against {against}: not a folder or a revision of {repo}, and {err}") from None
