"""The worker pool: many cases per worker, each as if it ran in a fresh process."""

import json
import subprocess
import sys

import pytest

from mlxth.harness.model import Case, case_settings
from mlxth.harness.run.launch import case_folder
from mlxth.harness.run.pool import WorkerPool
from support import PLANTED_LEAKS, PLANTED_TARGETS

LEAKS = str(PLANTED_LEAKS)


def _case(trainer, target="reference", spec="", fixture="tiny-llama", variant="fp32", steps=2):
    return Case(target, trainer, fixture, variant, case_settings(trainer, variant, steps), spec)


STICKY_ORPO = _case("orpo", "planted-sticky", f"{LEAKS}:Sticky")
LEAKY = _case("simpo", "planted-leaky", f"{LEAKS}:Leaky")
# The cases whose traces are compared: a file-spec target with module state, a sampling trainer
# that seeds MLX's generator, a compiled step.
WATCHED = [_case("dpo", "planted-sticky", f"{LEAKS}:Sticky"), _case("grpo"), _case("kto", variant="compiled")]


def _run_in_pool(tmp_path, cases, name):
    """Run ``cases`` one after another in one pool worker; (result, rank-0 info) of each."""
    workdir = tmp_path / name
    workdir.mkdir()
    pool = WorkerPool(workdir, "reference", 1)
    out = []
    try:
        for i, case in enumerate(cases):
            outdir = case_folder(case, workdir, f"check{i}")
            result = pool.run(case, 300, outdir, workdir / f"{i}.log")
            out.append((result, json.loads((outdir / "rank0.json").read_text())))
    finally:
        pool.close()
    return out


def _trace(result, info):
    return result["steps"], info["fingerprint"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Each watched case first in a worker of its own."""
    tmp = tmp_path_factory.mktemp("fresh")
    return [_run_in_pool(tmp, [case], f"fresh{i}")[0] for i, case in enumerate(WATCHED)]


def test_a_case_traces_the_same_first_in_a_fresh_worker_or_after_others(tmp_path, fresh):
    after = _run_in_pool(tmp_path, [STICKY_ORPO, LEAKY, *WATCHED], "busy")
    assert len({info["pid"] for _, info in after}) == 1  # one process ran them all
    for (result, info), (alone, alone_info), case in zip(after[2:], fresh, WATCHED):
        assert alone["status"] == "pass", (case.id, alone["failure"])
        assert result["status"] == "pass", (case.id, result["failure"])
        assert _trace(result, info) == _trace(alone, alone_info), case.id


def test_without_the_pools_reset_the_leaks_change_those_traces(tmp_path, fresh):
    """The control: the same cases in one plain process, nothing put back, do not trace the same."""
    workdir = tmp_path / "plain"
    workdir.mkdir()
    folders = [case_folder(c, workdir, f"check{i}") for i, c in enumerate([STICKY_ORPO, LEAKY, *WATCHED])]
    script = ("import sys; from mlxth.harness.run import worker\n"
              "for d in sys.argv[1:]: worker.main([d + '/case.json', d, 'check'])\n")
    subprocess.run([sys.executable, "-c", script, *map(str, folders)], check=True, capture_output=True)
    for folder, (alone, alone_info), case in zip(folders[2:4], fresh, WATCHED):
        result = json.loads((folder / "result.json").read_text())
        info = json.loads((folder / "rank0.json").read_text())
        assert _trace(result, info) != _trace(alone, alone_info), case.id


def test_a_crashed_or_hung_case_is_its_own_error_and_its_worker_is_replaced(tmp_path):
    planted = str(PLANTED_TARGETS)
    cases = [_case("simpo", "planted-abort", f"{planted}:Abort"), _case("dpo"),
             _case("orpo", "planted-hang", f"{planted}:Hang"), _case("dpo")]
    workdir = tmp_path / "w"
    workdir.mkdir()
    pool = WorkerPool(workdir, "reference", 1)
    try:
        results = []
        for i, case in enumerate(cases):
            results.append(pool.run(case, 20, case_folder(case, workdir, f"c{i}"), workdir / f"{i}.log"))
    finally:
        pool.close()
    assert [r["status"] for r in results] == ["error", "pass", "error", "pass"]
    assert results[0]["failure"]["kind"] == "crash" and "SIGABRT" in results[0]["failure"]["message"]
    assert results[2]["failure"]["kind"] == "timeout"
    assert "no result after 20 s (killed); rank 0 stuck in step 1" in results[2]["failure"]["message"]
    assert len(pool.all) == 3  # the first worker died, the second was killed, a third ran the last case
    assert all(w.proc.returncode is not None for w in pool.all)
