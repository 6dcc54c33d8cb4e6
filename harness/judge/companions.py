"""Checks that compare a case's run with other runs or with what its scenario promises.

* ``preflight``: before any step, a reference model that is (or shares
  modules with) the policy, and a policy with nothing trainable;
* ``coverage``: the scenario reached the paths it exists for (GRPO clipping
  bound, completion lengths varied, a positive KL or KTO reference point);
* ``dead-knob``: each documented hyper-parameter, set to a second value,
  changed the trace or the final weights;
* ``equivalence``: a run split into micro-batches matches the same step taken
  in one batch (``golden.equivalence_tolerance``).
"""

import math

import mlx.core as mx

from .checks import _check, skipped
from .golden import compared_keys, equivalence_steps, equivalence_tolerance, first_divergence


def preflight(model, reference) -> list:
    """Problems with what ``prepare`` handed back, as one-line statements."""
    problems = []
    if reference is not None:
        policy_modules = {id(m) for _, m in model.named_modules()}
        shared = [name for name, m in reference.named_modules() if id(m) in policy_modules]
        if shared:
            which = "is the policy itself" if reference is model else f"shares modules with the policy ({shared[0]!r})"
            problems.append(f"the reference model {which}: it would train with the policy")
    if not any(True for _ in _leaves(model.trainable_parameters())):
        problems.append("the policy has nothing trainable (every parameter frozen)")
    return problems


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


def _any_step(records, key, test):
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return None if not values else any(test(v) for v in values)


COVERAGE = {
    "clipped": ("clip_ratio/region_mean", lambda v: v > 0, "clipping bound at some step"),
    "kl-positive": ("kl", lambda v: v > 0, "the KL term was positive"),
    "kl-positive-from-start": ("kl", lambda v: v > 0, "the KL term (KTO's reference point) was positive"),
}


def coverage(expects, records) -> dict:
    if not expects:
        return skipped("coverage", "the case claims no paths beyond the default ones")
    missing = []
    for what in expects:
        if what == "lengths-vary":
            found = _any_step(records, "completions/max_length", lambda v: True)
            varied = any(r.get("completions/min_length") != r.get("completions/max_length") for r in records)
            if found is None:
                missing.append("completion lengths (completions/min_length, /max_length) are not reported")
            elif not varied:
                missing.append("every completion of every step had the same length")
            continue
        key, test, statement = COVERAGE[what]
        reached = _any_step(records, key, test)
        if reached is None:
            missing.append(f"{key} is not reported, so it cannot be shown that {statement}")
        elif what == "kl-positive-from-start" and records and not test(records[0].get(key, 0)):
            missing.append(f"{key} was 0 at step 1 ({statement} from the first step is expected)")
        elif not reached:
            missing.append(f"{key} was 0 at every step: never {statement.split(' ', 1)[1]}")
    if missing:
        return _check("coverage", False, "; ".join(missing), "path-not-reached")
    return _check("coverage", True, f"reached: {', '.join(expects)}")


def _identical_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool(mx.array_equal(a[k], b[k])) for k in a)


def dead_knobs(base_records, base_weights, varied) -> dict:
    """``varied``: (name, value, records, weights, error) per knob run."""
    if not varied:
        return skipped("dead-knob", "the case varies no hyper-parameter")
    dead, refused = [], []
    for name, value, records, weights, error in varied:
        if error is not None:
            refused.append(f"{name}={value!r} ({error['message'][:80]})")
        elif records == base_records and _identical_weights(weights, base_weights):
            dead.append(f"{name}={value!r}")
    if dead:
        return _check("dead-knob", False, f"setting {', '.join(dead)} changed nothing: every step's record and "
                                          "every final weight bitwise identical to the case's own run",
                      "dead-knob")
    detail = f"{len(varied) - len(refused)} hyper-parameter(s) each changed the trace"
    return _check("dead-knob", True, detail + (f"; refused: {', '.join(refused)}" if refused else ""))


def equivalence(trainer, label, golden_label, golden_steps, golden_weights, steps, weights, initial,
                backend="cpu") -> dict:
    """The split run (``steps``, ``weights``) against the one-batch run (``golden_*``)."""
    tol = equivalence_tolerance(trainer, backend)
    held = equivalence_steps(golden_steps, tol)
    drift = first_divergence(held, steps[:len(held)], tol.rtol, tol.atol, compared_keys(held, tol))
    if drift is not None:
        step, key, expected, actual = drift
        return _check("equivalence", False, f"step {step}: {key}: {label} {actual!r} vs {golden_label} {expected!r} "
                                            f"(atol {tol.atol:g} + rtol {tol.rtol:g} x |{golden_label}|)",
                      "equivalence-drift")
    worst, where, update = 0.0, None, 0.0
    for name, value in golden_weights.items():
        diff = mx.abs(value.astype(mx.float32) - weights[name].astype(mx.float32)).max().item()
        if diff >= worst:
            worst, where = diff, name
        start = initial.get(name)
        moved = value.astype(mx.float32) - (0 if start is None else start.astype(mx.float32))
        update = max(update, mx.abs(moved).max().item())
    if not worst <= tol.weights * update or math.isnan(worst):
        return _check("equivalence", False, f"final weights: {label} differs from {golden_label} by {worst:.3g} in "
                                            f"{where} (> {tol.weights:g} x the largest update, {update:.3g})",
                      "equivalence-drift")
    return _check("equivalence", True, f"{label} matches {golden_label}: {len(steps)} steps and final weights "
                                       f"(rtol {tol.rtol:g}, atol {tol.atol:g}; weights {tol.weights:g} x update)")
