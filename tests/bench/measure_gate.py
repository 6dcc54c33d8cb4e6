"""Measure the speed gate itself: detection and false-alarm rates.

    python tests/bench/measure_gate.py [--trials 20] [--steps 30] [--trainer dpo] [--fixture tiny-llama]

One baseline bench run of the reference target, then ``trials`` runs of the
identical code and ``trials`` runs of a planted 10% slowdown
(tests/support/planted_targets.py:Slowed), alternating, each compared with the
baseline by ``harness.bench.compare`` at the default 10% threshold.
"""

import argparse
import json
import sys

from mlxth.harness.tools.bench import bench, compare
from mlxth.harness.model import Case, case_settings
from support import PLANTED_TARGETS

PLANTED = str(PLANTED_TARGETS)


def one(spec, trainer, fixture, steps):
    case = Case("reference", trainer, fixture, "fp32", case_settings(trainer, "fp32", steps), spec)
    return bench([case], warmup=2, steps=steps)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--trainer", default="dpo")
    p.add_argument("--fixture", default="tiny-llama")
    p.add_argument("--threshold", type=float, default=10.0)
    args = p.parse_args(argv)
    baseline = one("reference", args.trainer, args.fixture, args.steps)
    flagged = {"identical": [], "slowed-10%": []}
    for i in range(args.trials):
        for label, spec in (("identical", "reference"), ("slowed-10%", f"{PLANTED}:Slowed")):
            verdict = compare(baseline, one(spec, args.trainer, args.fixture, args.steps), args.threshold)[0]
            flagged[label].append(verdict["status"] == "slower")
            print(f"trial {i + 1:>2} {label:<11} {verdict['detail']} -> {verdict['status']}", flush=True)
    summary = {k: f"{sum(v)}/{len(v)}" for k, v in flagged.items()}
    print(json.dumps({"trainer": args.trainer, "fixture": args.fixture, "steps": args.steps, "flagged": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
