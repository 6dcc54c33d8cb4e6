"""Step-time benchmarks: a case's timed steps and, beside them, a lower bound.

The lower bound is what the step's definition cannot avoid on the same
tokens: a bare forward+backward of the policy (cross entropy the way the
reference trainers take log-probs), plus the frozen forwards the trainer
needs, plus, for GRPO, the rollout's decode with mlx-lm's KV cache
(teacher-forced on the sampled completions, batched as the trainer batches,
no host sync).  step / bound is a diagnostic; gates compare step times
(``gate.py``).  Rounds are time-based, as pytest-benchmark's are.
"""

import time
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...fixtures.bench import BENCH_FIXTURES, bench_rows, load_bench_fixture
from ...fixtures.datasets import load_dataset
from ..env import environment
from ..model import completion_fields
from ..target import load_target
from ..user_model import load_case_model

NEEDS_REFERENCE_FORWARD = {"dpo": 1, "kto": 3, "grpo": 0, "orpo": 0, "simpo": 0}


TIMERS = ("auto", "wall", "cpu")


def default_timer() -> str:
    """The clock a step is judged by: this process's CPU time on the CPU backend (machine load
    stretches wall time, not the work done), wall time on a GPU."""
    return "wall" if mx.default_device() == mx.gpu else "cpu"


@dataclass
class Rounds:
    """How long a case is timed: at least ``min_rounds`` steps and ``min_time`` seconds of them
    (by ``timer``), at most ``max_rounds`` steps; ``warmup`` untimed steps first; a lower bound
    every ``bound_every`` steps."""

    warmup: int = 2
    min_rounds: int = 40
    min_time: float = 10.0
    max_rounds: int = 400
    bound_every: int = 4
    timer: str = "auto"

    def resolved(self) -> "Rounds":
        return Rounds(**{**self.__dict__, "timer": default_timer() if self.timer == "auto" else self.timer})

    def more(self, done: int, elapsed_s: float) -> bool:
        return done < self.max_rounds and (done < self.min_rounds or elapsed_s < self.min_time)


def _padded(seqs, pad_id, multiple=16):
    width = -(-max(len(s) for s in seqs) // multiple) * multiple + 1
    tokens = np.full((len(seqs), width), pad_id, dtype=np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    return mx.array(tokens)


def step_tokens(trainer, rows, pad_id, completions=None):
    """The token batch a step of ``trainer`` processes (what the lower bound runs on)."""
    if trainer == "grpo":
        group = len(completions) // len(rows) if completions else 1
        prompts = [r["prompt_ids"] for r in rows for _ in range(group)]
        return _padded([p + c for p, c in zip(prompts, completions or [[]] * len(prompts))], pad_id)
    seqs = [r["prompt_ids"] + r[f"{f}_ids"] for f in completion_fields(trainer) for r in rows]
    return _padded(seqs, pad_id)


def cross_entropy(logits, targets):
    """Per-token cross entropy as the reference trainers take log-probs (fused on a GPU)."""
    if mx.default_device() == mx.gpu:
        return mx.fast.cross_entropy(logits, targets)
    return nn.losses.cross_entropy(logits.astype(mx.float32), targets)


def rollout_decode(model, rows, completions):
    """The lazy graph of decoding ``completions`` (``len(completions) // len(rows)`` per row) with
    mlx-lm's KV cache, teacher-forced, prompts of one length in one batch."""
    from mlx_lm.models.cache import make_prompt_cache  # here: the harness command imports this module

    group = len(completions) // len(rows)
    by_length = {}
    for i, r in enumerate(rows):
        by_length.setdefault(len(r["prompt_ids"]), []).append(i)
    outs = []
    for members in by_length.values():
        prompts = [rows[i]["prompt_ids"] for i in members for _ in range(group)]
        seqs = [completions[i * group + g] for i in members for g in range(group)]
        steps = max(len(s) for s in seqs) - 1
        cache = make_prompt_cache(model)
        outs.append(model(mx.array(prompts), cache=cache)[:, -1, :])
        fed = np.zeros((len(seqs), max(steps, 1)), dtype=np.int32)
        for j, s in enumerate(seqs):
            fed[j, : len(s) - 1] = s[:-1]
        fed = mx.array(fed)
        for t in range(steps):
            outs.append(model(fed[:, t : t + 1], cache=cache)[:, -1, :])
    return outs


def make_lower_bound(model, trainer, grpo_beta=0.0):
    """``run(tokens, rows, completions)``: one bare forward+backward, the required frozen forwards,
    and (GRPO) the rollout's decode, evaluated once."""

    def loss(tokens):
        return cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).mean()

    grad = nn.value_and_grad(model, loss)
    frozen = NEEDS_REFERENCE_FORWARD[trainer] + (1 if trainer == "grpo" and grpo_beta > 0 else 0)

    def run(tokens, rows=None, completions=None):
        was = model.training
        outs = []
        if trainer == "grpo" and completions:
            model.eval()  # generation runs in inference mode
            outs += rollout_decode(model, rows, completions)
        model.train()
        value, grads = grad(tokens)
        model.eval()  # frozen-model forwards run in inference mode, as a reference model does
        outs += [mx.stop_gradient(model(tokens[:, :-1])) for _ in range(frozen)]
        mx.eval(value, grads, outs)
        model.train(was)

    return run


def _timed(fn, *args):
    """``fn(*args)``, its wall time and this process's CPU time, in milliseconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0


def case_inputs(case):
    """The case's model (in its dtype, inference mode), tokenizer and rows: a tiny fixture or a
    bench-size one generated now."""
    settings = case.settings
    if case.fixture in BENCH_FIXTURES:
        model, tok = load_bench_fixture(case.fixture)
        rows = bench_rows(case.dataset, tok)
    else:
        model, tok = load_case_model(case)
        rows = load_dataset(case.dataset, tokenizer=tok, max_length=settings.max_length)
    if settings.dtype != "float32":
        model.set_dtype(getattr(mx, settings.dtype))
    return model, tok, rows


class CaseBench:
    """One case prepared for timing: ``step()`` and ``bound()`` return milliseconds by the timer."""

    def __init__(self, case, rounds: Rounds):
        self.case, settings = case, case.settings
        self.cpu = rounds.resolved().timer == "cpu"
        settings.steps = rounds.warmup + rounds.max_rounds
        self.target = target = load_target(case.target_spec or case.target)
        self.model, self.tok, self.rows = case_inputs(case)
        mx.reset_peak_memory()
        self.run = target.prepare(case.trainer, self.model, self.tok, self.rows, settings)
        self.lower = make_lower_bound(self.model, case.trainer, settings.extra.get("beta", 0.0))
        self.done, self.tokens, self.wall_ms = 0, 0, []
        self.warm_ms = [self.step() for _ in range(rounds.warmup)]
        self.tokens, self.wall_ms = 0, []

    def step(self) -> float:
        record, wall, cpu = _timed(self.run.step)
        self.done += 1
        self.tokens += int(record.get("num_tokens", 0))
        self.wall_ms.append(wall)
        return cpu if self.cpu else wall

    def bound(self) -> float:
        rows = self.run.rows_for_step(self.done)
        if rows is None:  # the target cannot say: a batch of the same size
            rows = self.rows[: self.case.settings.batch_size]
        completions = self.run.completions() if self.case.trainer == "grpo" else None
        if self.case.trainer == "grpo" and completions and len(completions) % len(rows):
            completions = None  # a target whose completions do not match its rows: no rollout bound
        batch = step_tokens(self.case.trainer, rows, self.tok.pad_token_id, completions)
        _, wall, cpu = _timed(self.lower, batch, rows, completions)
        return cpu if self.cpu else wall

    def close(self):
        self.run.close()


def summarize(case, step_ms, bound_ms, warm_ms, tokens, peak_bytes, paired=(), timer="wall", wall_ms=None) -> dict:
    """The case's numbers (by ``timer``); ``paired``: the step index each bound sample followed."""
    step, bound = np.array(step_ms), np.array(bound_ms)
    wall = np.array(wall_ms if wall_ms is not None else step_ms)
    q1, q3 = np.percentile(step, [25, 75])
    median, lower = float(np.median(step)), float(np.median(bound)) if len(bound) else float("nan")
    return {
        "id": case.id, "target": case.target, "trainer": case.trainer, "fixture": case.fixture,
        "variant": case.variant, "timer": timer,
        "median_ms": median, "p90_ms": float(np.percentile(step, 90)), "iqr_ms": float(q3 - q1),
        "tokens_per_s": float(tokens / (wall.sum() / 1000)) if wall.sum() else 0.0,
        "peak_memory_mb": peak_bytes / 2**20,
        "warmup_s": sum(warm_ms) / 1000, "first_step_s": (warm_ms[0] / 1000) if warm_ms else None,
        "lower_bound_ms": lower, "ratio": median / lower,
        "step_ms": list(step_ms), "wall_ms": list(wall), "lower_bound_samples_ms": list(bound_ms),
        "ratios": [step_ms[i] / b for i, b in zip(paired, bound_ms)],
    }


def bench_case(case, rounds: Rounds) -> dict:
    """Time one case in this process."""
    rounds = rounds.resolved()
    timed = CaseBench(case, rounds)
    try:
        step_ms, bound_ms, paired = [], [], []
        while rounds.more(len(step_ms), sum(step_ms) / 1000):
            step_ms.append(timed.step())
            if (len(step_ms) - 1) % rounds.bound_every == 0:
                bound_ms.append(timed.bound())
                paired.append(len(step_ms) - 1)
        return summarize(case, step_ms, bound_ms, timed.warm_ms, timed.tokens, mx.get_peak_memory(), paired,
                         rounds.timer, timed.wall_ms)
    finally:
        timed.close()


def error_result(case, err) -> dict:
    return {"id": case.id, "target": case.target, "trainer": case.trainer, "fixture": case.fixture,
            "variant": case.variant, "error": f"{type(err).__name__}: {err}"[:300]}


def bench(cases, rounds: Rounds, on_result=None) -> dict:
    results = []
    for i, case in enumerate(cases, 1):
        try:
            results.append(bench_case(case, rounds))
        except Exception as err:  # noqa: BLE001 - a target that cannot run is reported, the others go on
            results.append(error_result(case, err))
        if on_result:
            on_result(results[-1], i, len(cases))
    return {"kind": "harness-bench", "environment": environment(), "rounds": rounds.resolved().__dict__,
            "cases": results}
