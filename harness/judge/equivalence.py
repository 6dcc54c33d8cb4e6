"""Equivalence classes: configurations that must train identically, held to one golden member.

The one class so far is ``batch B == batch B/k x k accumulation steps == k
ranks x batch B/k``: the first member is the golden, and every other member
must reproduce its trace (loss, grad norm and metrics, per step) and its
final weights within ``golden.equivalence_tolerance``.  The members are not
bit-identical (padding, summation order, the clip), so the tolerance is
measured; the figures are in the README.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ...fixtures import load_fixture
from ..model import DATA_PARALLEL_SETTINGS, Case, case_settings
from ..run.launch import run_process
from ..target import LoadedTarget
from . import checks
from .golden import compared_keys, equivalence_steps, equivalence_tolerance, first_divergence

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

def _rel(diff, ref):
    return diff / abs(ref) if ref else (0.0 if diff == 0 else math.inf)


def trace_differences(golden_steps, steps) -> dict:
    """Largest |difference| and relative difference per compared key over the steps."""
    out = {}
    for want, got in zip(golden_steps, steps):
        for key in compared_keys(golden_steps):
            if not isinstance(got.get(key), (int, float)):
                continue
            diff = abs(got[key] - want[key])
            a, r = out.get(key, (0.0, 0.0))
            out[key] = (max(a, diff), max(r, _rel(diff, want[key])))
    return out


def tolerance_used(golden_steps, steps, tol) -> float:
    """The largest share of the trace tolerance that any compared value takes (1.0: at the limit)."""
    used = 0.0
    for want, got in zip(golden_steps, steps):
        for key in compared_keys(golden_steps):
            if isinstance(got.get(key), (int, float)):
                used = max(used, abs(got[key] - want[key]) / (tol.atol + tol.rtol * abs(want[key])))
    return used


def weight_differences(golden_path, path, initial) -> dict:
    """Largest |difference| of the final weights, the tensor it is in, the golden member's largest
    update (|final - initial|) and their ratio."""
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


def compare_member(trainer, golden: dict, member: dict, tol) -> dict:
    """The ``equivalence`` check of one member's finished result against the golden member's."""
    g_label, label = golden["member"], member["member"]
    held = equivalence_steps(golden["steps"], tol)
    drift = first_divergence(held, member["steps"][:len(held)], tol.rtol, tol.atol, compared_keys(held, tol))
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
            "detail": f"{label!r} matches golden {g_label!r}: {len(held)} steps and final weights "
                      f"(rtol {tol.rtol:g}, atol {tol.atol:g}; weights {tol.weights:g} x the largest update)"}


# ----------------------------------------------------------------------------
# Running a class.
# ----------------------------------------------------------------------------


def member_case(cls_member: Member, trainer, fixture, target: LoadedTarget, steps) -> Case:
    settings = case_settings(trainer, "fp32", steps)
    settings = replace(settings, batch_size=cls_member.batch_size,
                       grad_accumulation_steps=cls_member.grad_accumulation_steps, ranks=cls_member.ranks)
    settings.extra = {**settings.extra, **DATA_PARALLEL_SETTINGS.get(trainer, {})}
    variant = f"b{cls_member.batch_size}a{cls_member.grad_accumulation_steps}r{cls_member.ranks}"
    return Case(target.name, trainer, fixture, variant, settings, target.spec)


def _initial_weights(fixture):
    model, _ = load_fixture(fixture)
    return dict(tree_flatten(model.trainable_parameters()))


def run_class(cls: EquivalenceClass, trainer: str, fixture: str, workdir: Path, target: LoadedTarget, *,
              steps: int = 3, timeout: float = 300, jobs: int = 2, only=()) -> dict:
    """Run every member of ``cls`` (or the golden and the members labelled in ``only``) for ``trainer``
    on ``fixture`` and hold them to the golden member.

    Returns ``{"class", "trainer", "fixture", "target", "members": [...], "checks": [...], "status",
    "failure", "differences"}``: a member that fails its own checks (a crash, diverging ranks, a
    non-finite value) is the class's failure, with that member's kind; otherwise the first member
    that drifts from the golden one fails it with ``equivalence-drift``.
    """
    if only:
        cls = replace(cls, members=(cls.members[0], *(m for m in cls.members[1:] if m.label in only)))
    cases = [member_case(m, trainer, fixture, target, steps) for m in cls.members]
    singles = [i for i, m in enumerate(cls.members) if m.ranks == 1]
    results = [None] * len(cases)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # single-process members side by side
        for i, result in zip(singles, pool.map(lambda i: run_process(cases[i], timeout, workdir, "trace"), singles)):
            results[i] = result
    for i, m in enumerate(cls.members):  # each data-parallel member alone: it takes the cores
        if m.ranks > 1:
            results[i] = run_process(cases[i], timeout, workdir, "trace")

    initial = _initial_weights(fixture)
    tol = equivalence_tolerance(trainer, results[0]["environment"]["backend"] if results[0] else "cpu")
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
                "trace": trace_differences(golden["steps"], member["steps"]),
                "tolerance_used": tolerance_used(golden["steps"], member["steps"], tol),
                "weights": member["weights_diff"],
            }
            out_checks.append(compare_member(trainer, golden, member, tol))
    result = {"class": cls.name, "describe": cls.describe(), "trainer": trainer, "fixture": fixture,
              "target": target.name, "tolerance": vars(tol), "members": members, "checks": out_checks,
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
