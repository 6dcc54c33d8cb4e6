"""Targets with planted data-parallel and accumulation faults, for the equivalence classes.

Each wraps the reference target and breaks one thing the way real
data-parallel trainers get it wrong.  Loaded by file spec
(``tests/support/planted_distributed.py:Name``) in every rank, so this module
imports nothing from the tests folder.
"""

import os
import time
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from mlxth.harness.adapters.reference import ReferenceRun, ReferenceTarget


class _Planted(ReferenceTarget):
    golden_key = "reference"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        return self.plant(ReferenceRun(trainer, model, tokenizer, rows, settings), settings)

    def plant(self, run, settings):
        return run


class SummedGradients(_Planted):
    """The all-reduce sums the ranks' gradients where it must average them (K x the gradient)."""

    name = "planted-summed-gradients"

    def plant(self, run, settings):
        dp = run.trainer.dp
        if dp.active:
            dp.average_gradients = lambda grads: tree_map(lambda g: mx.distributed.all_sum(g, group=dp.group), grads)
        return run


class SkippedShard(_Planted):
    """Rank 1 takes part in every collective but never trains on its shard (zero loss and gradient)."""

    name = "planted-skipped-shard"

    def plant(self, run, settings):
        trainer = run.trainer
        if trainer.dp.rank == 1:
            grad_fn = trainer._grad_fn

            def skipped(batch, ref, stats):
                (loss, metrics), grads = grad_fn(batch, ref, stats)
                return (mx.zeros_like(loss), metrics), tree_map(mx.zeros_like, grads)

            trainer._grad_fn = skipped
        return run


class DoubleDividedAccumulation(_Planted):
    """Each micro-batch loss is divided by the accumulation steps on top of the step-wide normaliser."""

    name = "planted-double-divided-accumulation"

    def plant(self, run, settings):
        trainer = run.trainer
        objective = trainer.spec.objective

        def divided(model, batch, ref, stats, config):
            loss, metrics = objective(model, batch, ref, stats, config)
            return loss / config.grad_accumulation_steps, metrics

        trainer.spec = replace(trainer.spec, objective=divided)
        return run


class RankDies(_Planted):
    """Rank 1 dies at the start of step 2 (``how``: exit, as a crashed interpreter; abort, as native code)."""

    name = "planted-rank-dies"
    how = "exit"

    def plant(self, run, settings):
        if run.trainer.dp.rank == 1:
            step = run.step

            def dying():
                if run._next == 1:
                    os._exit(1) if self.how == "exit" else os.abort()
                return step()

            run.step = dying
        return run


class RankAborts(RankDies):
    name = "planted-rank-aborts"
    how = "abort"


class RankHangs(_Planted):
    """Rank 1 never returns from step 2; rank 0 waits for it in the all-reduce."""

    name = "planted-rank-hangs"

    def plant(self, run, settings):
        if run.trainer.dp.rank == 1:
            step = run.step

            def hanging():
                if run._next == 1:
                    time.sleep(3600)
                return step()

            run.step = hanging
        return run


class UnusedAverage(_Planted):
    """The averaged gradient is computed and dropped: each rank steps on its own gradient."""

    name = "planted-unused-average"

    def plant(self, run, settings):
        dp = run.trainer.dp
        if dp.active:

            def forgotten(grads):
                nn.average_gradients(grads, group=dp.group)  # the result is never assigned
                return grads

            dp.average_gradients = forgotten
        return run
