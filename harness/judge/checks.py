"""The checks every case gets and the failure kinds they produce (README, "What every case checks").

A case's failure is its first failing check in ``ORDER``.  Data-parallel
cases add ``ranks-agree``; equivalence classes hold each member to the golden
member (``equivalence``).
"""

import math

import mlx.core as mx
from mlx.utils import tree_flatten

# The most specific first: a case's kind names what is wrong, before any check that only says "different".
# A run that is not reproducible comes before every comparison with another run (equivalence,
# dead knobs, coverage, goldens): those differences would then be noise, not findings.
ORDER = ("completes", "ranks-agree", "training-mode", "finite", "updates", "reproducible", "loss-recompute",
         "metric-recompute", "equivalence", "gradient", "analytic", "dead-knob", "coverage", "config", "golden")

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
    "metric-mismatch": "a reported metric differs from its standard definition on the same log-probs",
    "gradient-mismatch": "the first step's gradient is not the standard loss's (a detached term, a lost path, "
                         "a gradient of rounding noise)",
    "dead-knob": "a documented hyper-parameter changes nothing: the trainer ignores it",
    "path-not-reached": "the case did not reach the path it exists for (clipping, varied lengths, a positive KL)",
    "preflight": "what the target prepared cannot train correctly (a reference that is the policy, nothing "
                 "trainable)",
    "config-drift": "the trainer's resolved configuration differs from the golden's: a default or a mapping changed",
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


def training_mode(probe, stepped=True):
    """``stepped``: a step completed (else a run that stopped before one is not said to lack gradients)."""
    calls = probe.differentiated
    bad = probe.gradient_mode_violations()
    if not calls:
        return skipped("training-mode", "no differentiated forward pass was observed" if stepped
                       else "no step completed")
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


def _is_adapter(name: str) -> bool:
    return "lora_a" in name or "lora_b" in name


def updates(obs, lora: bool = False):
    """Trainable weights moved; frozen ones (the reference; under LoRA every base weight) bitwise equal.

    Under LoRA what may move is decided here, by name (mlx-lm's ``lora_a`` / ``lora_b``), not read from the
    model: a setup that forgets to freeze the base has nothing else to hold it to."""
    model = obs["model"]
    after = tree_flatten(model.parameters())
    if lora:
        trainable = {k for k, _ in after if _is_adapter(k)}
    else:
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
    if case.settings.reference_fixture:
        return skipped("analytic", "the reference differs from the policy at step 1")
    first = records[0]["loss"]
    tol = tolerances["analytic_atol"]
    if case.trainer == "dpo" and hp.get("loss_type") == "sigmoid":
        expected, why = math.log(2), "DPO sigmoid loss (any label smoothing) is ln 2 when policy == reference"
    elif case.trainer == "dpo" and hp.get("loss_type") == "hinge":
        expected, why = 1.0, "DPO hinge loss is relu(1 - 0) = 1 when policy == reference"
    elif case.trainer == "dpo" and hp.get("loss_type") == "ipo":
        expected, why = 1 / (4 * hp["beta"] ** 2), "IPO loss is (0 - 1/(2 beta))^2 when policy == reference"
    elif case.trainer == "kto" and "desirable_weight" in hp and hp["desirable_weight"] == hp["undesirable_weight"]:
        expected = 0.5 * hp["desirable_weight"]
        why = "KTO loss is w (1 - sigmoid(0)) = w/2 when policy == reference (z = 0)"
    elif (case.trainer == "grpo" and hp.get("beta") == 0 and hp.get("num_iterations") == 1
          and hp.get("loss_type", "grpo") == "grpo"):  # the token-weighted types are 0 only at equal lengths
        expected, why = 0.0, "GRPO loss value is 0 with beta = 0, one step per batch and per-sequence means"
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


def recompute(recomputed, skip_reason, records, tolerances):
    """The reported loss and metrics of every step against the standard definitions on the same inputs."""
    if not recomputed:
        why = skip_reason or "no independent formula for this trainer/target"
        return [skipped("loss-recompute", why), skipped("metric-recompute", why)]
    rtol, atol = tolerances["recompute_rtol"], tolerances["recompute_atol"]
    metric_atol = tolerances.get("metric_atol", atol)
    by_step = {r["step"]: r for r in records}

    def off(reported, expected, floor=atol):
        return not (isinstance(reported, (int, float)) and abs(reported - expected) <= floor + rtol * abs(expected))

    loss_bad = metric_bad = None
    compared, worst = set(), 0.0
    for item in recomputed:
        record = by_step.get(item["step"], {})
        if loss_bad is None and off(record.get("loss"), item["loss"]):
            loss_bad = (item["step"], record.get("loss"), item["loss"])
        elif isinstance(record.get("loss"), (int, float)):
            worst = max(worst, abs(record["loss"] - item["loss"]) / (atol + rtol * abs(item["loss"])))
        metrics = dict(item["metrics"])
        if ("rewards/accuracies" not in metrics and record.get("rewards/chosen") == 0.0
                and record.get("rewards/rejected") == 0.0):
            # Every reported reward exactly 0 (the policy is its reference, same path): every pair is an
            # exact tie, and "chosen > rejected" holds for none; near ties are left out (recompute.TIE).
            metrics["rewards/accuracies"] = 0.0
        for key, expected in metrics.items():
            if key in record:
                compared.add(key)
                if metric_bad is None and off(record[key], expected, metric_atol):
                    metric_bad = (item["step"], key, record[key], expected)
    steps = f"steps {recomputed[0]['step']}-{recomputed[-1]['step']}"
    if loss_bad:
        step, reported, expected = loss_bad
        loss = _check("loss-recompute", False, f"step {step}: reported loss {reported!r}, standard formula "
                                               f"{expected:.7g} (rtol {rtol:g}, atol {atol:g})", "loss-mismatch")
    else:
        loss = _check("loss-recompute", True, f"{steps}: the reported loss is the standard formula's "
                                              f"(largest difference {worst:.2g} of the tolerance)")
    if metric_bad:
        step, key, reported, expected = metric_bad
        metric = _check("metric-recompute", False, f"step {step}: {key} reported {reported!r}, standard "
                                                   f"definition {expected:.7g} (rtol {rtol:g}, atol {metric_atol:g})",
                        "metric-mismatch")
    elif compared:
        metric = _check("metric-recompute", True, f"{steps}: {', '.join(sorted(compared))} as defined")
    else:
        metric = skipped("metric-recompute", "the target reports none of the standard metrics")
    return [loss, metric]


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
