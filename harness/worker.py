"""Run one case in this process and write its result as JSON.

    python -m mlxth.harness.worker CASE.json RESULT.json

The runner starts one worker process per case, so a crash or hang costs only
that case.  The worker loads the fixture exactly as a user would (inference
mode), hands it to the target, takes the steps under a ``ModeProbe``, and
applies every check that needs the live model (all but the golden check,
which the runner applies).
"""

import json
import os
import sys
import time
import traceback
from contextlib import ExitStack

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxth.fixtures import load_fixture
from mlxth.fixtures.datasets import load_dataset

from . import checks
from .cases import Case
from .env import deterministic, environment
from .golden import check_tolerances
from .probes import ForcedMode, ModeProbe
from .recompute import COMPLETION_FIELDS, recompute_loss
from .target import load_target

VJP_MISSING = "[Primitive::vjp] Not implemented for CustomKernel"


def _snapshot(module):
    # MLX arrays are immutable and optimizers replace them: references suffice.
    return dict(tree_flatten(module.parameters())) if module is not None else {}


def _fixture_model(case: Case, model_config=None):
    """The case's fixture, loaded as a user loads it, in the case's dtype."""
    model, tokenizer = load_fixture(case.fixture, model_config)
    if case.settings.dtype != "float32":
        model.set_dtype(getattr(mx, case.settings.dtype))
    return model, tokenizer


def _load(case: Case):
    config = {"use_fused_kernel": False} if "kernel-off" in case.interventions else None
    model, tokenizer = _fixture_model(case, config)
    rows = load_dataset(case.dataset, tokenizer=tokenizer, max_length=case.settings.max_length)
    return model, tokenizer, rows


def classify_exception(err: BaseException) -> str:
    if isinstance(err, (ImportError, SyntaxError)):
        return "import-error"
    if VJP_MISSING in str(err):
        return "vjp-missing"
    if isinstance(err, FloatingPointError) or "non-finite" in str(err):
        return "non-finite"
    return "exception"


def _hyperparameters(run, case) -> dict:
    """The run's own hyper-parameters, or the standard defaults with the case's overrides."""
    if hasattr(run, "hyperparameters"):
        return run.hyperparameters()
    from .reference_target import trainer_config

    try:
        return vars(trainer_config(case.trainer, case.settings))
    except (ValueError, TypeError):
        return {}


def run_once(case: Case, probe: bool, recheck_step: int = 0, on_step=None):
    """Take the case's steps; return (records, error, observations).  ``on_step(record)`` follows each step."""
    target = load_target(case.target_spec or case.target)
    model, tokenizer, rows = _load(case)
    obs = {"recomputed": None}
    records, error = [], None
    probe_ctx = ModeProbe(model) if probe else None
    contexts = ExitStack()
    for mode in ("force-train", "force-eval"):
        if mode in case.interventions:
            contexts.enter_context(ForcedMode(model, mode == "force-train"))
    if probe_ctx is not None:  # inside the forced mode: it observes what the forced run does
        contexts.enter_context(probe_ctx)
    try:
        if hasattr(target, "version"):
            obs["target_version"] = target.version()
        run = target.prepare(case.trainer, model, tokenizer, rows, case.settings)
        obs["trainable_keys"] = [k for k, _ in tree_flatten(model.trainable_parameters())]
        obs["before"] = _snapshot(model)
        obs["reference"] = getattr(run, "reference_model", None)
        obs["reference_before"] = _snapshot(obs["reference"])
        obs["hp"] = hp = _hyperparameters(run, case)
        for k in range(1, case.settings.steps + 1):
            if k == recheck_step and case.trainer in COMPLETION_FIELDS and hasattr(run, "rows_for_step"):
                reference, _ = _fixture_model(case)
                obs["recomputed"] = (k, recompute_loss(case.trainer, model, reference, run.rows_for_step(k), hp))
            record = run.step()
            if k == 1:  # for tensors a target creates inside its first step (LoRA added by train())
                obs["after_first"] = _snapshot(model)
            records.append({"step": k, **{key: _plain(v) for key, v in record.items() if key != "step"}})
            if on_step is not None:
                on_step(records[-1])
    except Exception as err:  # noqa: BLE001 - any failure of the target is this case's result
        error = {"kind": classify_exception(err), "message": f"{type(err).__name__}: {err}",
                 "step": len(records) + 1, "traceback": traceback.format_exc(limit=8)}
    finally:
        contexts.close()
    obs["model"] = model
    obs["probe"] = probe_ctx
    return records, error, obs


def _plain(value):
    if isinstance(value, mx.array):
        value = value.item()
    return value


def run_case(case: Case, on_step=None, observe=None) -> dict:
    """Run and check one case.  ``on_step(record)`` follows every step (of the rerun too);
    ``observe(obs)`` receives the checked run's observations (its final model under ``"model"``)."""
    if "cpu" in case.interventions:
        mx.set_default_device(mx.cpu)
    env = environment()
    started = time.perf_counter()
    recheck = min(2, case.settings.steps)
    records, error, obs = run_once(case, probe=True, recheck_step=recheck, on_step=on_step)
    if observe is not None:
        observe(obs)
    result = {"case": case.to_dict(), "id": case.id, "environment": env, "steps": records, "checks": []}
    if obs.get("target_version"):
        result["target_version"] = obs["target_version"]
    add = result["checks"].append
    add(checks.completes(records, error, case.settings.steps))
    if obs.get("probe") is not None:
        add(checks.training_mode(obs["probe"]))
    add(checks.finite(records))
    if error is None:
        add(checks.updates(obs))
        tolerances = check_tolerances(env, case.settings.dtype)
        add(checks.analytic(case, records, obs["hp"], tolerances))
        if deterministic(env):
            rerun, rerun_error, _ = run_once(case, probe=False, on_step=on_step)
            add(checks.reproducible(records, rerun, rerun_error))
        else:
            add(checks.skipped("reproducible", f"{env['backend']} does not promise bitwise reruns"))
        add(checks.loss_recompute(obs["recomputed"], records, tolerances))
    result["error"] = error
    result["duration_s"] = round(time.perf_counter() - started, 3)
    return checks.conclude(result)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    case_path, result_path = argv
    with open(case_path) as fh:
        case = Case.from_dict(json.load(fh))
    result = run_case(case)
    tmp = f"{result_path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
