"""Run one case in this process: one rank of it, or the whole of a one-process case.

    python -m mlxth.harness.run.worker CASE.json OUTDIR {check|trace}

``launch.run_process`` starts it plainly for one rank, or through
``mlx.launch`` once per rank.  The worker loads the fixture exactly as a user
would (inference mode), hands it to the target, takes the steps under a
``ModeProbe`` and applies every check that needs the live model.  Modes:
``check`` runs the whole case with its checks; ``trace`` only takes the steps
(an equivalence-class member), and rank 0 saves the final trainable weights.

Files in OUTDIR (``r`` the rank): ``rank<r>.started`` (the pid, first thing),
``rank<r>.steps`` (a line per finished step, so a crash names its step),
``rank<r>.json`` (status, error and a sha256 per final weight tensor, so that
ranks can be compared), and rank 0's ``result.json`` (and
``weights.safetensors`` in trace mode).  A failed rank of several exits with
status 3 once its files are written, so that mlx.launch stops the others.
"""

import hashlib
import json
import os
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ...fixtures.datasets import load_dataset
from ..adapters.reference import config_fields, trainer_config
from ..env import deterministic, environment
from ..judge import checks, companions
from ..judge.golden import check_tolerances
from ..model import Case, with_setting
from ..target import UnsupportedSetting, load_target
from ..user_model import load_case_model
from .contract import ContractError, step_record
from .modes import ForcedMode, ModeProbe
from .oracle import StepOracle, load_reference

VJP_MISSING = "[Primitive::vjp] Not implemented for CustomKernel"


def _snapshot(module):
    # MLX arrays are immutable and optimizers replace them: references suffice.
    return dict(tree_flatten(module.parameters())) if module is not None else {}


def _fixture_model(case: Case, model_config=None):
    """The case's fixture, loaded as a user loads it, in the case's dtype."""
    model, tokenizer = load_case_model(case, model_config)
    if case.settings.dtype != "float32":
        model.set_dtype(getattr(mx, case.settings.dtype))
    return model, tokenizer


def _load(case: Case):
    config = {"use_fused_kernel": False} if "kernel-off" in case.interventions else None
    model, tokenizer = _fixture_model(case, config)
    rows = load_dataset(case.dataset, tokenizer=tokenizer, max_length=case.settings.max_length)
    return model, tokenizer, rows


class PreflightError(RuntimeError):
    """What the target prepared cannot train correctly; no step is taken."""


def classify_exception(err: BaseException) -> str:
    if isinstance(err, PreflightError):
        return "preflight"
    if isinstance(err, ContractError):
        return "contract"
    if isinstance(err, UnsupportedSetting):
        return "unsupported-setting"
    if isinstance(err, (ImportError, SyntaxError)):
        return "import-error"
    if VJP_MISSING in str(err):
        return "vjp-missing"
    if isinstance(err, FloatingPointError) or "non-finite" in str(err):
        return "non-finite"
    return "exception"


def _hyperparameters(run, case) -> dict:
    """The run's hyper-parameters: what it reports, over the standard defaults with the case's values.

    A reported value unlike the one the case asks for means the setting never reached the trainer:
    ``UnsupportedSetting``, naming each such value."""
    standard = config_fields(case.trainer)
    asked = {k: v for k, v in case.settings.extra.items() if k in standard}
    try:
        defaults = vars(trainer_config(case.trainer, replace(case.settings, extra=asked)))
    except (ValueError, TypeError):
        defaults = {}
    own = run.hyperparameters()
    if own is None:
        return defaults
    differ = [f"{name}={own[name]!r} where the case asks for {value!r}"
              for name, value in case.settings.extra.items() if name in own and not _same(own[name], value)]
    if differ:
        raise UnsupportedSetting(f"hyperparameters() reports {'; '.join(differ)}: the setting does not reach "
                                 "the trainer")
    return {**defaults, **own}


def _same(reported, asked) -> bool:
    numbers = (int, float)
    if isinstance(reported, numbers) and isinstance(asked, numbers):
        return float(reported) == float(asked)
    if isinstance(reported, (list, tuple)) and isinstance(asked, (list, tuple)):
        return len(reported) == len(asked) and all(map(_same, reported, asked))
    return reported == asked


def run_once(case: Case, probe: bool, oracle: bool = False, on_step=None):
    """Take the case's steps; return (records, error, observations).  ``on_step(record)`` follows each step;
    ``oracle``: recompute every step from the standard definitions (``obs["recomputed"]``)."""
    target = load_target(case.target_spec or case.target)
    model, tokenizer, rows = _load(case)
    obs = {"recomputed": [], "recompute_skipped": None}
    records, error, step_oracle = [], None, None
    probe_ctx = ModeProbe(model) if probe else None
    contexts = ExitStack()
    for mode in ("force-train", "force-eval"):
        if mode in case.interventions:
            contexts.enter_context(ForcedMode(model, mode == "force-train"))
    if probe_ctx is not None:  # inside the forced mode: it observes what the forced run does
        contexts.enter_context(probe_ctx)
    where = "version()"  # what the target was doing, for an error's message
    try:
        obs["target_version"] = target.version()
        if oracle:
            where = "the harness's loading of the oracle's reference model (not the target)"
            config = {"use_fused_kernel": False} if "kernel-off" in case.interventions else None
            oracle_reference = load_reference(case, config)
        where = "prepare()"
        run = target.prepare(case.trainer, model, tokenizer, rows, case.settings)
        obs["trainable_keys"] = [k for k, _ in tree_flatten(model.trainable_parameters())]
        obs["before"] = _snapshot(model)
        obs["reference"] = run.reference_model
        obs["reference_before"] = _snapshot(obs["reference"])
        where = "hyperparameters()"
        obs["hp"] = hp = _hyperparameters(run, case)
        where = "preflight"
        problems = companions.preflight(model, obs["reference"])
        if problems:
            raise PreflightError("; ".join(problems))
        if oracle:
            step_oracle = StepOracle(case, model, tokenizer, run, hp, oracle_reference)
        for k in range(1, case.settings.steps + 1):
            where = f"step {k}"
            if step_oracle is not None:
                step_oracle.before(k)
            record = run.step()
            if k == 1:  # for tensors a target creates inside its first step (LoRA added by train())
                obs["after_first"] = _snapshot(model)
            records.append(step_record(record, k))
            if step_oracle is not None:
                step_oracle.after(k, records[-1], check_tolerances(environment(), case.settings.dtype))
            if on_step is not None:
                on_step(records[-1])
    except Exception as err:  # noqa: BLE001 - any failure of the target is this case's result
        in_step = where.startswith("step")
        message = f"{type(err).__name__}: {err}" if in_step else f"{where} raised {type(err).__name__}: {err}"
        if isinstance(err, PreflightError):
            message = str(err)
        error = {"kind": classify_exception(err), "message": message, "step": len(records) + 1 if in_step else None,
                 "where": where, "traceback": traceback.format_exc(limit=8)}
    finally:
        contexts.close()
    if step_oracle is not None:
        obs["recomputed"], obs["recompute_skipped"] = step_oracle.results, step_oracle.skipped
        obs["gradient"] = step_oracle.gradient
    obs["model"] = model
    obs["probe"] = probe_ctx
    return records, error, obs


def _trainable_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def _companions(case: Case, records, obs) -> list:
    """The checks that need other runs: the scenario's knobs, and the one-batch run of a split case."""
    spec = case.spec
    if spec is None:
        return []
    out = [companions.coverage(spec.expects, records)] if spec.expects else []
    final = _snapshot(obs["model"])
    if spec.knobs:
        varied, in_force = [], obs.get("hp") or {}
        for name, value in spec.knobs:
            if name in in_force and in_force[name] == value:
                continue  # already the case's own value (a changed default): varying it to itself tests nothing
            settings = with_setting(case.settings, name, value)
            k_records, k_error, k_obs = run_once(replace(case, settings=settings), probe=False)
            varied.append((name, value, k_records, _snapshot(k_obs["model"]), k_error))
        out.append(companions.dead_knobs(records, final, varied))
    if spec.companion == "equivalence":
        s = case.settings
        one = replace(case, settings=replace(s, batch_size=s.batch_size * s.grad_accumulation_steps,
                                             grad_accumulation_steps=1))
        g_records, g_error, g_obs = run_once(one, probe=False)
        label = f"batch {s.batch_size} x accumulation {s.grad_accumulation_steps}"
        golden_label = f"batch {one.settings.batch_size}"
        if g_error is not None:
            out.append(checks.skipped("equivalence", f"{golden_label} failed: {g_error['message']}"))
        else:
            # The weights before step 1 are the run's own (kept by reference): no second load of the fixture.
            out.append(companions.equivalence(case.trainer, label, golden_label, g_records,
                                              _trainable_weights(g_obs["model"]), records,
                                              _trainable_weights(obs["model"]), obs["before"],
                                              environment()["backend"]))
    return out


def run_case(case: Case, on_step=None, observe=None) -> dict:
    """Run and check one case.  ``on_step(record)`` follows every step (of the rerun too);
    ``observe(obs)`` receives the checked run's observations (its final model under ``"model"``)."""
    if "cpu" in case.interventions:
        mx.set_default_device(mx.cpu)
    env = environment()
    started = time.perf_counter()
    records, error, obs = run_once(case, probe=True, oracle=True, on_step=on_step)
    if observe is not None:
        observe(obs)
    result = {"case": case.to_dict(), "id": case.id, "environment": env, "steps": records, "checks": []}
    if obs.get("target_version"):
        result["target_version"] = obs["target_version"]
    if obs.get("hp"):
        result["config"] = json_safe(obs["hp"])
    add = result["checks"].append
    add(checks.completes(records, error, case.settings.steps))
    if obs.get("probe") is not None:
        add(checks.training_mode(obs["probe"], stepped=bool(records)))
    add(checks.finite(records))
    if error is None:
        add(checks.updates(obs, lora=case.settings.lora_rank > 0))
        tolerances = check_tolerances(env, case.settings.dtype)
        add(checks.analytic(case, records, obs["hp"], tolerances))
        if deterministic(env):
            rerun, rerun_error, _ = run_once(case, probe=False, on_step=on_step)
            add(checks.reproducible(records, rerun, rerun_error))
        else:
            add(checks.skipped("reproducible", f"{env['backend']} does not promise bitwise reruns"))
        result["checks"] += checks.recompute(obs["recomputed"], obs["recompute_skipped"], records, tolerances)
        result["checks"].append(obs.get("gradient") or checks.skipped(
            "gradient", obs.get("recompute_skipped") or "no standard first-step gradient for this trainer/target"))
        result["checks"] += _companions(case, records, obs)
    result["error"] = error
    result["duration_s"] = round(time.perf_counter() - started, 3)
    return checks.conclude(result)


def json_safe(value):
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


FAILED_RANK_STATUS = 3
BACKEND_ENV = "MLXTH_DIST_BACKEND"


def fingerprint(model) -> dict:
    """sha256 of every parameter's bytes (bf16 widened to fp32, exactly), by name."""
    out = {}
    for name, value in tree_flatten(model.parameters()):
        if value.dtype == mx.bfloat16:
            value = value.astype(mx.float32)
        out[name] = hashlib.sha256(memoryview(value)).hexdigest()[:16]
    return out


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def init_group(ranks: int):
    """The process group mlx.launch set up, or None for one process."""
    if ranks <= 1:
        return None
    group = mx.distributed.init(strict=True, backend=os.environ.get(BACKEND_ENV, "any"))
    if group.size() != ranks:
        raise RuntimeError(f"the case asks for {ranks} ranks but the launcher started {group.size()}")
    return group


def _trace_case(case: Case, on_step, observe) -> dict:
    started = time.perf_counter()
    records, error, obs = run_once(case, probe=False, on_step=on_step)
    observe(obs)
    result = {"case": case.to_dict(), "id": case.id, "environment": environment(), "steps": records,
              "checks": [checks.completes(records, error, case.settings.steps), checks.finite(records)],
              "error": error, "duration_s": round(time.perf_counter() - started, 3)}
    return checks.conclude(result)


def main(argv=None) -> int:
    case_path, outdir, mode = sys.argv[1:] if argv is None else argv
    outdir = Path(outdir)
    with open(case_path) as fh:
        case = Case.from_dict(json.load(fh))
    group = init_group(case.settings.ranks)
    rank = group.rank() if group is not None else 0
    (outdir / f"rank{rank}.started").write_text(str(os.getpid()))
    steps_log = open(outdir / f"rank{rank}.steps", "a", buffering=1)

    def on_step(record):
        steps_log.write(f"{record['step']}\n")

    seen = {}
    result = (_trace_case if mode == "trace" else run_case)(case, on_step=on_step, observe=seen.update)
    model = seen.get("model")
    info = {"rank": rank, "size": 1 if group is None else group.size(), "pid": os.getpid(),
            "status": "error" if result.get("error") else "ok", "error": result.get("error"),
            "steps": len(result["steps"]), "fingerprint": fingerprint(model) if model is not None else {}}
    if rank == 0:
        if mode == "trace" and model is not None:
            mx.save_safetensors(str(outdir / "weights.safetensors"), dict(tree_flatten(model.trainable_parameters())))
        _write_json(outdir / "result.json", result)
    _write_json(outdir / f"rank{rank}.json", info)
    steps_log.close()
    return FAILED_RANK_STATUS if info["status"] == "error" and info["size"] > 1 else 0


if __name__ == "__main__":
    sys.exit(main())
