"""Golden traces: where they live, how they are read and written, and the one tolerance policy.

One golden per case, at ``<snapshots>/<backend>/<target>/<trainer>/<fixture>--<variant>.json``,
holding the per-step records and the environment they were taken in.  The
snapshot folder always comes from the caller.  Every numeric comparison of a
trace with a golden (a rerun, a data-parallel member, a triage rung) goes
through ``tolerance`` / ``equivalence_tolerance`` and ``first_divergence``
here; the measurements behind each tier are in the README.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import checks
from .files import unwritable, write_atomic  # noqa: F401 - where callers have always found them

# Settings a data-parallel run may change against its single-process golden.
SPLIT_SETTINGS = ("batch_size", "grad_accumulation_steps", "ranks", "steps")
# Values that are not numerics of the trainer.
NOT_COMPARED = ("step", "learning_rate")
# Not held where a trace is only approximately reproducible (bf16 on a GPU, data-parallel members on a
# GPU): a step function of values that may differ within the tolerance (5 H200 runs of DPO bf16: 0.25
# against the golden's 0.5).
UNSTABLE_APPROXIMATE = ("rewards/accuracies",)


NO_GOLDEN = "no golden recorded: run with --update-snapshots"


def golden_path(root, backend, target, trainer, fixture, variant, scenario="") -> Path:
    name = f"{fixture}--{variant}" + (f"--{scenario}" if scenario else "")
    return Path(root) / backend / target / trainer / f"{name}.json"


def tolerance(golden_env: dict, env: dict, dtype: str, approximate: bool = False):
    """``(rtol, atol, reason)`` for comparing a trace taken in ``env`` with a golden.

    ``approximate``: the trace comes from another configuration that must agree
    (a triage rung, an equivalence-class member), so never demand bit equality."""
    if dtype != "float32" and env["backend"] != "cpu":
        # H200, 5 runs of each trainer's tiny-llama bf16 case against its golden: grad_norm up to 2.6e-2
        # relative apart, loss 4.2e-3, reward metrics 1.4e-3 and log_odds_chosen 3.1e-3 absolute (the
        # GPU's bf16 reductions are not bitwise reproducible between processes); twice that.
        return 5e-2, 5e-3, f"{dtype} on {env['backend']}: approximate, not reproducible between processes"
    if dtype != "float32":
        return 2e-2, 1e-3, f"{dtype}: approximate"
    if tf32_mismatch(golden_env, env):
        # H200, the 35 fp32 cases with TF32 off against goldens taken with it on: reward metrics up to
        # 2.2e-3 apart (DPO tiny-warm's margins at step 2); twice that.  Sampled traces: see ``incomparable``.
        return 2e-2, 5e-3, (f"fp32 on {env['backend']}, TF32 {'on' if tf32(env) else 'off'} but the golden's "
                            f"{'on' if tf32(golden_env) else 'off'}: TF32 rounds matmul inputs to 10 mantissa bits")
    if env["backend"] != "cpu":  # atol: rewards/* are beta x differences of log-probs (H200: up to 7e-5 apart)
        return 1e-3, 3e-4, f"fp32 on {env['backend']}: GPU reductions are not bitwise reproducible"
    drift = version_drift(golden_env, env)
    if drift:
        return 1e-5, 1e-7, "fp32 on cpu with other library versions (" + "; ".join(drift) + ")"
    if approximate:
        return 1e-5, 1e-7, "fp32 on cpu, another configuration of the same case"
    return 0.0, 0.0, "exact: fp32 on cpu, same library versions"


def unheld_keys(env: dict, dtype: str, golden_env=None) -> tuple:
    """Keys a golden comparison does not hold in ``env``: on the bf16-on-a-GPU tier and the TF32 tier,
    ``UNSTABLE_APPROXIMATE`` (a count of margins the size of that tier's spread)."""
    if env["backend"] != "cpu" and (dtype != "float32" or tf32_mismatch(golden_env or env, env)):
        return UNSTABLE_APPROXIMATE
    return ()


# Trainers whose trace depends on tokens they sample: a change in the arithmetic that moves a logit by
# more than rounding noise can change a drawn token, and every number after it.
SAMPLING_TRAINERS = ("grpo",)


def incomparable(golden_env: dict, env: dict, trainer: str):
    """Why no tolerance can hold a trace to this golden (None when one can)."""
    if trainer in SAMPLING_TRAINERS and tf32_mismatch(golden_env, env):
        # H200, GRPO on tiny-qwen35 with TF32 off against its TF32-on golden: grad_norm 3.71 against
        # 9.92 at step 1 (other completions were drawn).
        return (f"golden taken with TF32 {'on' if tf32(golden_env) else 'off'}, this run has it "
                f"{'on' if tf32(env) else 'off'}: {trainer} samples its completions, and TF32's rounding changes "
                "which tokens are drawn; record goldens under this setting (--update-snapshots) to hold them")
    return None


def tf32_mismatch(golden_env: dict, env: dict) -> bool:
    return env.get("backend", "cpu") != "cpu" and tf32(golden_env) != tf32(env)


def tf32(env: dict) -> bool:
    """Whether fp32 matmuls may run as TF32: on a GPU (CUDA, M5-class Metal), MLX's default
    unless ``MLX_ENABLE_TF32=0``."""
    return env.get("backend", "cpu") != "cpu" and str(env.get("MLX_ENABLE_TF32", "1")).strip() != "0"


def check_tolerances(env: dict, dtype: str) -> dict:
    """Tolerances of the analytic and loss-recompute checks for a backend and dtype."""
    if dtype != "float32":
        return {"analytic_atol": 2e-2, "recompute_rtol": 1e-3, "recompute_atol": 1e-4, "gradient_rtol": 5e-2}
    if env["backend"] != "cpu":  # rewards/* are beta x differences of log-probs of ~30: TF32 leaves ~1e-3 there
        return {"analytic_atol": 2e-4, "recompute_rtol": 3e-3, "recompute_atol": 1e-4, "gradient_rtol": 1e-2,
                "metric_atol": 5e-3}
    return {"analytic_atol": 1e-6, "recompute_rtol": 1e-4, "recompute_atol": 1e-5, "gradient_rtol": 1e-4}


def version_drift(golden_env: dict, env: dict):
    return [f"{k} {golden_env.get(k)} -> {env.get(k)}" for k in ("mlx", "mlx-lm", "device") if golden_env.get(k) != env.get(k)]


def dumps(trace: dict) -> str:
    return json.dumps(trace, indent=1, sort_keys=True) + "\n"


def trace_of(result: dict) -> dict:
    """The part of a case result that a golden holds."""
    trace = {"case": result["id"], "environment": result["environment"],
             "settings": result["case"]["settings"], "steps": result["steps"]}
    if result.get("config") is not None:
        trace["config"] = result["config"]
    return trace


def config_check(golden: dict, result: dict) -> dict:
    """The trainer's resolved configuration against the golden's, field by field, before any number."""
    want, got = golden.get("config"), result.get("config")
    if want is None or got is None:
        whose = "the golden records" if want is None else "the target reports"
        return checks.skipped("config", f"{whose} no resolved trainer configuration")
    changed = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if changed:
        shown = "; ".join(f"{k}: golden {want.get(k)!r}, now {got.get(k)!r}" for k in changed[:3])
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        return {"name": "config", "status": "fail", "kind": "config-drift", "detail": shown + more}
    return {"name": "config", "status": "pass", "kind": None, "detail": f"{len(want)} fields as in the golden"}


def describe_change(old: dict, new: dict) -> str:
    """What an update changes in a golden: the first config field, else the first step and key that differ."""
    check = config_check(old, new)
    if check["status"] == "fail":
        return f"config {check['detail']}"
    diff = first_divergence(old.get("steps", []), new["steps"], 0.0, 0.0)
    if diff is not None:
        step, key, before, after = diff
        return f"step {step}: {key} {before!r} -> {after!r}"
    return "environment only: " + ("; ".join(version_drift(old.get("environment", {}), new["environment"]))
                                   or "same numbers")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class GoldenError(ValueError):
    """A golden that cannot be read or holds nothing to compare; the message names the file."""


def read(path: Path) -> dict:
    """The golden at ``path``, checked to hold an environment and step records with values to compare."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise GoldenError(f"golden {path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise GoldenError(f"golden {path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("environment"), dict) \
            or not isinstance(data.get("steps"), list):
        raise GoldenError(f"golden {path}: not a golden trace (expected an object with 'environment' and 'steps')")
    if not data["steps"]:
        raise GoldenError(f"golden {path}: holds no steps")
    for i, record in enumerate(data["steps"], 1):
        if not isinstance(record, dict):
            raise GoldenError(f"golden {path}: step record {i} is {type(record).__name__}, not an object")
        if not any(_number(v) for k, v in record.items() if k not in NOT_COMPARED):
            raise GoldenError(f"golden {path}: step record {i} holds no number to compare "
                              f"(keys: {', '.join(record) or 'none'})")
    return data


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # per-step loss, grad norm and metrics: |x - golden| <= atol + rtol * |golden|
    atol: float
    weights: float  # final trainable weights: max |w - w_golden| <= weights x the golden's largest update
    steps: int = 0  # the first ``steps`` steps are held (0: every step)
    unstable: tuple = ()  # keys not held: a step function of values that differ within the tolerance


# Configurations that must train identically (batch B == B/k x k accumulation
# == k ranks of B/k) are held to this, for every trainer; the measurements
# and the margin are in the README.
EQUIVALENCE = Tolerance(rtol=2e-5, atol=5e-6, weights=1e-2)
# On a GPU (H200, TF32 on): a split step's loss differs by up to 1.3e-4 relative, a reward metric by
# 2.7e-4, and GRPO's final weights by 0.6 of the largest update (a sampled token can change with the
# last bits of a logit).
# Over 2 ranks under NCCL (2 x H200) step 1's grad_norm differs from batch 4's by up to 2.1e-4 relative;
# from step 2 on, AdamW's per-weight normalisation turns rounding-level differences of near-zero
# gradient components into full-size updates, and the traces part (grad_norm 1% apart at step 3 on
# tiny-qwen35): step 1 is held.  rewards/accuracies counts margins of the size of that rounding
# where the policy equals the reference (tiny-linear-attn: 0.75 against 1.0), so it is not held.
EQUIVALENCE_GPU = Tolerance(rtol=1e-3, atol=1e-3, weights=1.5, steps=1, unstable=UNSTABLE_APPROXIMATE)


def equivalence_tolerance(trainer: str, backend: str = "cpu") -> Tolerance:
    return EQUIVALENCE if backend == "cpu" else EQUIVALENCE_GPU


def compared_keys(steps, tol=None) -> list:
    """The numeric keys of a trace that an equivalence comparison (under ``tol``) holds."""
    skip = NOT_COMPARED + (tol.unstable if tol is not None else ())
    return [k for k, v in steps[0].items() if k not in skip and isinstance(v, (int, float))] if steps else []


def equivalence_steps(steps, tol):
    """The steps an equivalence comparison under ``tol`` holds."""
    return steps[: tol.steps] if tol.steps else steps


def first_divergence(golden_steps, steps, rtol, atol, keys=None):
    """The first (step, key, expected, actual) that differs beyond tolerance, or None.

    ``keys``: the keys compared (default: every key of each golden record)."""
    if len(steps) != len(golden_steps):
        return (min(len(steps), len(golden_steps)) + 1, "steps", len(golden_steps), len(steps))
    for want, got in zip(golden_steps, steps):
        for key in (want if keys is None else keys):
            expected = want[key]
            actual = got.get(key)
            if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
                if math.isfinite(expected) and abs(actual - expected) <= atol + rtol * abs(expected):
                    continue
                if expected == actual:
                    continue
            elif expected == actual:
                continue
            return (want.get("step"), key, expected, actual)
    return None


def held_steps(golden_steps, result: dict):
    """``(golden steps held to, note, steps not checked)``: a run of more (or fewer) steps than its
    golden is compared over the steps both have."""
    asked = result["case"]["settings"].get("steps", len(golden_steps))
    n = min(asked, len(golden_steps))
    if asked > n:
        return golden_steps, f"; {asked - n} step(s) not checked: beyond the golden's {n}", asked - n
    if len(golden_steps) > n:
        skipped = len(golden_steps) - n
        return golden_steps[:n], f"; the golden's last {skipped} step(s) not checked", skipped
    return golden_steps, "", 0


def compare(golden: dict, result: dict, approximate: bool = False):
    """The golden check for a finished case result."""
    env, dtype = result["environment"], result["case"]["settings"]["dtype"]
    why_not = incomparable(golden["environment"], env, result["case"].get("trainer", ""))
    if why_not:
        return checks.skipped("golden", why_not)
    rtol, atol, reason = tolerance(golden["environment"], env, dtype, approximate)
    want, unchecked, count = held_steps(golden["steps"], result)
    unheld = unheld_keys(env, dtype, golden["environment"])
    keys = [k for k in (want[0] if want else {}) if k not in unheld] if unheld else None
    diff = first_divergence(want, result["steps"][:len(want)], rtol, atol, keys)
    drift = version_drift(golden["environment"], env)
    note = f" [golden taken with {'; '.join(drift)}]" if drift else ""
    if diff is None:
        return {"name": "golden", "status": "pass", "kind": None, "unchecked_steps": count,
                "detail": f"{len(want)} steps match ({reason}){unchecked}{note}"}
    step, key, expected, actual = diff
    return {"name": "golden", "status": "fail", "kind": "golden-drift",
            "detail": f"step {step}: {key} expected {expected!r}, got {actual!r} "
                      f"(rtol {rtol:g}, atol {atol:g}: {reason}){note}"}


def data_parallel_check(golden_trace: dict, result: dict) -> dict:
    """The golden check of a data-parallel case (``harness run --ranks K``): the run is an
    equivalence-class member of the single-process golden, held to the equivalence tolerance."""
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
    tol = equivalence_tolerance(trainer, result.get("environment", {}).get("backend", "cpu"))
    want, unchecked, count = held_steps(golden_trace["steps"], result)
    if tol.steps and len(want) > tol.steps:
        unchecked += f"; steps after {tol.steps} not held on {result['environment']['backend']} (see EQUIVALENCE_GPU)"
        want = equivalence_steps(want, tol)
    drift = first_divergence(want, result["steps"][:len(want)], tol.rtol, tol.atol, compared_keys(want, tol))
    golden_label = f"batch {theirs['batch_size']}" + (f" x accumulation {theirs['grad_accumulation_steps']}"
                                                      if theirs.get("grad_accumulation_steps", 1) > 1 else "")
    if drift is None:
        return {"name": "golden", "status": "pass", "kind": None, "unchecked_steps": count,
                "detail": f"{len(want)} steps of {label} match the golden {golden_label!r} "
                          f"(equivalence tolerance rtol {tol.rtol:g}, atol {tol.atol:g}){unchecked}"}
    step, key, expected, actual = drift
    return {"name": "golden", "status": "fail", "kind": "equivalence-drift",
            "detail": f"step {step}: {key}: {label!r} {actual!r} vs golden {golden_label!r} {expected!r} "
                      f"(atol {tol.atol:g} + rtol {tol.rtol:g} x |golden|)"}


def apply_golden(result: dict, root: Path, golden_key: str, update: bool) -> dict:
    """Add the golden check to a result; with ``update``, (re)write the golden of a passing case."""
    if result["status"] == "error":
        return result
    case = result["case"]
    ranks = case["settings"].get("ranks", 1)
    update = update and ranks == 1  # goldens are single-process traces
    path = golden_path(root, result["environment"]["backend"], golden_key, case["trainer"], case["fixture"],
                       case["variant"], case.get("scenario", ""))
    others_pass = result["status"] == "pass"
    extra = []
    try:
        if update and others_pass:
            text = dumps(trace_of(result))
            if not path.exists():
                detail = f"new golden written to {path}"
            elif path.read_text() == text:
                detail = f"unchanged: {path}"
            else:
                detail = f"rewritten {path}: {describe_change(read(path), trace_of(result))}"
            if not detail.startswith("unchanged"):
                write_atomic(path, text)
            check = {"name": "golden", "status": "pass", "kind": None, "detail": detail}
        elif path.exists() and ranks > 1:
            check = data_parallel_check(read(path), result)
        elif path.exists():
            golden = read(path)
            check = compare(golden, result)
            extra.append(config_check(golden, result))
        else:
            check = checks.skipped("golden", f"no golden at {path} (run with --update-snapshots to record one)",
                                   NO_GOLDEN)
    except (GoldenError, OSError) as err:  # this case's error; the run goes on
        message = (str(err) if isinstance(err, GoldenError)
                   else f"golden {path}: cannot be written ({err.strerror or err})")
        result["error"] = {"kind": "bad-golden", "message": message, "step": None, "check": "golden"}
        check = {"name": "golden", "status": "fail", "kind": "bad-golden", "detail": message}
    if update and not others_pass:
        check["detail"] += " (not updated: the case fails other checks)"
    result["checks"] = [c for c in result["checks"] if c["name"] not in ("golden", "config")] + [check] + extra
    result["golden_path"] = str(path)
    return checks.conclude(result)


def golden_moved(results) -> list:
    """A data-parallel case whose one-process counterpart in the same run drifted from the same golden
    reports ``golden-drift``, not ``equivalence-drift``: the golden moved, not the data parallelism."""
    def drifted(r):
        return any(c["name"] == "golden" and c["kind"] == "golden-drift" for c in r["checks"])

    moved = {r["golden_path"] for r in results
             if r.get("golden_path") and r["case"]["settings"].get("ranks", 1) == 1 and drifted(r)}
    for r in results:
        if r["case"]["settings"].get("ranks", 1) > 1 and r.get("golden_path") in moved:
            for c in r["checks"]:
                if c["name"] == "golden" and c["kind"] == "equivalence-drift":
                    c["kind"] = "golden-drift"
                    c["detail"] += " (the one-process case drifted from this golden too: the golden moved)"
            checks.conclude(r)
    return results
