"""Measure the A/B speed gate itself: how often it flags a planted 10% slowdown, and identical code.

    PYTHONPATH=tests python tests/bench/measure_gate.py [--trials 60] [--trainer dpo] [--fixture tiny-llama] [--out FILE]

Each trial is one ``harness bench --against`` comparison at the default
settings (``Rounds()``, threshold 10%), its two sides fresh worker processes:
``identical`` runs the reference target on both sides, ``slowed-10%`` the
reference against ``tests/support/planted_targets.py:Slowed`` (every step 10%
more work).  Trials alternate, so both kinds see the same machine load.
"""

import argparse
import json
import os
import sys
import time

from mlxth.harness.model import Case, case_settings
from mlxth.harness.tools.abtest import ab_case
from mlxth.harness.tools.bench import Rounds
from support import PLANTED_TARGETS

KINDS = {"identical": "reference", "slowed-10%": f"{PLANTED_TARGETS}:Slowed"}


def trial(spec, trainer, fixture, threshold):
    case = Case("reference", trainer, fixture, "fp32", case_settings(trainer, "fp32", 3), spec)
    env = dict(os.environ)
    return ab_case(case, Rounds(), env, env, threshold, baseline_spec="reference")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--trainer", default="dpo")
    p.add_argument("--fixture", default="tiny-llama")
    p.add_argument("--threshold", type=float, default=10.0)
    p.add_argument("--out", help="Append every trial's samples here (JSON lines).")
    args = p.parse_args(argv)
    flagged = {k: [] for k in KINDS}
    for i in range(args.trials):
        for label, spec in KINDS.items():
            start = time.perf_counter()
            result = trial(spec, args.trainer, args.fixture, args.threshold)
            v = result["verdict"]
            flagged[label].append(v["status"] == "slower")
            print(f"trial {i + 1:>3} {label:<11} {v['detail']}; {len(result['step_ms'])} rounds, "
                  f"{time.perf_counter() - start:.0f} s -> {v['status']}", flush=True)
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps({"kind": label, "verdict": v, "baseline": result["baseline"]["step_ms"],
                                         "candidate": result["step_ms"], "timer": result["timer"],
                                         "load": os.getloadavg()[0]}) + "\n")
    summary = {k: f"{sum(v)}/{len(v)}" for k, v in flagged.items()}
    print(json.dumps({"trainer": args.trainer, "fixture": args.fixture, "rounds": Rounds().__dict__,
                      "flagged": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
