"""Goldens through syrupy: the pytest suite and ``harness run --update-snapshots`` share one set of files.

The first tests compare a few cheap cases of the default matrix with the
repository's goldens.  The rest point the extension at a scratch root
(``root=`` or ``MLXTH_SNAPSHOTS``), so the repository's ``snapshots/`` is
never written.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from syrupy.terminal import disable_color

from mlxth.harness.judge import golden
from mlxth.harness.judge.golden import apply_golden
from mlxth.harness.model import Case, case_settings
from mlxth.harness.run.worker import run_case
from support import HERE, SNAPSHOTS
from mlxth.harness.testing.snapshot_extension import ROOT_ENV, GoldenRefused, GoldenTraceExtension, golden_snapshot

# Cheap cases of the default matrix (about 1 s each on the CPU), one per fixture.
CASES = [("dpo", "tiny-llama"), ("kto", "tiny-linear-attn"), ("simpo", "tiny-qwen35")]
CASE_IDS = [f"{t}-{f}" for t, f in CASES]


@pytest.fixture(scope="module")
def case_result():
    """Run a reference fp32 case once per module; return a fresh copy per call."""
    cache = {}

    def get(trainer, fixture):
        if (trainer, fixture) not in cache:
            cache[trainer, fixture] = run_case(Case("reference", trainer, fixture, "fp32",
                                                    case_settings(trainer, "fp32", 3)))
        return copy.deepcopy(cache[trainer, fixture])

    return get


@pytest.fixture
def golden_trace(snapshot):
    """``assert result == golden_trace(result)``: the result against its case's golden."""

    def bind(data, **kwargs):
        return golden_snapshot(snapshot, data, **kwargs)

    return bind


def _path(result, root):
    case = result["case"]
    return golden.golden_path(root, result["environment"]["backend"], "reference", case["trainer"],
                              case["fixture"], case["variant"])


def _drift(result, step=2, key="loss", by=1e-6):
    drifted = copy.deepcopy(result)
    drifted["steps"][step - 1][key] += by
    return drifted


# -- the repository's goldens --------------------------------------------------


@pytest.mark.parametrize("trainer,fixture", CASES, ids=CASE_IDS)
def test_case_matches_its_golden(case_result, golden_trace, trainer, fixture):
    result = case_result(trainer, fixture)
    assert result["status"] == "pass", result["failure"]
    assert result == golden_trace(result)


# -- location, serialisation, matching (no syrupy session needed) --------------


def test_location_is_the_cli_golden_path(case_result, tmp_path, monkeypatch):
    result = case_result("dpo", "tiny-llama")
    monkeypatch.delenv(ROOT_ENV, raising=False)
    expected = golden.golden_path(SNAPSHOTS, "cpu", "reference", "dpo", "tiny-llama", "fp32")
    if result["environment"]["backend"] == "cpu":
        assert GoldenTraceExtension.for_result(result).golden_file == expected
    # A trace locates the same file as its result; root= and MLXTH_SNAPSHOTS move it.
    trace = golden.trace_of(result)
    assert GoldenTraceExtension.for_result(trace).golden_file == _path(result, SNAPSHOTS)
    assert GoldenTraceExtension.for_result(result, root=tmp_path).golden_file == _path(result, tmp_path)
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "env"))
    assert GoldenTraceExtension.for_result(trace).golden_file == _path(result, tmp_path / "env")
    assert GoldenTraceExtension.for_result(trace, golden_key="other").golden_file.parts[-3] == "other"
    with pytest.raises(TypeError, match="no golden path"):
        GoldenTraceExtension.get_location(test_location=None, index=0)


def test_serialisation_is_the_clis(case_result):
    result = case_result("kto", "tiny-linear-attn")
    extension = GoldenTraceExtension.for_result(result)()
    text = golden.dumps(golden.trace_of(result))
    assert extension.serialize(result) == text
    assert extension.serialize(golden.trace_of(result)) == text


def test_drift_is_reported_with_step_and_key(case_result):
    result = case_result("dpo", "tiny-llama")
    recorded = golden.dumps(golden.trace_of(result))
    drifted = _drift(result)
    extension = GoldenTraceExtension.for_result(drifted)()
    received = extension.serialize(drifted)
    assert extension.matches(serialized_data=extension.serialize(result), snapshot_data=recorded)
    assert not extension.matches(serialized_data=received, snapshot_data=recorded)
    with disable_color():
        lines = list(extension.diff_lines(received, recorded))
    want = result["steps"][1]["loss"]
    assert f"step 2: loss expected {want!r}, got {want + 1e-6!r}" in lines[0]
    assert "(rtol 0, atol 0: exact: fp32 on cpu, same library versions)" in lines[0]
    assert any('"loss"' in line for line in lines[1:])  # then the textual diff


def test_tolerance_follows_the_golden_policy(case_result):
    result = case_result("dpo", "tiny-llama")
    tiny = _drift(result, by=1e-12)
    extension = GoldenTraceExtension.for_result(tiny)()
    # Same library versions and CPU: exact, so even 1e-12 is a drift.
    assert not extension.matches(serialized_data=extension.serialize(tiny),
                                 snapshot_data=golden.dumps(golden.trace_of(result)))
    # A golden from another CPU model: rtol 1e-5, so 1e-12 is within, 1e-3 is not.
    other_cpu = golden.trace_of(result)
    other_cpu["environment"] = {**other_cpu["environment"], "device": "another CPU"}
    assert extension.matches(serialized_data=extension.serialize(tiny), snapshot_data=golden.dumps(other_cpu))
    big = _drift(result, by=1e-3)
    assert not extension.matches(serialized_data=extension.serialize(big), snapshot_data=golden.dumps(other_cpu))
    # Under --snapshot-update only identical bytes match.
    exact = GoldenTraceExtension.for_result(tiny, exact=True)()
    assert not exact.matches(serialized_data=exact.serialize(tiny), snapshot_data=golden.dumps(other_cpu))


def test_missing_golden_message_and_nothing_discovered(case_result, tmp_path):
    result = case_result("kto", "tiny-linear-attn")
    extension = GoldenTraceExtension.for_result(result, root=tmp_path)()
    path = str(_path(result, tmp_path))
    assert extension.read_snapshot_data_from_location(snapshot_location=path, snapshot_name="", session_id="") is None
    assert "no golden at" in next(extension.diff_lines(extension.serialize(result), ""))
    # Discovery finds nothing, so syrupy never counts a golden as unused.
    shutil.copytree(SNAPSHOTS, tmp_path, dirs_exist_ok=True)
    assert not list(extension.discover_snapshots(test_location=None))
    extension.delete_snapshots(snapshot_location=path, snapshot_names={"x"})
    assert Path(path).is_file()


def test_failing_and_mismatched_results_are_refused(case_result):
    result = case_result("dpo", "tiny-llama")
    failing = copy.deepcopy(result)
    failing["checks"].append({"name": "finite", "status": "fail", "kind": "non-finite", "detail": "nan at step 2"})
    extension = GoldenTraceExtension.for_result(failing)()
    with pytest.raises(GoldenRefused, match="fails other checks.*finite: nan at step 2"):
        extension.serialize(failing)
    other = GoldenTraceExtension.for_result(case_result("kto", "tiny-linear-attn"))()
    with pytest.raises(GoldenRefused, match="given to the golden of"):
        other.serialize(result)
    with pytest.raises(GoldenRefused, match="takes a case result"):
        extension.serialize([1, 2])


# -- a real pytest session on a scratch root -------------------------------------

GENERATED_TEST = textwrap.dedent('''
    import json, os
    import pytest
    from mlxth.harness.testing.snapshot_extension import golden_snapshot

    RESULTS = json.loads(open(os.environ["GOLDEN_TEST_RESULTS"]).read())

    @pytest.mark.parametrize("result", RESULTS, ids=[r["case"]["trainer"] for r in RESULTS])
    def test_golden(snapshot, result):
        assert result == golden_snapshot(snapshot, result)
''')


def _pytest(where: Path, *args):
    env = {**os.environ, ROOT_ENV: str(where / "snapshots"), "GOLDEN_TEST_RESULTS": str(where / "results.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    env.pop("PYTEST_ADDOPTS", None)
    # No path on the command line: syrupy treats a run over everything collected as
    # entitled to delete whatever snapshots it discovered and no test used.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          cwd=where / "suite", env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _tree(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pytest_update_writes_the_cli_bytes_and_keeps_other_goldens(case_result, tmp_path):
    a, b = case_result("dpo", "tiny-llama"), case_result("kto", "tiny-linear-attn")
    root = tmp_path / "snapshots"
    shutil.copytree(SNAPSHOTS, root)  # every golden of the matrix ...
    (root / "cuda" / "reference" / "grpo").mkdir(parents=True, exist_ok=True)  # ... one of another backend, and a stray file
    (root / "cuda" / "reference" / "grpo" / "tiny-llama--bf16.json").write_text('{"steps": []}\n')
    (root / "README.txt").write_text("not a golden\n")
    path_a, path_b = _path(a, root), _path(b, root)
    path_a.unlink(missing_ok=True)  # a: no golden yet
    golden.write_atomic(path_b, golden.dumps(golden.trace_of(_drift(b))))  # b: a drifted golden
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "suite" / "test_generated.py").write_text(GENERATED_TEST)
    (tmp_path / "results.json").write_text(json.dumps([a, b]))
    before = _tree(root)

    # 1. Without --snapshot-update: both fail, with syrupy's and the golden check's words; nothing is written.
    rc, out = _pytest(tmp_path)
    assert rc == 1, out
    assert "2 failed" in out, out
    assert "does not exist" in out, out
    drifted_loss = b["steps"][1]["loss"] + 1e-6
    assert f"step 2: loss expected {drifted_loss!r}, got {b['steps'][1]['loss']!r}" in out, out
    assert _tree(root) == before

    # 2. --snapshot-update: a is created and b rewritten with the CLI's bytes; nothing else changes.
    rc, out = _pytest(tmp_path, "--snapshot-update")
    assert rc == 0, out
    after = _tree(root)
    for result, path in ((a, path_a), (b, path_b)):
        assert path.read_text() == golden.dumps(golden.trace_of(result))
        assert after.pop(str(path.relative_to(root))) is not None
        before.pop(str(path.relative_to(root)), None)
    assert after == before, "an update run touched the goldens of cases it did not run"

    # The CLI's writer (golden.apply_golden with update) gives the same bytes.
    cli_root = tmp_path / "cli"
    for result, path in ((a, path_a), (b, path_b)):
        apply_golden(copy.deepcopy(result), cli_root, "reference", update=True)
        assert _path(result, cli_root).read_bytes() == path.read_bytes()

    # 3. A plain run now passes, and the goldens of unselected cases are not "unused".
    rc, out = _pytest(tmp_path)
    assert rc == 0, out
    assert "unused" not in out, out
    assert "2 passed" in out, out
