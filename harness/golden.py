"""Golden traces: where they live, how they are compared, and the tolerance policy.

One golden per case, at ``snapshots/<backend>/<target>/<trainer>/<fixture>--<variant>.json``,
holding the per-step records and the environment they were taken in.  The
CLI (``harness run --update-snapshots``) and the pytest suite (through the
syrupy extension in ``snapshot_extension.py``) read and write these same
files with the same serialisation: one truth.

Tolerance policy (the only place it is stated):

* exact, bit for bit: fp32 on the CPU backend with the golden's mlx and
  mlx-lm versions (MLX's CPU backend is deterministic);
* rtol 1e-5, atol 1e-7: fp32 on the CPU with other library versions or
  another CPU model (vector code paths may sum in another order);
* rtol 1e-3, atol 1e-5: fp32 on a GPU backend (reductions are not promised
  to be deterministic; CUDA may use TF32);
* rtol 2e-2, atol 1e-3: bf16 anywhere;
* a data-parallel run (``harness run --ranks K``) against its single-process
  golden: it is a member of the golden's equivalence class, held to the
  trainer's class tolerance, stated (with the measurements behind it) in
  ``equivalence.py`` (``golden_check``; ``runner.apply_golden`` picks it).

The same place states the tolerances of the two other numeric checks
(``check_tolerances``): the closed-form first-step value (analytic) and the
independent loss recomputation.  On the CPU they are tight; on a GPU, where
fp32 matmuls may run as TF32 and the reference forward may take another
kernel than the policy's, they are measured bounds with a margin (H200, MLX
0.32.4: DPO step-1 loss within 3.2e-5 of ln 2, recomputed losses within
1.0e-3 relative).
"""

import json
import math
import os
import tempfile
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "snapshots"


def golden_path(root, backend, target, trainer, fixture, variant) -> Path:
    return Path(root) / backend / target / trainer / f"{fixture}--{variant}.json"


def tolerance(golden_env: dict, env: dict, dtype: str, approximate: bool = False):
    """``(rtol, atol, reason)`` for comparing a trace taken in ``env`` with a golden.

    ``approximate``: the trace comes from another configuration that must agree
    (a triage rung, an equivalence-class member), so never demand bit equality."""
    if dtype != "float32":
        return 2e-2, 1e-3, f"{dtype}: approximate"
    if env["backend"] != "cpu":
        return 1e-3, 1e-5, f"fp32 on {env['backend']}: GPU reductions are not bitwise reproducible"
    drift = version_drift(golden_env, env)
    if drift:
        return 1e-5, 1e-7, "fp32 on cpu with other library versions (" + "; ".join(drift) + ")"
    if approximate:
        return 1e-5, 1e-7, "fp32 on cpu, another configuration of the same case"
    return 0.0, 0.0, "exact: fp32 on cpu, same library versions"


def check_tolerances(env: dict, dtype: str) -> dict:
    """Tolerances of the analytic and loss-recompute checks for a backend and dtype."""
    if dtype != "float32":
        return {"analytic_atol": 2e-2, "recompute_rtol": 3e-2, "recompute_atol": 3e-2}
    if env["backend"] != "cpu":
        return {"analytic_atol": 2e-4, "recompute_rtol": 3e-3, "recompute_atol": 1e-4}
    return {"analytic_atol": 1e-6, "recompute_rtol": 1e-4, "recompute_atol": 1e-5}


def version_drift(golden_env: dict, env: dict):
    return [f"{k} {golden_env.get(k)} -> {env.get(k)}" for k in ("mlx", "mlx-lm", "device") if golden_env.get(k) != env.get(k)]


def dumps(trace: dict) -> str:
    return json.dumps(trace, indent=1, sort_keys=True) + "\n"


def trace_of(result: dict) -> dict:
    """The part of a case result that a golden holds."""
    return {"case": result["id"], "environment": result["environment"],
            "settings": result["case"]["settings"], "steps": result["steps"]}


def read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"golden {path}: line {err.lineno}: invalid JSON ({err.msg})") from None


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def first_divergence(golden_steps, steps, rtol, atol):
    """The first (step, key, expected, actual) that differs beyond tolerance, or None."""
    if len(steps) != len(golden_steps):
        return (min(len(steps), len(golden_steps)) + 1, "steps", len(golden_steps), len(steps))
    for want, got in zip(golden_steps, steps):
        for key, expected in want.items():
            actual = got.get(key)
            if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
                if math.isfinite(expected) and abs(actual - expected) <= atol + rtol * abs(expected):
                    continue
                if expected == actual:
                    continue
            elif expected == actual:
                continue
            return (want.get("step"), key, expected, actual)
    return None


def compare(golden: dict, result: dict, approximate: bool = False):
    """The golden check for a finished case result."""
    env, dtype = result["environment"], result["case"]["settings"]["dtype"]
    rtol, atol, reason = tolerance(golden["environment"], env, dtype, approximate)
    diff = first_divergence(golden["steps"], result["steps"], rtol, atol)
    drift = version_drift(golden["environment"], env)
    note = f" [golden taken with {'; '.join(drift)}]" if drift else ""
    if diff is None:
        return {"name": "golden", "status": "pass", "kind": None,
                "detail": f"{len(golden['steps'])} steps match ({reason}){note}"}
    step, key, expected, actual = diff
    return {"name": "golden", "status": "fail", "kind": "golden-drift",
            "detail": f"step {step}: {key} expected {expected!r}, got {actual!r} "
                      f"(rtol {rtol:g}, atol {atol:g}: {reason}){note}"}
