"""The speed gates' statistics and verdicts.

A/B (``--against``): baseline and candidate steps alternate in one run, so
machine noise hits both alike; the slowdown is median(candidate) /
median(baseline) - 1 of the step times, with a bootstrap interval that
resamples whole rounds (a baseline step and the candidate step beside it).
Saved baseline (``--compare``): step / lower-bound ratios, the only numbers
an earlier run on another day can be held to.  Either way a case is slower
when its interval lies above 0 and reaches the threshold, and a comparison
that compared nothing is an error, never a pass.
"""

import math

import numpy as np


class GateError(ValueError):
    """A comparison that cannot be made: the caller's input is wrong (a usage error)."""


def bootstrap_slowdown(baseline, current, paired=False, resamples=4000, seed=0, level=0.95):
    """Point estimate and ``level`` interval of median(current) / median(baseline) - 1.

    ``paired``: the samples are rounds (``baseline[i]`` beside ``current[i]``), resampled together.
    """
    rng = np.random.default_rng(seed)
    b, c = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    if paired and len(b) != len(c):
        raise ValueError(f"paired samples differ in number: {len(b)} and {len(c)}")
    bi = rng.integers(0, len(b), size=(resamples, len(b)))
    ci = bi if paired else rng.integers(0, len(c), size=(resamples, len(c)))
    slowdowns = np.median(c[ci], axis=1) / np.median(b[bi], axis=1) - 1
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(slowdowns, [tail, 100 - tail])
    return float(np.median(c) / np.median(b) - 1), float(low), float(high)


def verdict(case_id, baseline, current, threshold_pct, paired=False) -> dict:
    est, low, high = bootstrap_slowdown(baseline, current, paired=paired)
    slower = low > 0 and high * 100 >= threshold_pct
    return {
        "id": case_id, "status": "slower" if slower else "ok",
        "slowdown_pct": 100 * est, "ci_pct": [100 * low, 100 * high],
        "detail": f"{100 * est:+.1f}% (95% CI {100 * low:+.1f}% .. {100 * high:+.1f}%), "
                  f"threshold {threshold_pct:g}%",
    }


def _samples_ok(values) -> bool:
    return (isinstance(values, list) and len(values) > 0
            and all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values))


def check_baseline(data, source: str) -> dict:
    """The baseline's comparable cases by id; ``GateError`` naming ``source`` when it holds none."""
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise GateError(f"{source}: not a harness bench JSON (no 'cases' list)")
    if data.get("kind", "harness-bench") != "harness-bench":
        raise GateError(f"{source}: not a harness bench JSON (kind {data['kind']!r})")
    usable = {}
    for i, case in enumerate(data["cases"]):
        if not isinstance(case, dict) or not isinstance(case.get("id"), str):
            raise GateError(f"{source}: cases[{i}] is not a bench case (no 'id')")
        if "error" in case:
            continue
        if "ratios" not in case:
            raise GateError(f"{source}: cases[{i}] ({case['id']}) has no 'ratios': not a harness bench JSON "
                            f"(a harness run report?)")
        if not _samples_ok(case["ratios"]):
            raise GateError(f"{source}: cases[{i}] ({case['id']}): 'ratios' must be a non-empty list of "
                            f"positive numbers")
        usable[case["id"]] = case
    if not usable:
        raise GateError(f"{source}: no case with timings to compare against")
    return usable


def compare(baseline: dict, current: dict, threshold_pct: float = 10.0, source: str = "baseline") -> list:
    """Verdicts of the current run's cases against a saved baseline's ratios.

    Raises ``GateError`` when the baseline is unusable or shares no case with the current run.
    """
    base = check_baseline(baseline, source)
    verdicts = []
    for case in current["cases"]:
        if "error" in case:
            verdicts.append({"id": case["id"], "status": "error", "detail": case["error"]})
        elif case["id"] not in base:
            verdicts.append({"id": case["id"], "status": "not compared", "detail": f"not in {source}"})
        elif not _samples_ok(case.get("ratios")):
            verdicts.append({"id": case["id"], "status": "error", "detail": "no timed samples in this run"})
        else:
            verdicts.append(verdict(case["id"], base[case["id"]]["ratios"], case["ratios"], threshold_pct))
    compared = [v for v in verdicts if v["status"] in ("ok", "slower")]
    if not compared and not any(v["status"] == "error" for v in verdicts):
        ids = ", ".join(sorted(base)[:4]) + (", ..." if len(base) > 4 else "")
        raise GateError(f"compared nothing: none of this run's {len(verdicts)} case(s) has timings in "
                        f"{source} (it holds {ids})")
    return verdicts


def exit_code(verdicts) -> int:
    return 1 if any(v["status"] in ("slower", "error") for v in verdicts) else 0
