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
    """(max abs, max rel, max share of the tolerance, rtol, atol, reason) of one case against its golden."""
    rtol, atol, reason = golden.tolerance(golden_trace["environment"], case["environment"],
                                          case["case"]["settings"]["dtype"])
    worst_abs = worst_rel = used = 0.0
    for want, got in zip(golden_trace["steps"], case["steps"]):
        for key, expected in want.items():
            actual = got.get(key)
            if key in NOT_NUMERICS or not isinstance(expected, (int, float)) or not isinstance(actual, (int, float)):
                continue
            if not (math.isfinite(expected) and math.isfinite(actual)):
                continue
            diff = abs(actual - expected)
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / abs(expected) if expected else 0.0)
            allowed = atol + rtol * abs(expected)
            used = max(used, diff / allowed if allowed else (math.inf if diff else 0.0))
    return worst_abs, worst_rel, used, rtol, atol, reason


def measure(run_dir: Path) -> dict:
    run = json.loads((Path(run_dir) / "report.json").read_text())
    rows = []
    for case in run["cases"]:
        path = Path(case.get("golden_path", ""))
        if not case["steps"] or not path.is_file():
            continue
        rows.append((case["id"], *differences(golden.read(path), case)))
    env = run["environment"]
    return {"run": run["run_id"], "env": f"mlx {env['mlx']}, mlx-lm {env['mlx-lm']}, {env['backend']} {env['device']}",
            "cases": len(rows), "passed": run["summary"]["pass"], "failed": run["summary"]["fail"],
            "errors": run["summary"]["error"], "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="reports/<run-id> folders")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        m = measure(run_dir)
        if not m["rows"]:
            print(f"{m['run']}: no case with a golden")
            continue
        worst = max(m["rows"], key=lambda r: r[3])
        print(f"{m['run']} ({m['env']}): {m['cases']} cases, {m['passed']} pass / {m['failed']} fail / "
              f"{m['errors']} error; max abs {max(r[1] for r in m['rows']):.2e}, "
              f"max rel {max(r[2] for r in m['rows']):.2e}, tolerance used {worst[3]:.3f} "
              f"(worst {worst[0]}; rtol {worst[4]:g}, atol {worst[5]:g}: {worst[6]})")


if __name__ == "__main__":
    main()
