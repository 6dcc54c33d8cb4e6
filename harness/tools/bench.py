"""Step-time benchmarks and the statistical speed gate.

Each timed trainer step is followed by a timed lower bound: a bare
forward+backward of the same policy on the same tokens, plus the frozen
forwards the trainer's definition requires.  The gate compares per-step
ratios step / bound against a baseline with a bootstrap interval, since
machine noise hits both halves of a ratio alike (README, "Performance").
"""

import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...fixtures.datasets import load_dataset
from ..env import environment
from ..model import completion_fields
from ..target import load_target
from ..user_model import load_case_model

NEEDS_REFERENCE_FORWARD = {"dpo": 1, "kto": 3, "grpo": 0, "orpo": 0, "simpo": 0}


def _padded(seqs, pad_id, multiple=16):
    width = -(-max(len(s) for s in seqs) // multiple) * multiple + 1
    tokens = np.full((len(seqs), width), pad_id, dtype=np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    return mx.array(tokens)


def step_tokens(trainer, rows, pad_id, run=None):
    """The token batch a step of ``trainer`` processes (what the lower bound runs on)."""
    if trainer == "grpo":
        completions = run.completions() if run is not None else None
        group = len(completions) // len(rows) if completions else 1
        prompts = [r["prompt_ids"] for r in rows for _ in range(group)]
        return _padded([p + c for p, c in zip(prompts, completions or [[]] * len(prompts))], pad_id)
    seqs = [r["prompt_ids"] + r[f"{f}_ids"] for f in completion_fields(trainer) for r in rows]
    return _padded(seqs, pad_id)


def make_lower_bound(model, trainer, grpo_beta=0.0):
    """A function timing one bare forward+backward (+ required frozen forwards) on ``tokens``."""

    def loss(m, tokens):
        logits = m(tokens[:, :-1]).astype(mx.float32)
        return nn.losses.cross_entropy(logits, tokens[:, 1:]).mean()

    grad = nn.value_and_grad(model, loss)
    frozen = NEEDS_REFERENCE_FORWARD[trainer] + (1 if trainer == "grpo" and grpo_beta > 0 else 0)

    def run(tokens):
        was = model.training
        model.train()
        value, grads = grad(model, tokens)
        model.eval()  # frozen-model forwards run in inference mode, as a reference model does
        outs = [mx.stop_gradient(model(tokens[:, :-1])) for _ in range(frozen)]
        mx.eval(value, grads, outs)
        model.train(was)

    return run


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1000.0


def bench_case(case, warmup: int, steps: int) -> dict:
    """Benchmark one case in this process."""
    target = load_target(case.target_spec or case.target)
    settings = case.settings
    settings.steps = warmup + steps
    model, tok = load_case_model(case)
    if settings.dtype != "float32":
        model.set_dtype(getattr(mx, settings.dtype))
    rows = load_dataset(case.dataset, tokenizer=tok, max_length=settings.max_length)
    mx.reset_peak_memory()
    run = target.prepare(case.trainer, model, tok, rows, settings)
    warm_ms = []
    for _ in range(warmup):
        warm_ms.append(_timed(run.step)[1])
    lower = make_lower_bound(model, case.trainer, settings.extra.get("beta", 0.0))
    step_ms, bound_ms, tokens = [], [], 0
    for k in range(warmup + 1, warmup + steps + 1):
        record, ms = _timed(run.step)
        mx.eval(model.parameters())
        step_rows = run.rows_for_step(k)
        if step_rows is None:  # the target cannot say: a batch of the same size
            step_rows = rows[: settings.batch_size]
        batch = step_tokens(case.trainer, step_rows, tok.pad_token_id, run)
        bound_ms.append(_timed(lower, batch)[1])
        step_ms.append(ms)
        tokens += int(record.get("num_tokens", batch.size))
    return summarize(case, step_ms, bound_ms, warm_ms, tokens, mx.get_peak_memory())


def summarize(case, step_ms, bound_ms, warm_ms, tokens, peak_bytes):
    step, bound = np.array(step_ms), np.array(bound_ms)
    q1, q3 = np.percentile(step, [25, 75])
    return {
        "id": case.id, "target": case.target, "trainer": case.trainer, "fixture": case.fixture,
        "variant": case.variant,
        "median_ms": float(np.median(step)), "p90_ms": float(np.percentile(step, 90)), "iqr_ms": float(q3 - q1),
        "tokens_per_s": float(tokens / (step.sum() / 1000)) if step.sum() else 0.0,
        "peak_memory_mb": peak_bytes / 2**20,
        "warmup_s": sum(warm_ms) / 1000, "first_step_s": (warm_ms[0] / 1000) if warm_ms else None,
        "lower_bound_ms": float(np.median(bound)),
        "ratio": float(np.median(step / bound)),
        "step_ms": step_ms, "lower_bound_samples_ms": bound_ms,
        "ratios": list(step / bound),
    }


def bench(cases, warmup=2, steps=20, on_result=None):
    results = []
    for i, case in enumerate(cases, 1):
        try:
            results.append(bench_case(case, warmup, steps))
        except Exception as err:  # noqa: BLE001 - a target that cannot run is reported, the others go on
            results.append({"id": case.id, "target": case.target, "trainer": case.trainer, "fixture": case.fixture,
                            "variant": case.variant, "error": f"{type(err).__name__}: {err}"[:200]})
        if on_result:
            on_result(results[-1], i, len(cases))
    return {"environment": environment(), "warmup": warmup, "steps": steps, "cases": results}


# ----------------------------------------------------------------------------
# The speed gate.
# ----------------------------------------------------------------------------


def bootstrap_slowdown(baseline, current, resamples=2000, seed=0):
    """Point estimate and 95% interval of median(current)/median(baseline) - 1."""
    rng = np.random.default_rng(seed)
    b, c = np.asarray(baseline), np.asarray(current)
    bi = rng.integers(0, len(b), size=(resamples, len(b)))
    ci = rng.integers(0, len(c), size=(resamples, len(c)))
    ratios = np.median(c[ci], axis=1) / np.median(b[bi], axis=1) - 1
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(np.median(c) / np.median(b) - 1), float(low), float(high)


def compare(baseline: dict, current: dict, threshold_pct: float = 10.0):
    """Gate verdicts per case present in both runs."""
    base = {c["id"]: c for c in baseline["cases"] if "ratios" in c}
    verdicts = []
    for case in current["cases"]:
        if "error" in case:
            verdicts.append({"id": case["id"], "status": "error", "detail": case["error"]})
            continue
        if case["id"] not in base:
            verdicts.append({"id": case["id"], "status": "new", "detail": "not in the baseline"})
            continue
        est, low, high = bootstrap_slowdown(base[case["id"]]["ratios"], case["ratios"])
        slower = low > 0 and high * 100 >= threshold_pct
        verdicts.append({
            "id": case["id"], "status": "slower" if slower else "ok",
            "slowdown_pct": 100 * est, "ci_pct": [100 * low, 100 * high],
            "detail": f"{100 * est:+.1f}% (95% CI {100 * low:+.1f}% .. {100 * high:+.1f}%), threshold {threshold_pct:g}%",
        })
    return verdicts

