"""The training core shared by the reference trainers.

A trainer module supplies a config dataclass (a subclass of ``TrainConfig``)
and a ``TrainerSpec``: how to collate rows, what to compute without gradient
before a step (reference log-probs, batch statistics), and the objective that
is differentiated.  This module owns everything else: seeding and data order,
the frozen reference, LoRA, AdamW with clipping, gradient accumulation,
optional ``mx.compile``, and the training-mode contract:

    the policy is put in training mode (``model.train()``) immediately before
    every gradient computation; frozen-model passes run in inference mode.

Forgetting that contract is the regression this project exists to catch: a
model fresh from ``mlx_lm.load`` is in inference mode, and some layers take an
inference-only kernel there that has no gradient.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from .parallel import DataParallel
from .reference import Reference, apply_lora


@dataclass
class TrainConfig:
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (constant)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    adam_betas: tuple = field(default=(0.9, 0.999), metadata={"help": "AdamW betas."})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global-norm clip; 0 disables."})
    batch_size: int = field(default=4, metadata={"help": "Examples per micro-batch."})
    grad_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_length: int = field(default=64, metadata={"help": "Maximum prompt+completion tokens."})
    seed: int = field(default=0, metadata={"help": "Seeds mx.random and the data order."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle rows each epoch (seeded)."})
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights."})
    lora_layers: int = field(default=-1, metadata={"help": "Blocks (from the top) given LoRA; -1: all."})
    lora_scale: float = field(default=20.0, metadata={"help": "LoRA scale (mlx-lm's default)."})
    compile: bool = field(default=False, metadata={"help": (
        "mx.compile the step (loss, gradient and update in one call), padding sequences to a few "
        "bucketed widths so that it compiles a bounded number of times.")})
    precompute_reference: bool = field(
        default=False, metadata={"help": "Score every row under the reference once, before training."}
    )

    @property
    def step_batch_size(self) -> int:
        return self.batch_size * self.grad_accumulation_steps


@dataclass(frozen=True)
class TrainerSpec:
    name: str
    config_class: type
    collate: Callable  # (rows, config, pad_id) -> batch dict
    objective: Callable  # (model, batch, ref, stats, config) -> (loss, metrics)
    reference_outputs: Optional[Callable] = None  # (ref_model, batch, config) -> dict
    # (policy, reference, step_rows, batches, config, pad_id, dp=DataParallel) -> dict: step_rows is the
    # whole step's micro-batch rows (every rank's), batches this rank's collated micro-batches; a
    # statistic that normalises the loss must be global (dp.all_sum), see DataParallel.
    step_stats: Optional[Callable] = None
    needs_reference: bool = False
    trainer_class: Optional[type] = None  # defaults to Trainer


def step_share(value, count, step_count, batch_size, step_examples):
    """This micro-batch's share of a step-level mean over a subset of examples or tokens.

    The core combines micro-batch metrics weighted by their number of examples
    (``batch_size / step_examples``).  A mean over a subset (KTO's desirable
    examples, ORPO's chosen tokens) needs weighting by the subset's ``count``
    instead; the returned value, so weighted and summed over the step's
    micro-batches (and ranks), is exactly the step-level mean.  With one
    micro-batch it is ``value`` itself.
    """
    return value * (count / mx.maximum(step_count, 1)) * (step_examples / batch_size)


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite loss, gradient or metric."""


# ----------------------------------------------------------------------------
# Data order.
# ----------------------------------------------------------------------------


def step_batches(rows, config: TrainConfig, steps: int, world_size: int = 1):
    """Yield, for each optimizer step, its list of micro-batch row lists.

    The order is a seeded permutation per epoch; an incomplete tail is dropped.
    With ``world_size`` data-parallel ranks a step holds ``world_size`` times
    the rows (``world_size * grad_accumulation_steps`` micro-batches), the
    same rows in the same order as one process taking the whole step;
    ``Trainer.step`` hands each rank its run of them (``DataParallel.shard``).
    """
    n = config.step_batch_size * world_size
    if len(rows) < n:
        raise ValueError(f"{len(rows)} rows cannot fill one step of {n} examples")
    rng = np.random.default_rng(config.seed)
    yielded, epoch = 0, 0
    while yielded < steps:
        order = rng.permutation(len(rows)) if config.shuffle else np.arange(len(rows))
        for start in range(0, len(rows) - n + 1, n):
            chunk = [rows[i] for i in order[start : start + n]]
            yield [chunk[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
            yielded += 1
            if yielded == steps:
                return
        epoch += 1


# ----------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------


def make_optimizer(config: TrainConfig):
    return optim.AdamW(
        learning_rate=config.learning_rate,
        betas=list(config.adam_betas),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def _check_finite(trainer, step, name, value):
    if not math.isfinite(value):
        raise NonFiniteError(f"{trainer}: step {step}: non-finite {name} ({value})")


def _first_non_finite(grads):
    for key, g in tree_flatten(grads):
        if not bool(mx.all(mx.isfinite(g))):
            return key
    return "?"


class Trainer:
    """Runs a ``TrainerSpec`` on a model; ``step`` performs one optimizer step."""

    steps_per_batch = 1  # optimizer steps taken on each batch of rows

    def __init__(self, spec: TrainerSpec, model, config, tokenizer, reference_model=None, group=None):
        self.spec, self.model, self.config = spec, model, config
        self.pad_id = tokenizer.pad_token_id
        self.dp = DataParallel(group)  # ``group``: an mx.distributed group for data parallelism
        mx.random.seed(config.seed)
        if config.lora_rank > 0:
            apply_lora(model, config)
        self.reference = None
        if spec.needs_reference:
            self.reference = Reference(model, reference_model, lora=config.lora_rank > 0)
        self.optimizer = make_optimizer(config)
        self._reference_cache = None  # per-row reference outputs, once precompute_reference ran
        self.step_count = 0
        self._value_and_grad = nn.value_and_grad(model, self._objective)
        self._grad_fn, self._update_fn, self._fused_fn = self._value_and_grad, self._update, None
        if config.compile:
            # State created inside a compiled call would not be captured: make it now.
            self.optimizer.init(model.trainable_parameters())
            state = [model.state, self.optimizer.state, mx.random.state]
            # One micro-batch on one process: loss, gradient and update in one compiled call
            # (as mlx-lm's tuner does); otherwise the gradient and the update apart.
            self._fused_fn = mx.compile(self._fused_step, inputs=state, outputs=state)
            self._grad_fn = mx.compile(self._value_and_grad, inputs=state, outputs=state)
            self._update_fn = mx.compile(self._update, inputs=state, outputs=state)

    def _objective(self, batch, ref, stats):
        loss, metrics = self.spec.objective(self.model, batch, ref, stats, self.config)
        if self.dp.active:  # this rank's estimate of the global loss (see DataParallel)
            loss = loss * self.dp.size
        return loss, metrics

    def _update(self, grads):
        if self.config.max_grad_norm > 0:
            grads, norm = optim.clip_grad_norm(grads, self.config.max_grad_norm)
        else:
            norm = mx.sqrt(sum((g * g).sum() for _, g in tree_flatten(grads)))
        self.optimizer.update(self.model, grads)
        return norm

    def _fused_step(self, batch, ref, stats):
        """Gradient and update in one call; a non-finite loss or gradient leaves the weights and
        the optimizer state as they were (the caller raises), as the eager step's check does."""
        (loss, metrics), grads = self._value_and_grad(batch, ref, stats)
        params, state = self.model.trainable_parameters(), self.optimizer.state
        old_params, old_state = tree_map(lambda x: x, params), tree_map(lambda x: x, state)
        norm = self._update(grads)
        ok = mx.isfinite(loss) & mx.isfinite(norm)

        def keep(new, old):
            return mx.where(ok, new, old)

        self.model.update(tree_map(keep, self.model.trainable_parameters(), old_params))
        state.update(tree_map(keep, dict(state), old_state))
        return loss, norm, metrics

    def precompute_reference(self, rows):
        """Score every row under the frozen reference once (TRL's precompute_ref_log_probs)."""
        spec, size = self.spec, max(2, self.config.batch_size)
        if spec.reference_outputs is None:
            return
        starts = list(range(0, len(rows), size))
        if len(rows) - starts[-1] == 1 and len(starts) > 1:
            starts[-1] -= 1  # no chunk of one row (KTO needs two)
        self._reference_cache = {}
        with self.reference.active() as ref_model:
            for start in starts:
                chunk = rows[start : start + size]
                out = spec.reference_outputs(ref_model, spec.collate(chunk, self.config, self.pad_id), self.config)
                mx.eval(out)
                for j, row in enumerate(chunk):
                    self._reference_cache[id(row)] = {k: v[j] for k, v in out.items()}

    def _cached_reference(self, rows):
        cached = [self._reference_cache[id(r)] for r in rows]
        return {k: mx.stack([c[k] for c in cached]) for k in cached[0]}

    def schedule(self, rows, steps: int):
        """The micro-batch rows of each of ``steps`` optimizer steps, in order (a batch of
        rows repeats for ``steps_per_batch`` steps; every rank's rows under data parallelism)."""
        per = self.steps_per_batch
        batches = step_batches(rows, self.config, -(-steps // per), world_size=self.dp.size)
        return [micro for micro in batches for _ in range(per)][:steps]

    def step(self, micro_rows) -> dict:
        """One optimizer step over ``micro_rows`` (a list of micro-batch row lists).

        ``micro_rows`` is the whole step, every rank's; under data parallelism
        this rank trains on its shard and the normalisers are global.
        """
        spec, config, model, dp = self.spec, self.config, self.model, self.dp
        step_rows, micro_rows = micro_rows, dp.shard(micro_rows)
        batches = [spec.collate(rows, config, self.pad_id) for rows in micro_rows]
        stats = {"num_examples": dp.count(sum(len(r) for r in micro_rows))}
        if spec.step_stats is not None:
            stats.update(spec.step_stats(model, self.reference, step_rows, batches, config, self.pad_id, dp=dp))
            if dp.active:  # settle the statistics' collectives now, in the same order on every rank
                mx.eval([v for v in stats.values() if isinstance(v, mx.array)])
        refs = [None] * len(batches)
        if self._reference_cache is not None:
            refs = [self._cached_reference(rows) for rows in micro_rows]
        elif spec.reference_outputs is not None:
            with self.reference.active() as ref_model:
                refs = [spec.reference_outputs(ref_model, b, config) for b in batches]
        return self.optimize(batches, refs, stats)

    def _all_reduce(self, loss, grads, metrics, num_tokens):
        """The global loss, gradient, metrics and token count from every rank's (see DataParallel)."""
        dp = self.dp
        grads = dp.average_gradients(grads)
        keys = sorted(metrics)
        local = [loss / dp.size, *(metrics[k] for k in keys), mx.array(num_tokens)]
        total = dp.all_sum(mx.stack([mx.array(v).astype(mx.float32) for v in local]))
        return total[0], grads, {k: total[i + 1] for i, k in enumerate(keys)}, int(total[-1].item())

    def optimize(self, batches, refs, stats) -> dict:
        """Accumulate gradients over ``batches`` and take one optimizer step."""
        spec, model = self.spec, self.model
        self.step_count += 1
        model.train()  # the training-mode contract: every gradient is taken in training mode
        if self._fused_fn is not None and len(batches) == 1 and not self.dp.active:
            return self._optimize_fused(batches[0], refs[0], stats)
        loss, grads, metrics = 0.0, None, {}
        rows = sum(b["inputs"].shape[0] for b in batches)
        rows = self.dp.count(rows)  # micro-batch metrics are weighted over the whole (global) step
        for batch, ref in zip(batches, refs):
            (micro_loss, micro_metrics), micro_grads = self._grad_fn(
                {k: v for k, v in batch.items() if isinstance(v, mx.array)}, ref, stats
            )
            loss = loss + micro_loss
            grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
            weight = batch["inputs"].shape[0] / rows
            for k, v in micro_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + weight * v
            if len(batches) > 1:  # keep one micro-batch's graph in memory at a time
                mx.eval(loss, grads)
        num_tokens = sum(b["num_tokens"] for b in batches)
        if self.dp.active:
            loss, grads, metrics, num_tokens = self._all_reduce(loss, grads, metrics, num_tokens)
        mx.eval(loss, grads)  # checked before it can reach the weights
        loss_value = loss.item()
        _check_finite(spec.name, self.step_count, "loss", loss_value)
        norm = self._update_fn(grads)
        mx.eval(norm, model.parameters(), self.optimizer.state, metrics)
        if not math.isfinite(norm.item()):
            raise NonFiniteError(
                f"{spec.name}: step {self.step_count}: non-finite gradient "
                f"(grad norm {norm.item()}, first in {_first_non_finite(grads)})"
            )
        return self._record(loss_value, norm, metrics, num_tokens)

    def _optimize_fused(self, batch, ref, stats) -> dict:
        arrays = {k: v for k, v in batch.items() if isinstance(v, mx.array)}
        loss, norm, metrics = self._fused_fn(arrays, ref, stats)
        mx.eval(loss, norm, metrics, self.model.parameters(), self.optimizer.state)
        _check_finite(self.spec.name, self.step_count, "loss", loss.item())
        if not math.isfinite(norm.item()):
            _, grads = self._value_and_grad(arrays, ref, stats)  # the weights were left as they were
            raise NonFiniteError(
                f"{self.spec.name}: step {self.step_count}: non-finite gradient "
                f"(grad norm {norm.item()}, first in {_first_non_finite(grads)})"
            )
        return self._record(loss.item(), norm, metrics, batch["num_tokens"])

    def _record(self, loss_value, norm, metrics, num_tokens) -> dict:
        record = {"step": self.step_count, "loss": loss_value, "grad_norm": norm.item()}
        record["learning_rate"] = float(self.optimizer.learning_rate.item())
        record["num_tokens"] = int(num_tokens)
        for k, v in metrics.items():
            record[k] = float(v.item())
            _check_finite(self.spec.name, self.step_count, k, record[k])
        return record


def make_trainer(spec: TrainerSpec, model, config, tokenizer, **kwargs):
    return (spec.trainer_class or Trainer)(spec, model, config, tokenizer, **kwargs)


def train(spec: TrainerSpec, model, rows, config, tokenizer, steps: int, on_step=None, **kwargs):
    """Train ``steps`` optimizer steps; return the per-step records.

    ``kwargs`` go to the trainer (``reference_model``; ``reward_funcs`` for
    GRPO; ``group``, an ``mx.distributed`` group, for data parallelism).
    The model's training flag is restored on return.
    """
    was_training = model.training
    trainer = make_trainer(spec, model, config, tokenizer, **kwargs)
    if config.precompute_reference:
        trainer.precompute_reference(rows)
    records = []
    try:
        for micro_rows in trainer.schedule(rows, steps):
            records.append(trainer.step(micro_rows))
            if on_step is not None:
                on_step(records[-1])
    finally:
        model.train(was_training)
    return records
