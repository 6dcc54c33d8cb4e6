"""Measure how far runs in another environment land from their goldens, against the tier the policy picks.

    harness run --reports R ...            # in the other environment (another mlx, mlx-lm, CPU, TF32 ...)
    python tests/bench/measure_tiers.py R/<run-id> [R/<run-id> ...]

For every case of each run, every numeric value of every step is compared
with the case's golden (``golden_path`` in report.json): the largest
absolute and relative difference, and the share of the tolerance used
(``|x - golden| / (atol + rtol |golden|)`` under ``golden.tolerance``; above 1
is a golden-drift).  One line per run, then the worst case.
"""

import argparse
import json
import math
from pathlib import Path

from mlxth.harness.judge import golden

NOT_NUMERICS = ("step", "learning_rate")


def differences(golden_trace: dict, case: dict):
    """(max abs, max rel, max share of the tolerance, rtol, atol, reason, where) of one case against its
    golden, over the steps and keys the harness holds (a data-parallel case: the equivalence tolerance)."""
    genv, env, dtype = golden_trace["environment"], case["environment"], case["case"]["settings"]["dtype"]
    steps, skip = golden_trace["steps"], set(golden.unheld_keys(env, dtype, genv))
    if case["case"]["settings"].get("ranks", 1) > 1:
        tol = golden.equivalence_tolerance(case["case"]["trainer"], env["backend"])
        rtol, atol, reason = tol.rtol, tol.atol, "equivalence tolerance"
        steps, skip = golden.equivalence_steps(steps, tol), set(tol.unstable)
    else:
        rtol, atol, reason = golden.tolerance(genv, env, dtype)
    worst_abs = worst_rel = used = 0.0
    where = ""
    for want, got in zip(steps, case["steps"]):
        for key, expected in want.items():
            actual = got.get(key)
            if key in NOT_NUMERICS or key in skip or not isinstance(expected, (int, float)) or not isinstance(actual, (int, float)):
                continue
            if not (math.isfinite(expected) and math.isfinite(actual)):
                continue
            diff = abs(actual - expected)
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / abs(expected) if expected else 0.0)
            allowed = atol + rtol * abs(expected)
            share = diff / allowed if allowed else (math.inf if diff else 0.0)
            if share > used:
                used, where = share, f"step {want.get('step')} {key}: {expected!r} vs {actual!r}"
    return worst_abs, worst_rel, used, rtol, atol, reason, where


def measure(run_dir: Path, dtype: str = "") -> dict:
    run = json.loads((Path(run_dir) / "report.json").read_text())
    rows = []
    for case in run["cases"]:
        path = Path(case.get("golden_path", ""))
        if not case["steps"] or not path.is_file() or dtype and case["case"]["settings"]["dtype"] != dtype:
            continue
        trace = golden.read(path)
        if golden.incomparable(trace["environment"], case["environment"], case["case"]["trainer"]):
            continue
        rows.append((case["id"], *differences(trace, case)))
    env = run["environment"]
    return {"run": run["run_id"], "env": f"mlx {env['mlx']}, mlx-lm {env['mlx-lm']}, {env['backend']} {env['device']}",
            "cases": len(rows), "passed": run["summary"]["pass"], "failed": run["summary"]["fail"],
            "errors": run["summary"]["error"], "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="reports/<run-id> folders")
    parser.add_argument("--dtype", default="", help="only cases of this dtype (float32, bfloat16)")
    parser.add_argument("--worst", type=int, default=0, help="also list this many cases, most tolerance used first")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        m = measure(run_dir, args.dtype)
        if not m["rows"]:
            print(f"{m['run']}: no case with a golden")
            continue
        worst = max(m["rows"], key=lambda r: r[3])
        print(f"{m['run']} ({m['env']}): {m['cases']} cases, {m['passed']} pass / {m['failed']} fail / "
              f"{m['errors']} error; max abs {max(r[1] for r in m['rows']):.2e}, "
              f"max rel {max(r[2] for r in m['rows']):.2e}, tolerance used {worst[3]:.3f} "
              f"(worst {worst[0]}; rtol {worst[4]:g}, atol {worst[5]:g}: {worst[6]})")
        for row in sorted(m["rows"], key=lambda r: -r[3])[:args.worst]:
            print(f"  {row[0]}: used {row[3]:.3f}, max abs {row[1]:.2e}, max rel {row[2]:.2e}; {row[7]}")


if __name__ == "__main__":
    main()
