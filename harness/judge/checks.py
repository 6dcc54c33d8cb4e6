"""The checks every case gets and the failure kinds they produce (README, "What every case checks").

A case's failure is its first failing check in ``ORDER``.  Data-parallel
cases add ``ranks-agree``; equivalence classes hold each member to the golden
member (``equivalence``).
"""

import math

import mlx.core as mx
from mlx.utils import tree_flatten

ORDER = ("completes", "ranks-agree", "training-mode", "finite", "updates", "analytic", "reproducible", "golden",
         "loss-recompute", "equivalence")

EXPLANATIONS = {
    "vjp-missing": (
        "a gradient went through an inference-only custom kernel, which has no VJP; most likely the "
        "model was not put in training mode (model.train()) before value_and_grad"
    ),
    "train-mode": "a gradient was taken while (part of) the model was in inference mode",
    "non-finite": "a loss, metric or gradient became NaN or infinite",
    "golden-drift": "the trace no longer matches its golden snapshot",
    "not-reproducible": "two runs with the same seed gave different traces",
    "no-update": "training steps did not change the trainable weights",
    "frozen-changed": "weights that must stay frozen (reference model or LoRA base) changed",
    "analytic-mismatch": "a first-step value known in closed form is wrong",
    "loss-mismatch": "the reported loss differs from the standard formula on the same log-probs",
    "crash": "the case's process died",
    "timeout": "the case ran past its time limit",
    "exception": "the target raised an exception",
    "rank-crash": "a data-parallel rank died; mlx.launch stopped the others",
    "rank-divergence": "data-parallel ranks ended with different weights: a rank stepped on its own gradient",
    "equivalence-drift": (
        "configurations that must train identically (batch B, B/k with k accumulation steps, k ranks of B/k) "
        "do not: a normaliser, the accumulation or the gradient averaging is wrong"
    ),
    "import-error": "the implementation under test does not import",
    "contract": "the target broke the target interface (harness/target.py): a method returned what the harness "
                "cannot read",
    "bad-golden": "the golden snapshot cannot be read, or holds nothing to compare",
    "interrupted": "the run was stopped (SIGINT or SIGTERM) while this case ran",
    "not-run": "the run was stopped before this case started",
}


def _check(name, ok, detail, kind=None):
    return {"name": name, "status": "pass" if ok else "fail", "detail": detail, "kind": None if ok else kind}


def skipped(name, detail, reason=None):
    """A check that could not be made; ``reason`` (default ``detail``) is what the run's summary counts."""
    return {"name": name, "status": "skip", "detail": detail, "kind": None, "reason": reason or detail}


def completes(records, error, steps):
    if error is not None:
        at = f"step {error['step']}: " if error.get("step") is not None else ""
        return _check("completes", False, f"{at}{error['message']}", error["kind"])
    return _check("completes", len(records) == steps, f"{len(records)}/{steps} steps", "exception")


def training_mode(probe):
    calls = probe.differentiated
    bad = probe.gradient_mode_violations()
    if not calls:
        return skipped("training-mode", "no differentiated forward pass was observed")
    if bad:
        return _check("training-mode", False,
                      f"{len(bad)} of {len(calls)} differentiated forward passes ran with modules in inference "
                      f"mode (model.training={bad[0].training})", "train-mode")
    return _check("training-mode", True, f"{len(calls)} differentiated passes, all in training mode")


def _non_finite(records):
    for r in records:
        for key, value in r.items():
            if isinstance(value, float) and not math.isfinite(value):
                return r["step"], key, value
    return None


def finite(records):
    bad = _non_finite(records)
    if bad:
        return _check("finite", False, f"step {bad[0]}: {bad[1]} = {bad[2]}", "non-finite")
    return _check("finite", True, f"{sum(len(r) for r in records)} values finite")


def _changed(before, after_tree):
    after = dict(after_tree)
    return [k for k, v in before.items() if k in after and not bool(mx.array_equal(v, after[k]))]


def updates(obs):
    model = obs["model"]
    after = tree_flatten(model.parameters())
    trainable = set(obs["trainable_keys"]) | {k for k, _ in tree_flatten(model.trainable_parameters())}
    # Tensors that appeared during training are judged from the end of step 1 on.
    before = {**obs.get("after_first", {}), **obs["before"]}
    changed = _changed(before, after)
    moved_trainable = [k for k in changed if k in trainable]
    moved_frozen = [k for k in changed if k not in trainable]
    if obs["reference"] is not None:
        moved_frozen += [f"reference:{k}" for k in _changed(obs["reference_before"], tree_flatten(obs["reference"].parameters()))]
    if moved_frozen:
        return _check("updates", False, f"frozen weights changed: {', '.join(moved_frozen[:3])}", "frozen-changed")
    if not moved_trainable:
        return _check("updates", False, f"none of {len(trainable)} trainable tensors changed", "no-update")
    return _check("updates", True, f"{len(moved_trainable)}/{len(trainable)} trainable tensors changed; frozen intact")


def analytic(case, records, hp, tolerances):
    """Closed-form first-step values: the policy equals the reference at step 1."""
    first = records[0]["loss"]
    tol = tolerances["analytic_atol"]
    if case.trainer == "dpo" and hp.get("loss_type") == "sigmoid" and hp.get("label_smoothing") == 0:
        expected, why = math.log(2), "DPO sigmoid loss is ln 2 when policy == reference"
    elif case.trainer == "kto" and hp.get("desirable_weight") == hp.get("undesirable_weight") == 1.0:
        expected, why = 0.5, "KTO loss is 1 - sigmoid(0) = 0.5 when policy == reference"
    elif case.trainer == "grpo" and hp.get("beta") == 0 and hp.get("num_iterations") == 1:
        expected, why = 0.0, "GRPO loss value is 0 with beta = 0 and one step per batch"
    else:
        return skipped("analytic", "no closed-form first-step value for this configuration")
    ok = abs(first - expected) <= tol
    return _check("analytic", ok, f"{why}: step 1 loss {first!r}, expected {expected!r} +- {tol:g}", "analytic-mismatch")


def _same(a, b) -> bool:
    """Equal, counting NaN as equal to NaN: a NaN reproduced is reproduced (``finite`` reports it)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def reproducible(records, rerun, rerun_error):
    if rerun_error is not None:
        return _check("reproducible", False, f"the rerun failed: {rerun_error['message']}", "not-reproducible")
    for a, b in zip(records, rerun):
        for key in a:
            if not _same(a[key], b.get(key)):
                return _check("reproducible", False,
                              f"step {a['step']}: {key} {a[key]!r} then {b.get(key)!r}", "not-reproducible")
    return _check("reproducible", len(records) == len(rerun), "rerun bitwise identical", "not-reproducible")


def loss_recompute(recomputed, records, tolerances):
    if recomputed is None:
        return skipped("loss-recompute", "no independent formula for this trainer/target")
    step, expected = recomputed
    reported = records[step - 1]["loss"]
    rtol, atol = tolerances["recompute_rtol"], tolerances["recompute_atol"]
    ok = abs(reported - expected) <= atol + rtol * abs(expected)
    return _check("loss-recompute", ok,
                  f"step {step}: reported {reported:.7g}, standard formula {expected:.7g} (rtol {rtol:g})",
                  "loss-mismatch")


def conclude(result):
    """Order the checks, set status and failure, and make values JSON-safe."""
    result["checks"].sort(key=lambda c: ORDER.index(c["name"]))
    failed = [c for c in result["checks"] if c["status"] == "fail"]
    error = result.get("error")
    if error is not None:
        result["status"] = "error"
        kind = error["kind"]
        result["failure"] = {"kind": kind, "check": error.get("check", "completes"), "message": error["message"],
                             "explanation": EXPLANATIONS.get(kind, "")}
    elif failed:
        result["status"] = "fail"
        first = failed[0]
        result["failure"] = {"kind": first["kind"], "check": first["name"], "message": first["detail"],
                             "explanation": EXPLANATIONS.get(first["kind"], "")}
    else:
        result["status"] = "pass"
        result["failure"] = None
    for record in result["steps"]:
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = repr(value)
    return result
