"""Targets with planted faults, one per failure kind the harness must report.

Each wraps the reference target and breaks one thing, the way real trainer
regressions do.  They compare against the reference target's goldens.
"""

import os
import random
import time

import mlx.core as mx

from mlxth.harness.adapters.reference import ReferenceRun, ReferenceTarget


class _Planted(ReferenceTarget):
    golden_key = "reference"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        return self.plant(ReferenceRun(trainer, model, tokenizer, rows, settings), model, settings)

    def plant(self, run, model, settings):
        return run


class SkipTrain(_Planted):
    """The seed regression: a trainer whose ``model.train()`` never happens."""

    name = "planted-skip-train"

    def plant(self, run, model, settings):
        model.train = lambda mode=True: model  # the call is made, and does nothing
        return run


class LossConstant(_Planted):
    """A changed loss constant: DPO's beta silently 0.12 instead of 0.1."""

    name = "planted-loss-constant"

    def plant(self, run, model, settings):
        run.trainer.config.beta = 0.12
        return run


class SkipTrainNoUpdate(_Planted):
    """Two faults, one hiding the other: no ``model.train()`` (the crash stops the run) and no update."""

    name = "planted-skip-train-no-update"

    def plant(self, run, model, settings):
        model.train = lambda mode=True: model
        run.trainer.optimizer.update = lambda model, grads: None
        return run


class InjectNaN(_Planted):
    """A NaN appears in the weights before step 2."""

    name = "planted-nan"

    def plant(self, run, model, settings):
        step = run.step

        def poisoned():
            if run._next == 1:
                for _, m in model.named_modules():
                    if hasattr(m, "embed_tokens"):
                        m.embed_tokens.weight = m.embed_tokens.weight * float("nan")
            return step()

        run.step = poisoned
        return run


class Abort(_Planted):
    """The process aborts (as a native crash would) on the llama fixture only."""

    name = "planted-abort"

    def plant(self, run, model, settings):
        if getattr(model, "model_type", "") == "llama":
            run.step = os.abort
        return run


class Hang(_Planted):
    """A step that never returns."""

    name = "planted-hang"

    def plant(self, run, model, settings):
        run.step = lambda: time.sleep(3600)
        return run


class NoUpdate(_Planted):
    """An optimizer that never applies its update."""

    name = "planted-no-update"

    def plant(self, run, model, settings):
        run.trainer.optimizer.update = lambda model, grads: None
        return run


class Unseeded(_Planted):
    """Unseeded randomness: the learning rate jitters from run to run."""

    name = "planted-unseeded"

    def plant(self, run, model, settings):
        run.trainer.optimizer.learning_rate = mx.array(settings.learning_rate * random.SystemRandom().uniform(0.5, 2))
        return run


class OffByOneMask(_Planted):
    """The classic off-by-one: the completion mask starts one token early."""

    name = "planted-off-by-one"

    def plant(self, run, model, settings):
        spec = run.trainer.spec
        collate = spec.collate

        def shifted(rows, config, pad_id):
            batch = collate(rows, config, pad_id)
            mask = mx.concatenate([batch["mask"][:, 1:], mx.zeros_like(batch["mask"][:, :1])], axis=1)
            return {**batch, "mask": mask, "lengths": mask.sum(axis=1)}

        run.trainer.spec = type(spec)(**{**spec.__dict__, "collate": shifted})
        return run



class Slowed(_Planted):
    """Every step 10% slower: after each step it works (spins on the CPU) for a tenth of the step's
    own time, by the clock the bench judges with (CPU time on the CPU backend, else wall time)."""

    name = "planted-slowed"
    fraction = 0.10

    def plant(self, run, model, settings):
        step = run.step
        clock = time.perf_counter if mx.default_device() == mx.gpu else time.process_time

        def slowed():
            start = clock()
            record = step()
            end = clock()
            while clock() < end + self.fraction * (end - start):
                pass
            return record

        run.step = slowed
        return run


class CompileOnlyDrift(_Planted):
    """Numbers move only when the step is compiled (a constant captured differently)."""

    name = "planted-compile-drift"

    def plant(self, run, model, settings):
        if settings.compile:
            run.trainer.config.beta = 0.1 * (1 + 1e-3)
        return run


class HalfPrecisionOverflow(_Planted):
    """In bf16 the loss is accumulated in float16 and overflows; fp32 is fine."""

    name = "planted-bf16-overflow"

    def plant(self, run, model, settings):
        if settings.dtype == "bfloat16":
            spec = run.trainer.spec
            objective = spec.objective

            def overflowing(model, batch, ref, stats, config):
                loss, metrics = objective(model, batch, ref, stats, config)
                scaled = (loss.astype(mx.float16) * 1e5).astype(mx.float32) / 1e5  # 65504 is float16's max
                return scaled, metrics

            run.trainer.spec = type(spec)(**{**spec.__dict__, "objective": overflowing})
        return run


def _objective_with(run, **fixed):
    """The trainer's objective computed as if ``fixed`` were its config, whatever it is configured with."""
    from dataclasses import replace

    spec = run.trainer.spec
    objective = spec.objective

    def ignoring(model, batch, ref, stats, config):
        return objective(model, batch, ref, stats, replace(config, **fixed))

    run.trainer.spec = type(spec)(**{**spec.__dict__, "objective": ignoring})


class IgnoresLabelSmoothing(_Planted):
    """label_smoothing is accepted, reported, and never used (the loss is plain sigmoid DPO)."""

    name = "planted-ignores-label-smoothing"

    def plant(self, run, model, settings):
        _objective_with(run, label_smoothing=0.0)
        return run


class NoClipNoKL(_Planted):
    """A GRPO without ratio, clip or KL: every step is the first iteration with beta 0, whatever is asked."""

    name = "planted-grpo-no-clip-no-kl"

    def plant(self, run, model, settings):
        _objective_with(run, beta=0.0, epsilon=1e9, epsilon_high=1e9)
        return run


class ReferenceIsPolicy(_Planted):
    """The frozen reference is the policy object itself."""

    name = "planted-reference-is-policy"

    def plant(self, run, model, settings):
        if run.trainer.reference is not None:
            run.trainer.reference.model = model
        return run


class NothingTrainable(_Planted):
    """Everything frozen, LoRA or not: the optimizer has nothing to move."""

    name = "planted-nothing-trainable"

    def plant(self, run, model, settings):
        model.freeze()
        return run


class LoraBaseNotFrozen(_Planted):
    """LoRA adapters added, and the base weights left trainable too."""

    name = "planted-lora-base-not-frozen"

    def plant(self, run, model, settings):
        if settings.lora_rank > 0:
            model.unfreeze()
        return run


class AccumulationKeepsLast(_Planted):
    """Gradient accumulation that keeps only the last micro-batch's gradient (the logged loss stays right)."""

    name = "planted-accumulation-keeps-last"

    def plant(self, run, model, settings):
        from mlx.utils import tree_map

        trainer, calls = run.trainer, [0]
        grad_fn, k = trainer._grad_fn, trainer.config.grad_accumulation_steps

        def keeps_last(*args):
            (loss, metrics), grads = grad_fn(*args)
            calls[0] += 1
            if calls[0] % k:  # not the step's last micro-batch: its gradient is lost
                grads = tree_map(lambda g: g * 0, grads)
            return (loss, metrics), grads

        trainer._grad_fn = keeps_last
        return run


class RewardsWithoutBeta(_Planted):
    """The logged rewards/chosen forgets beta (the loss itself is right)."""

    name = "planted-rewards-without-beta"

    def plant(self, run, model, settings):
        step = run.step

        def logged():
            record = step()
            if "rewards/chosen" in record:
                beta = run.trainer.config.beta
                record["rewards/chosen"] = record["rewards/chosen"] / beta
            return record

        run.step = logged
        return run


class GradientOfNoise(_Planted):
    """The loss value is right but its gradient is a millionth of it: AdamW rescales it into a full-size step."""

    name = "planted-gradient-of-noise"

    def plant(self, run, model, settings):
        spec = run.trainer.spec
        objective = spec.objective

        def faint(model, batch, ref, stats, config):
            loss, metrics = objective(model, batch, ref, stats, config)
            return mx.stop_gradient(loss) + 1e-6 * (loss - mx.stop_gradient(loss)), metrics

        run.trainer.spec = type(spec)(**{**spec.__dict__, "objective": faint})
        return run
