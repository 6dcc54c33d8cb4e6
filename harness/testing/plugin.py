"""The pytest plugin (``pytest11`` entry point): the harness cases inside a library's own pytest run.

Inert unless asked for: without ``--harness`` it records pytest's rootdir and
nothing else (no MLX, no syrupy, no harness module is imported), and a test
that asks for ``harness_case`` is skipped.  With ``--harness`` such a test is
parametrised over the matrix ``harness run`` would run (the project's
``[tool.mlx-trainer-harness]`` table, resolved by the same code);
``harness_result`` runs the case in a worker process with every check, and
``harness_golden`` is its golden through the syrupy extension, so that
``pytest --snapshot-update`` writes what ``harness run --update-snapshots``
writes:

    def test_trainers(harness_result, harness_golden):
        assert harness_result["failure"] is None, harness_result["failure"]
        assert harness_result == harness_golden
"""

import tempfile
from pathlib import Path

import pytest

from .. import testing

OPTION = "--harness"
_SELECTION = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("mlx-trainer-harness")
    group.addoption(OPTION, action="store_true", default=False,
                    help="Run the harness cases of the project's [tool.mlx-trainer-harness] matrix "
                         "(tests that ask for the harness_case fixture).")


def pytest_configure(config):
    testing.rootdir = config.rootpath
    if config.getoption(OPTION):
        config.stash[_SELECTION] = _select(config.rootpath)


def _select(rootdir):
    """``(target, cases)`` of the project around ``rootdir``; a bad configuration stops the session."""
    try:
        import syrupy  # noqa: F401 - goldens are compared through syrupy
    except ImportError:
        raise pytest.UsageError(f"{OPTION} needs syrupy: pip install 'mlx-trainer-harness[pytest]'") from None
    # Imported here, not at the top, so that a session without --harness imports none of it.
    from ..project import ConfigError, load_config
    from ..selection import SelectionError, select
    from ..target import TargetError

    try:
        return select(load_config(rootdir))
    except (ConfigError, SelectionError, TargetError) as err:
        raise pytest.UsageError(f"{OPTION}: {err}") from None


def pytest_generate_tests(metafunc):
    if "harness_case" not in metafunc.fixturenames:
        return
    selection = metafunc.config.stash.get(_SELECTION, None)
    if selection is None:
        skip = pytest.mark.skip(reason=f"harness cases run with pytest {OPTION}")
        metafunc.parametrize("harness_case", [pytest.param(None, marks=skip)], ids=["harness"])
        return
    _, cases = selection
    metafunc.parametrize("harness_case", cases, ids=[case.id for case in cases])


@pytest.fixture
def harness_result(harness_case, request):
    """The case's result (every check but the golden), from a worker process as ``harness run`` runs it."""
    from ..run.launch import DEFAULT_TIMEOUT, run_process

    with tempfile.TemporaryDirectory(prefix="mlxth-pytest-") as tmp:
        return run_process(harness_case, DEFAULT_TIMEOUT, Path(tmp))


@pytest.fixture
def harness_golden(harness_result, request):
    """The syrupy snapshot bound to the case's golden in the project's golden folder."""
    from ..project import load_config
    from .snapshot_extension import golden_snapshot

    target, _ = request.config.stash[_SELECTION]
    snapshot = request.getfixturevalue("snapshot")
    return golden_snapshot(snapshot, harness_result, root=load_config(request.config.rootpath).snapshots,
                           golden_key=target.golden_key)
