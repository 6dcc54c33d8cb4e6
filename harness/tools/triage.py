"""``harness triage``: re-run a red case under one controlled change at a time and say which flips it.

The rungs (``RUNGS``): training mode forced around the gradient, inference
mode forced, the fused kernel off, ``mx.compile`` toggled, fp32 <-> bf16, the
CPU instead of a GPU, reference log-probs precomputed, micro-batches of one.
A rung flips the case when the changed run passes every check, its golden
included (approximately) where the change must not move the numbers.  Short
of that, it clears the failure when the failing check passes and no check that
passed fails: what the failure hid (a crash stops every later check) may
then show, and is reported as such.
"""

from dataclasses import replace
from pathlib import Path

import mlx.core as mx

from ..judge import golden
from ..judge.checks import conclude
from ..judge.golden import apply_golden
from ..model import Case
from ..run.launch import run_process

RUNGS = ("force-train", "force-eval", "kernel-off", "compile", "dtype", "device", "reference", "batch-1")

DIAGNOSES = {
    "force-train": (
        "The failure disappears when the model is put in training mode before the gradient: the trainer takes "
        "gradients of a model left in inference mode (as mlx_lm.load leaves it). It must call model.train() "
        "before value_and_grad (and again after generation, for GRPO)."
    ),
    "force-eval": "The failure disappears in inference mode: something in the training-mode path (dropout, a "
                  "training-only branch) is at fault.",
    "kernel-off": "The failure disappears without the fused inference kernel: a gradient or a value goes through "
                  "the inference-only kernel.",
    "compile": "The failure depends on mx.compile: the compiled step computes something the eager step does not "
               "(a captured constant, state missing from inputs/outputs, or a compile-only numerical difference).",
    "dtype": "The failure depends on the dtype: a low-precision path overflows or loses precision; check casts "
             "and accumulations in half precision.",
    "device": "The failure depends on the device: a GPU-only kernel or reduction differs from the CPU's.",
    "reference": "The failure depends on how reference log-probs are obtained (precomputed vs recomputed): the "
                 "reference is scored with other weights, mode or batching than it should be.",
    "batch-1": "The failure depends on batching: padding, masking or normalisation across examples is wrong.",
}

_NUMERICS_PRESERVING = {"force-train", "force-eval", "kernel-off", "compile", "device", "reference", "batch-1"}


def rung_case(case: Case, rung: str, trainers_with_reference=("dpo", "kto")):
    """The case with one rung applied, or ``None`` where the rung does not apply."""
    s = case.settings
    if rung in ("force-train", "force-eval"):
        return replace(case, interventions=case.interventions + (rung,))
    if rung == "kernel-off":
        return replace(case, interventions=case.interventions + (rung,)) if case.fixture == "tiny-linear-attn" else None
    if rung == "compile":
        return replace(case, settings=replace(s, compile=not s.compile))
    if rung == "dtype":
        return replace(case, settings=replace(s, dtype="bfloat16" if s.dtype == "float32" else "float32"))
    if rung == "device":
        return replace(case, interventions=case.interventions + ("cpu",)) if mx.default_device() == mx.gpu else None
    if rung == "reference":
        if case.trainer not in trainers_with_reference:
            return None
        extra = dict(s.extra, precompute_reference=not s.extra.get("precompute_reference", False))
        return replace(case, settings=replace(s, extra=extra))
    if rung == "batch-1":
        if s.batch_size == 1:
            return None
        return replace(case, settings=replace(s, batch_size=1, grad_accumulation_steps=s.batch_size * s.grad_accumulation_steps))
    raise KeyError(rung)


def _judge(result, original_golden, rung):
    """Hold a rung's result against the original case's golden where the rung must not move the numbers."""
    if result["status"] == "error" or original_golden is None or rung not in _NUMERICS_PRESERVING:
        return result
    check = golden.compare(original_golden, result, approximate=True)
    result["checks"] = [c for c in result["checks"] if c["name"] != "golden"] + [check]
    return conclude(result)


def _checks(result, status):
    return [c["name"] for c in result["checks"] if c["status"] == status]


def clearance(original, result):
    """How a rung's ``result`` stands to the ``original`` failure: ``None`` when it does not clear it,
    else ``{"remaining": [...], "revealed": [...]}``: the original's other failing checks still failing,
    and the failures of checks the original could not run."""
    if original["failure"] is None or result["status"] == "pass":
        return None
    failing, ran_before = set(_checks(result, "fail")), {c["name"] for c in original["checks"]}
    # The failing check must pass, not merely be absent: a rung's run has no config check, for one.
    if original["failure"]["check"] not in _checks(result, "pass") or failing & set(_checks(original, "pass")):
        return None
    kinds = {c["name"]: c["kind"] for c in result["checks"]}
    return {"remaining": [f"{n} ({kinds[n]})" for n in sorted(failing & set(_checks(original, "fail")))],
            "revealed": [f"{n} ({kinds[n]})" for n in sorted(failing - ran_before)]}


def triage(case: Case, snapshots, workdir, timeout=300, golden_key=None, on_rung=None):
    """Run the case and every applicable rung; return ``(original, rungs)``."""
    original = run_process(case, timeout, workdir)
    original = apply_golden(original, snapshots, golden_key or case.target, update=False)
    path = original.get("golden_path")
    original_golden = golden.read(path) if path and Path(path).exists() else None
    # Held to the golden (its numbers, or its resolved configuration): only a run the golden still applies to
    # can say whether the failure goes.
    drift = original["failure"] is not None and original["failure"]["check"] in ("golden", "config")
    rungs = []
    for rung in RUNGS:
        changed = rung_case(case, rung)
        if changed is None:
            rungs.append({"rung": rung, "status": "n/a", "flips": False, "detail": "does not apply"})
        elif drift and rung not in _NUMERICS_PRESERVING:
            # A golden drift can only be cleared by a run the golden still applies to.
            rungs.append({"rung": rung, "status": "n/a", "flips": False,
                          "detail": "changes the numbers by design: the golden cannot judge it"})
        else:
            result = _judge(run_process(changed, timeout, workdir), original_golden, rung)
            flips = original["status"] != "pass" and result["status"] == "pass"
            detail = result["failure"]["kind"] + ": " + result["failure"]["message"] if result["failure"] else "passes"
            rungs.append({"rung": rung, "status": result["status"], "flips": flips, "detail": detail[:160],
                          "clears": clearance(original, result)})
        if on_rung:
            on_rung(rungs[-1])
    return original, rungs


def diagnosis(original, rungs) -> str:
    if original["status"] == "pass":
        return "The case passes: there is nothing to triage."
    flipped = [r["rung"] for r in rungs if r["flips"]]
    head = f"{original['id']} fails with {original['failure']['kind']}: {original['failure']['message'][:200]}"
    if flipped:
        return "\n".join([head, f"Flipped to passing by: {', '.join(flipped)}."] + [DIAGNOSES[r] for r in flipped])
    # Short of a flip, the rungs that clear the failure, those leaving fewest of its other failures first.
    cleared = sorted((r for r in rungs if r.get("clears")), key=lambda r: len(r["clears"]["remaining"]))
    if not cleared:
        return head + "\nNo single change flips it to passing; the cause is in the trainer's logic itself."
    lines = [head, f"Cleared by: {', '.join(r['rung'] for r in cleared)} (the failure goes; the case still fails "
                   "other checks, listed per change)."]
    for r in cleared:
        notes = [f"still failing: {', '.join(r['clears']['remaining'])}"] if r["clears"]["remaining"] else []
        notes += [f"then visible: {', '.join(r['clears']['revealed'])}"] if r["clears"]["revealed"] else []
        lines.append(f"{r['rung']}: {DIAGNOSES[r['rung']]}" + (f" [{'; '.join(notes)}]" if notes else ""))
    return "\n".join(lines)
