"""Equivalence classes: configurations that must train identically, held to one golden member.

A class is a set of ways to take the same optimizer steps on the same rows.
(Just over 400 lines because the measurements behind the tolerances are kept
in this docstring, beside the tolerances they justify.)
The first member is the golden; every other member must reproduce its trace
(loss, grad norm and the split-invariant metrics, per step) and its final
weights within the trainer's stated tolerance.  The one class so far:

    batch B  ==  batch B/k x k accumulation steps  ==  k ranks x batch B/k

(``split_class``; data parallelism through ``mlx.launch``, see
``distributed.py``; the reference core's scheme is ``trainers.parallel.DataParallel``).

Why the members are not bit-identical, and so why a tolerance: batch B pads
and multiplies one batch where the others handle two, so log-probs differ in
the last bits.  2 ranks take the very gradient of 2-step accumulation (the
core's power-of-two scaling is exact; checked bitwise), but the all-reduced
gradient is row-major where an accumulated one may keep a transposed layout,
so the grad norm is summed in another order (an ulp), which the clip passes
on to the weights; KTO's reference point is a sum over ranks instead of a
mean over one padded batch.

Measured on the 2-core CPU (mlx 0.32.4, 3 steps, lr 1e-4), the largest
difference from the golden member "batch 4" over both other members:

    tiny-llama  loss abs  loss rel  grad_norm rel  metric abs  used   weights abs  weights/update
    dpo         1.8e-07   2.6e-07   3.7e-07        3.8e-06     0.073  1.4e-07      1.1e-04
    orpo        4.8e-07   9.0e-08   1.3e-07        4.8e-07     0.092  2.8e-07      2.3e-04
    kto         3.0e-08   6.0e-08   2.2e-07        0           0.008  7.5e-08      6.0e-05
    simpo       2.4e-07   1.7e-07   1.6e-07        9.5e-07     0.047  3.4e-07      2.8e-04
    grpo        7.5e-09   (loss~0)  1.2e-07        0           0.005  3.0e-08      2.4e-05

"used" is the largest share of the trace tolerance any compared value took
(1 = at the limit); "weights/update" the largest weight difference over the
largest weight change of training (1.2e-3 here).  On tiny-qwen35 and
tiny-linear-attn (not run in CI) the worst were: used 0.12 (qwen35 DPO
rewards/rejected), grad_norm rel 2.5e-6, weights/update 2.2e-3 (qwen35 GRPO).
The accumulation member and the 2-rank member have the same losses; their
grad norms differ in the last bits (and the weights by what the clip makes
of that).

The tolerances (``TOLERANCES``) leave a margin of 8x on the trace and 4.5x
on the weights over the worst of these on any fixture (13x and 36x on
tiny-llama), and are far below what the faults this class exists for move:
a summed all-reduce doubles the grad norm, a skipped shard or a doubly
divided accumulation halves the loss.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from . import checks
from .cases import DATA_PARALLEL_SETTINGS, Case, case_settings

# ----------------------------------------------------------------------------
# The classes.
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    label: str
    batch_size: int
    grad_accumulation_steps: int = 1
    ranks: int = 1


@dataclass(frozen=True)
class EquivalenceClass:
    name: str
    members: tuple  # the first is the golden member

    def describe(self) -> str:
        return " == ".join(m.label for m in self.members)


def split_class(batch: int = 4, k: int = 2) -> EquivalenceClass:
    """batch B == batch B/k with k accumulation steps == k ranks of batch B/k each."""
    if batch % k:
        raise ValueError(f"batch {batch} cannot be split {k} ways")
    b = batch // k
    return EquivalenceClass(f"split-{batch}-{k}", (
        Member(f"batch {batch}", batch),
        Member(f"batch {b} x accumulation {k}", b, grad_accumulation_steps=k),
        Member(f"{k} ranks x batch {b}", b, ranks=k),
    ))


CLASSES = {c.name: c for c in (split_class(4, 2),)}

# Settings every member of a trainer's class shares, beyond the default case's:
# what data parallelism needs (GRPO's per-prompt rollout keys), for all members alike.
CLASS_SETTINGS = DATA_PARALLEL_SETTINGS


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # per-step loss, grad norm and metrics: |x - golden| <= atol + rtol * |golden|
    atol: float
    weights: float  # final trainable weights: max |w - w_golden| <= weights x the golden's largest update


# Stated per trainer, beside the measurements above.  atol is set by the
# smallest metrics (DPO's rewards ~1e-2 carry the absolute error of log-probs
# of magnitude ~30, times beta) and carries GRPO's loss, which is ~0 at every
# step (beta 0, one iteration per batch): its signal is the grad norm.
TOLERANCES = {
    "dpo": Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2),
    "orpo": Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2),
    "kto": Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2),
    "simpo": Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2),
    "grpo": Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2),
}
DEFAULT_TOLERANCE = Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2)

# Metrics whose value may depend on the split by design, left out of the
# comparison.  None for the reference trainers: KTO's per-kind means and
# ORPO's token-weighted NLL metric are combined as exact step-level shares
# (``trainers.core.step_share``).
MICRO_BATCH_STATISTICS = {}
# Values that are not numerics of the trainer.
NOT_COMPARED = ("step", "learning_rate")


def tolerance_for(trainer: str) -> Tolerance:
    return TOLERANCES.get(trainer, DEFAULT_TOLERANCE)


def compared_keys(trainer: str, steps) -> list:
    skip = set(NOT_COMPARED) | set(MICRO_BATCH_STATISTICS.get(trainer, ()))
    keys = [k for k, v in steps[0].items() if k not in skip and isinstance(v, (int, float))] if steps else []
    return keys


# ----------------------------------------------------------------------------
# Comparing members.
# ----------------------------------------------------------------------------


def _rel(diff, ref):
    return diff / abs(ref) if ref else (0.0 if diff == 0 else math.inf)


def trace_differences(trainer, golden_steps, steps) -> dict:
    """Largest |difference| and relative difference per compared key over the steps."""
    out = {}
    for want, got in zip(golden_steps, steps):
        for key in compared_keys(trainer, golden_steps):
            if not isinstance(got.get(key), (int, float)):
                continue
            diff = abs(got[key] - want[key])
            a, r = out.get(key, (0.0, 0.0))
            out[key] = (max(a, diff), max(r, _rel(diff, want[key])))
    return out


def tolerance_used(trainer, golden_steps, steps, tol: Tolerance) -> float:
    """The largest share of the trace tolerance that any compared value takes (1.0: at the limit)."""
    used = 0.0
    for want, got in zip(golden_steps, steps):
        for key in compared_keys(trainer, golden_steps):
            if isinstance(got.get(key), (int, float)):
                used = max(used, abs(got[key] - want[key]) / (tol.atol + tol.rtol * abs(want[key])))
    return used


def first_drift(trainer, golden_steps, steps, tol: Tolerance):
    """The first (step, key, golden, value) beyond tolerance, or None."""
    if len(steps) != len(golden_steps):
        return (min(len(steps), len(golden_steps)) + 1, "steps", len(golden_steps), len(steps))
    for want, got in zip(golden_steps, steps):
        for key in compared_keys(trainer, golden_steps):
            expected, actual = want[key], got.get(key)
            within = isinstance(actual, (int, float)) and abs(actual - expected) <= tol.atol + tol.rtol * abs(expected)
            if not within:
                return (want["step"], key, expected, actual)
    return None


def weight_differences(golden_path, path, initial) -> dict:
    """Largest |difference| of the final weights, the tensor it is in, the golden member's largest
    update (|final - initial|) and their ratio."""
    import mlx.core as mx

    a, b = mx.load(str(golden_path)), mx.load(str(path))
    worst, where, update = 0.0, None, 0.0
    for name, value in a.items():
        if name not in b or b[name].shape != value.shape:
            return {"max_abs": math.inf, "tensor": name, "largest_update": 0.0, "relative_to_update": math.inf}
        diff = mx.abs(value.astype(mx.float32) - b[name].astype(mx.float32)).max().item()
        if diff > worst or where is None:
            worst, where = diff, name
        start = initial.get(name)
        # LoRA adapters are not in the fixture: their update is from zero (B) or their init (A, unknown: 0).
        moved = mx.abs(value.astype(mx.float32) - (0 if start is None else start.astype(mx.float32))).max().item()
        update = max(update, moved)
    ratio = worst / update if update else (0.0 if worst == 0 else math.inf)
    return {"max_abs": worst, "tensor": where, "largest_update": update, "relative_to_update": ratio}


def compare_member(trainer, golden: dict, member: dict, tol: Tolerance) -> dict:
    """The ``equivalence`` check of one member's finished result against the golden member's."""
    g_label, label = golden["member"], member["member"]
    drift = first_drift(trainer, golden["steps"], member["steps"], tol)
    if drift is not None:
        step, key, expected, actual = drift
        gap = abs(actual - expected) if isinstance(actual, (int, float)) else math.nan
        return {"name": "equivalence", "status": "fail", "kind": "equivalence-drift",
                "detail": f"step {step}: {key}: {label!r} {actual!r} vs golden {g_label!r} {expected!r} "
                          f"(|diff| {gap:.3g} > atol {tol.atol:g} + rtol {tol.rtol:g} x |golden|)"}
    w = member.get("weights_diff")
    if w is not None and not w["max_abs"] <= tol.weights * w["largest_update"]:
        return {"name": "equivalence", "status": "fail", "kind": "equivalence-drift",
                "detail": f"final weights: {label!r} differs from golden {g_label!r} by {w['max_abs']:.3g} in "
                          f"{w['tensor']} (> {tol.weights:g} x the largest update, {w['largest_update']:.3g})"}
    return {"name": "equivalence", "status": "pass", "kind": None,
            "detail": f"{label!r} matches golden {g_label!r}: {len(golden['steps'])} steps and final weights "
                      f"(rtol {tol.rtol:g}, atol {tol.atol:g}; weights {tol.weights:g} x the largest update)"}


# Settings that a data-parallel run may change against a single-process golden.
SPLIT_SETTINGS = ("batch_size", "grad_accumulation_steps", "ranks", "steps")


def golden_check(golden_trace: dict, result: dict) -> dict:
    """The golden check of a data-parallel case (``harness run --ranks K``): the run is an
    equivalence-class member of the single-process golden, held to the trainer's tolerance."""
    mine, theirs = result["case"]["settings"], golden_trace.get("settings", {})
    trainer = result["case"]["trainer"]
    label = f"{mine['ranks']} ranks x batch {mine['batch_size']}"
    step_rows = mine["batch_size"] * mine["grad_accumulation_steps"] * mine["ranks"]
    golden_rows = theirs.get("batch_size", 0) * theirs.get("grad_accumulation_steps", 1) * theirs.get("ranks", 1)
    changed = sorted(k for k in set(mine) | set(theirs)
                     if k not in SPLIT_SETTINGS and k != "extra" and mine.get(k) != theirs.get(k))
    changed += sorted(f"extra.{k}" for k in set(mine["extra"]) | set(theirs.get("extra", {}))
                      if mine["extra"].get(k) != theirs.get("extra", {}).get(k))
    if changed or step_rows != golden_rows:
        why = f"settings {', '.join(changed)} differ" if changed else f"a step of {step_rows} rows, not {golden_rows}"
        return checks.skipped("golden", f"no single-process golden applies to {label}: {why} (the equivalence "
                                        "class checks this trainer's data parallelism)")
    tol = tolerance_for(trainer)
    drift = first_drift(trainer, golden_trace["steps"], result["steps"], tol)
    golden_label = f"batch {theirs['batch_size']}" + (f" x accumulation {theirs['grad_accumulation_steps']}"
                                                      if theirs.get("grad_accumulation_steps", 1) > 1 else "")
    if drift is None:
        return {"name": "golden", "status": "pass", "kind": None,
                "detail": f"{len(golden_trace['steps'])} steps of {label} match the golden {golden_label!r} "
                          f"(equivalence tolerance rtol {tol.rtol:g}, atol {tol.atol:g})"}
    step, key, expected, actual = drift
    return {"name": "golden", "status": "fail", "kind": "equivalence-drift",
            "detail": f"step {step}: {key}: {label!r} {actual!r} vs golden {golden_label!r} {expected!r} "
                      f"(atol {tol.atol:g} + rtol {tol.rtol:g} x |golden|)"}


# ----------------------------------------------------------------------------
# Running a class.
# ----------------------------------------------------------------------------


def member_case(cls_member: Member, trainer, fixture, target_name, target_spec, steps) -> Case:
    settings = case_settings(trainer, "fp32", steps)
    settings = replace(settings, batch_size=cls_member.batch_size,
                       grad_accumulation_steps=cls_member.grad_accumulation_steps, ranks=cls_member.ranks)
    settings.extra = {**settings.extra, **CLASS_SETTINGS.get(trainer, {})}
    variant = f"b{cls_member.batch_size}a{cls_member.grad_accumulation_steps}r{cls_member.ranks}"
    return Case(target_name, trainer, fixture, variant, settings, target_spec)


def _initial_weights(fixture):
    from mlx.utils import tree_flatten

    from mlxth.fixtures import load_fixture

    model, _ = load_fixture(fixture)
    return dict(tree_flatten(model.trainable_parameters()))


def run_class(cls: EquivalenceClass, trainer: str, fixture: str, workdir: Path, *, target: str = "reference",
              steps: int = 3, timeout: float = 300, jobs: int = 2, only=()) -> dict:
    """Run every member of ``cls`` (or the golden and the members labelled in ``only``) for ``trainer``
    on ``fixture`` and hold them to the golden member.

    Returns ``{"class", "trainer", "fixture", "target", "members": [...], "checks": [...], "status",
    "failure", "differences"}``: a member that fails its own checks (a crash, diverging ranks, a
    non-finite value) is the class's failure, with that member's kind; otherwise the first member
    that drifts from the golden one fails it with ``equivalence-drift``.
    """
    from .distributed import run_ranks
    from .target import load_target

    target_obj = load_target(target)
    if only:
        cls = replace(cls, members=(cls.members[0], *(m for m in cls.members[1:] if m.label in only)))
    cases = [member_case(m, trainer, fixture, target_obj.name, target, steps) for m in cls.members]
    singles = [i for i, m in enumerate(cls.members) if m.ranks == 1]
    results = [None] * len(cases)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # single-process members side by side
        for i, result in zip(singles, pool.map(lambda i: run_ranks(cases[i], timeout, workdir, "trace"), singles)):
            results[i] = result
    for i, m in enumerate(cls.members):  # each data-parallel member alone: it takes the cores
        if m.ranks > 1:
            results[i] = run_ranks(cases[i], timeout, workdir, "trace")

    initial = _initial_weights(fixture)
    tol = tolerance_for(trainer)
    members, out_checks, differences = [], [], {}
    for m, case, result in zip(cls.members, cases, results):
        weights = Path(workdir) / f"{case.id.replace('/', '__')}.trace" / "weights.safetensors"
        members.append({"member": m.label, "id": case.id, "settings": case.settings.to_dict(),
                        "status": result["status"], "failure": result["failure"], "steps": result["steps"],
                        "ranks": result.get("ranks"), "weights": str(weights) if weights.exists() else None,
                        "duration_s": result["duration_s"]})
    golden = members[0]
    for member in members:  # a member's own failure comes first: it is the more specific diagnosis
        if member["failure"] is not None:
            f = member["failure"]
            out_checks.append({"name": "completes", "status": "fail", "kind": f["kind"],
                               "detail": f"{member['member']!r}: {f['check']}: {f['message']}"})
            break
    else:
        for member in members[1:]:
            member["weights_diff"] = (weight_differences(golden["weights"], member["weights"], initial)
                                      if golden["weights"] and member["weights"] else None)
            differences[member["member"]] = {
                "trace": trace_differences(trainer, golden["steps"], member["steps"]),
                "tolerance_used": tolerance_used(trainer, golden["steps"], member["steps"], tol),
                "weights": member["weights_diff"],
            }
            out_checks.append(compare_member(trainer, golden, member, tol))
    result = {"class": cls.name, "describe": cls.describe(), "trainer": trainer, "fixture": fixture,
              "target": target_obj.name, "tolerance": vars(tol), "members": members, "checks": out_checks,
              "differences": differences}
    failed = [c for c in out_checks if c["status"] == "fail"]
    result["status"] = "pass" if not failed else "fail"
    result["failure"] = ({"kind": failed[0]["kind"], "check": failed[0]["name"], "message": failed[0]["detail"],
                          "explanation": checks.EXPLANATIONS.get(failed[0]["kind"], "")} if failed else None)
    return result


def summarize(results) -> list:
    """Rows of the measured differences: per class result, the largest over its non-golden members."""
    rows = []
    for r in results:
        worst = {"loss_abs": 0.0, "loss_rel": 0.0, "grad_norm_rel": 0.0, "metric_abs": 0.0, "tolerance_used": 0.0,
                 "weights_abs": 0.0, "weights_rel_update": 0.0}
        for d in r["differences"].values():
            t = d["trace"]
            worst["loss_abs"] = max(worst["loss_abs"], t.get("loss", (0, 0))[0])
            worst["loss_rel"] = max(worst["loss_rel"], t.get("loss", (0, 0))[1])
            worst["grad_norm_rel"] = max(worst["grad_norm_rel"], t.get("grad_norm", (0, 0))[1])
            worst["tolerance_used"] = max(worst["tolerance_used"], d["tolerance_used"])
            for k, (diff, _) in t.items():
                if k not in ("loss", "grad_norm", "num_tokens"):
                    worst["metric_abs"] = max(worst["metric_abs"], diff)
            if d["weights"]:
                worst["weights_abs"] = max(worst["weights_abs"], d["weights"]["max_abs"])
                worst["weights_rel_update"] = max(worst["weights_rel_update"], d["weights"]["relative_to_update"])
        rows.append({"trainer": r["trainer"], "fixture": r["fixture"], "status": r["status"], **worst})
    return rows


def main(argv=None) -> int:
    """``python -m mlxth.harness.equivalence [TRAINER ...]``: run the classes on tiny-llama, print the table."""
    import argparse
    import json
    import tempfile

    from tabulate import tabulate

    from .cases import TRAINERS

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("trainers", nargs="*", default=list(TRAINERS))
    parser.add_argument("--fixture", default="tiny-llama")
    parser.add_argument("--class", dest="cls", default=next(iter(CLASSES)), choices=list(CLASSES))
    parser.add_argument("--target", default="reference")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="write every class result here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="mlxth-eq-") as tmp:
        for trainer in args.trainers:
            r = run_class(CLASSES[args.cls], trainer, args.fixture, Path(tmp), target=args.target, steps=args.steps)
            results.append(r)
            print(f"{trainer}: {r['status']}" + (f" ({r['failure']['kind']}: {r['failure']['message']})"
                                                 if r["failure"] else ""), flush=True)
    rows = summarize(results)
    print(tabulate([[r["trainer"], r["status"], *(f"{r[k]:.2g}" for k in list(r)[3:])] for r in rows],
                   headers=["trainer", "status", "loss abs", "loss rel", "grad_norm rel", "metric abs",
                            "tolerance used", "weights abs", "weights/update"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0 if all(r["status"] == "pass" for r in results) else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
