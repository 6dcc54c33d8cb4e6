"""One rank of a data-parallel case, or a single-process equivalence-class member.

    python -m mlxth.harness.rank_worker CASE.json OUTDIR {check|trace}

``distributed.py`` starts it through ``mlx.launch`` once per rank for a case
with ``settings.ranks = K`` (``MLX_RANK`` and the backend's variables are set
by the launcher), or once, plainly, for a single-process member.  Every rank
runs the same code in lock step (the collectives need it):

* ``check``: the whole case with every check (``worker.run_case``), as the
  single-process worker runs it;
* ``trace``: the steps only, no probe and no rerun (an equivalence-class
  member); rank 0 also saves the final trainable weights.

Files written to OUTDIR (``r`` the rank):

* ``rank<r>.started``: first thing, the pid; the launcher side waits for all
  of them before lowering the launcher's priority;
* ``rank<r>.steps``: one line per finished step, so a crash or a hang names
  the step it happened in;
* ``rank<r>.json``: at the end, the status, the error if any and a
  fingerprint (sha256) of every final weight tensor, so the harness can
  check that all ranks ended with identical weights;
* ``result.json`` (rank 0): the case result; ``weights.safetensors`` (rank 0,
  trace mode).

A rank whose run failed exits with status 3 once its files are written, so
that ``mlx.launch`` stops the others instead of leaving them waiting in a
collective for a rank that has gone.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from . import checks
from .cases import Case
from .env import environment
from .worker import run_case, run_once

FAILED_RANK_STATUS = 3
BACKEND_ENV = "MLXTH_DIST_BACKEND"


def fingerprint(model) -> dict:
    """sha256 of every parameter's bytes (bf16 widened to fp32, exactly), by name."""
    out = {}
    for name, value in tree_flatten(model.parameters()):
        if value.dtype == mx.bfloat16:
            value = value.astype(mx.float32)
        out[name] = hashlib.sha256(memoryview(value)).hexdigest()[:16]
    return out


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def init_group(ranks: int):
    """The process group mlx.launch set up, or None for one process."""
    if ranks <= 1:
        return None
    group = mx.distributed.init(strict=True, backend=os.environ.get(BACKEND_ENV, "any"))
    if group.size() != ranks:
        raise RuntimeError(f"the case asks for {ranks} ranks but the launcher started {group.size()}")
    return group


def _trace_case(case: Case, on_step, observe) -> dict:
    started = time.perf_counter()
    records, error, obs = run_once(case, probe=False, on_step=on_step)
    observe(obs)
    result = {"case": case.to_dict(), "id": case.id, "environment": environment(), "steps": records,
              "checks": [checks.completes(records, error, case.settings.steps), checks.finite(records)],
              "error": error, "duration_s": round(time.perf_counter() - started, 3)}
    return checks.conclude(result)


def main(argv=None) -> int:
    case_path, outdir, mode = sys.argv[1:] if argv is None else argv
    outdir = Path(outdir)
    with open(case_path) as fh:
        case = Case.from_dict(json.load(fh))
    group = init_group(case.settings.ranks)
    rank = group.rank() if group is not None else 0
    (outdir / f"rank{rank}.started").write_text(str(os.getpid()))
    steps_log = open(outdir / f"rank{rank}.steps", "a", buffering=1)

    def on_step(record):
        steps_log.write(f"{record['step']}\n")

    seen = {}
    result = (_trace_case if mode == "trace" else run_case)(case, on_step=on_step, observe=seen.update)
    model = seen.get("model")
    info = {"rank": rank, "size": 1 if group is None else group.size(), "pid": os.getpid(),
            "status": "error" if result.get("error") else "ok", "error": result.get("error"),
            "steps": len(result["steps"]), "fingerprint": fingerprint(model) if model is not None else {}}
    if rank == 0:
        if mode == "trace" and model is not None:
            mx.save_safetensors(str(outdir / "weights.safetensors"), dict(tree_flatten(model.trainable_parameters())))
        _write_json(outdir / "result.json", result)
    _write_json(outdir / f"rank{rank}.json", info)
    steps_log.close()
    return FAILED_RANK_STATUS if info["status"] == "error" and info["size"] > 1 else 0


if __name__ == "__main__":
    sys.exit(main())
