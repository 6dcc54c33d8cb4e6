"""Target adapter for mlx-lm-lora (import name ``mlx_lm_lora``), driven as its own CLI drives it.

It follows the library from 0.9.10 on (what changed when is in the constants
below and the README); the release is read from the code ``import
mlx_lm_lora`` takes.  How each setting maps onto the library, and what the
adapter observes, is in the README ("How the adapters drive each library").
"""

import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from packaging.version import Version

from ...fixtures.rewards import DEFAULT_REWARDS
from . import StepLoop, code_release, describe_version, frozen_copy, resolve_hyperparameters

DISTRIBUTION = "mlx-lm-lora"
MODULE = "mlx_lm_lora"
TRAINERS = ("dpo", "orpo", "grpo")  # every release driven; none has KTO or SimPO
# The releases at which what the adapter relies on changed (the git history of Goekdeniz-Guelmez/mlx-lm-lora).
FIRST_RELEASE = Version("0.9.10")  # the oldest release the adapter is checked against
OPTIONAL_VALIDATION = Version("1.0.1")  # before: val_dataset is required, GRPO has no top_p/top_k,
#                                         and the wired limit is read from mx.metal.device_info()
NEEDS_PYTHON_311 = Version("5.8.6")
CONTROL = ("cpu_device_info_shim",)
OFFERED = {
    "dpo": {"beta": "beta", "loss_type": "loss_type"},
    "orpo": {"beta": "beta"},
    "grpo": {"beta": "beta", "loss_type": "grpo_loss_type", "num_generations": "group_size",
             "max_completion_length": "max_completion_length", "temperature": "temperature",
             "epsilon": "epsilon", "epsilon_high": "epsilon_high"},
}
FIXED = {
    "dpo": {"label_smoothing": 0.0},
    "grpo": {"num_iterations": 1, "scale_rewards": "group"},
}
# The documented hyper-parameters and a second value for each (see mlx_tune.DOCUMENTED).  Left out
# for GRPO: epsilon / epsilon_high and importance_sampling_level, which cannot change anything with one
# optimizer step per rollout (the ratio is 1, so clipping never binds, and token- and sequence-level
# weights then have the same value and gradient).
DOCUMENTED = {
    "dpo": [("beta", 0.5), ("loss_type", "hinge"), ("loss_type", "ipo"), ("grad_accumulation_steps", 2)],
    "orpo": [("beta", 0.5), ("reward_scaling", 2.0), ("grad_accumulation_steps", 2)],
    "grpo": [("beta", 0.04), ("loss_type", "bnpo"), ("loss_type", "dr_grpo"), ("temperature", 0.5),
             ("grad_accumulation_steps", 2), ("batch_size", 1)],
}
# Retried with by the conformance probes when a trainer does not start on this backend.
WORKAROUND = {"cpu_device_info_shim": True}
# Metrics that measure the machine, not the training.
UNSTABLE = ("iterations_per_second", "tokens_per_second", "peak_memory", "trained_tokens")


def version() -> str:
    return describe_version(MODULE, DISTRIBUTION)


def release():
    """The release of the code ``import mlx_lm_lora`` takes (a ``Version``), or None."""
    return code_release(MODULE, DISTRIBUTION)


def unsupported(rel) -> str:
    """Why the adapter cannot drive release ``rel`` (one line), or "" when it can."""
    if rel is None:
        return "mlx-lm-lora is not installed (pip install mlx-lm-lora)"
    if rel < FIRST_RELEASE:
        return f"mlx-lm-lora {rel} is older than the oldest release the adapter is checked against ({FIRST_RELEASE})"
    if rel >= NEEDS_PYTHON_311 and sys.version_info < (3, 11):
        return f"mlx-lm-lora {rel} needs Python 3.11 or later"
    return ""


def _pair_items(rows, scores=False):
    items = []
    for row in rows:
        n = len(row["prompt_ids"])
        item = {"chosen": row["prompt_ids"] + row["chosen_ids"], "rejected": row["prompt_ids"] + row["rejected_ids"],
                "chosen_prompt_length": n, "rejected_prompt_length": n}
        if scores:
            item["preference_score"] = 1.0
        items.append(item)
    return items


def _reward_funcs(rewards):
    """The fixture rewards ``fn(prompt, completion, row)`` as the library's batch reward functions."""
    funcs, weights = [], []
    for fn, weight in rewards:
        def batch_reward(prompts, completions, answer, types=None, _fn=fn):
            return [_fn(p, c, {"answer": a}) for p, c, a in zip(prompts, completions, answer)]

        batch_reward.__name__ = fn.__name__
        funcs.append(batch_reward)
        weights.append(float(weight))
    return funcs, weights


class _DeviceInfoShim:
    """Wrap ``mx.device_info`` and ``mx.metal.device_info`` (what releases before 1.0.1 read) to also report
    Metal's wired-limit key (see the README)."""

    def __init__(self):
        self._originals = []

    def __enter__(self):
        for owner in (mx, mx.metal):
            original = owner.device_info
            self._originals.append((owner, original))
            owner.device_info = lambda _original=original: {"max_recommended_working_set_size": 0, **_original()}
        return self

    def __exit__(self, *exc):
        for owner, original in reversed(self._originals):
            owner.device_info = original
        self._originals = []
        return False


class MlxLmLoraRun:
    def __init__(self, trainer, model, tokenizer, rows, settings, rel):
        from mlx_lm.tuner.callbacks import TrainingCallback

        from mlx_lm_lora.trainer import dpo_trainer, grpo_trainer, orpo_trainer

        self.trainer_name, self.settings, self.rows = trainer, settings, rows
        self._hp, lib_fields, control = resolve_hyperparameters(
            DISTRIBUTION, trainer, settings, OFFERED[trainer], FIXED.get(trainer, {}), CONTROL)
        self._shim = bool(control.get("cpu_device_info_shim", False))
        mx.random.seed(settings.seed)  # LoRA initialisation below draws from the PRNG
        self._mirror = np.random.RandomState(settings.seed)  # predicts the library's data order
        self._predicted = []
        self.reference_model = frozen_copy(model) if trainer in ("dpo", "grpo") else None
        if settings.lora_rank:
            from mlx_lm.tuner.utils import linear_to_lora_layers

            model.freeze()
            linear_to_lora_layers(model, len(model.layers),
                                  {"rank": settings.lora_rank, "scale": 20.0, "dropout": 0.0})
        self._tmp = tempfile.TemporaryDirectory(prefix="mlxth-mlx-lm-lora-")
        self.accumulation = max(1, settings.grad_accumulation_steps)
        common = dict(batch_size=settings.batch_size, iters=settings.steps * self.accumulation,
                      steps_per_report=1, steps_per_eval=10**9, steps_per_save=10**9,
                      adapter_file=str(Path(self._tmp.name) / "adapters.safetensors"),
                      max_seq_length=settings.max_length, gradient_accumulation_steps=self.accumulation)
        # Before 1.0.1 a validation set is required and evaluated at the first and last iteration.
        validation = rel < OPTIONAL_VALIDATION
        if validation:
            common["val_batches"] = 1
        optimizer = optim.Adam(learning_rate=settings.learning_rate)
        loop_ref = self

        class Report(TrainingCallback):
            def on_train_loss_report(self, info):
                loop_ref._loop.pause(info)

        callback = Report()
        if trainer == "dpo":
            self.dataset = _pair_items(rows)
            args = dpo_trainer.DPOTrainingArgs(**common, **lib_fields)
            self._call = lambda: dpo_trainer.train_dpo(
                model=model, ref_model=self.reference_model, optimizer=optimizer, train_dataset=self.dataset,
                val_dataset=self.dataset if validation else None, args=args, training_callback=callback)
        elif trainer == "orpo":
            self.dataset = _pair_items(rows, scores=True)
            args = orpo_trainer.ORPOTrainingArgs(**common, **lib_fields)
            self._call = lambda: orpo_trainer.train_orpo(
                model=model, optimizer=optimizer, train_dataset=self.dataset,
                val_dataset=self.dataset if validation else None, args=args, training_callback=callback)
        else:
            from mlx_lm_lora.trainer.datasets import GRPODataset

            self.dataset = GRPODataset([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows], tokenizer,
                                       text_completion_key="prompt")
            funcs, weights = _reward_funcs(DEFAULT_REWARDS)
            if not validation:  # plain temperature sampling; before 1.0.1 there is nothing else
                lib_fields.setdefault("top_p", 1.0)
                lib_fields.setdefault("top_k", 0)
            args = grpo_trainer.GRPOTrainingArgs(**common, reward_weights=weights, **lib_fields)
            self._call = lambda: grpo_trainer.train_grpo(
                model=model, ref_model=self.reference_model, tokenizer=tokenizer, optimizer=optimizer,
                train_dataset=self.dataset, val_dataset=self.dataset if validation else None, reward_funcs=funcs,
                args=args, training_callback=callback)
        self.args = args
        self._loop = StepLoop(self._train)
        self._taken = 0

    def _train(self):
        compile_was_on = self.settings.compile
        if not self.settings.compile:
            mx.disable_compile()
        shim = _DeviceInfoShim() if self._shim else None
        try:
            if shim:
                shim.__enter__()
            # As the CLI does, right before training.
            np.random.seed(self.settings.seed)
            mx.random.seed(self.settings.seed)
            self._call()
        finally:
            if shim:
                shim.__exit__(None, None, None)
            if not compile_was_on:
                mx.enable_compile()

    # -- data order ---------------------------------------------------------

    def _predict(self, upto: int):
        """The rows of micro-steps 1..upto, by the library's rule for DPO/ORPO batches.

        ``iterate_dpo_batches`` / ``iterate_orpo_batches`` sort the items by
        chosen length, cut them into consecutive batches, and every iteration
        takes the first batch of a fresh ``np.random.permutation``.
        """
        n, bs = len(self.dataset), self.settings.batch_size
        order = sorted(range(n), key=lambda i: len(self.dataset[i]["chosen"]))
        batches = [order[i:i + bs] for i in range(0, n - bs + 1, bs)]
        while len(self._predicted) < upto:
            self._predicted.append(batches[self._mirror.permutation(len(batches))[0]])

    def rows_for_step(self, k: int):
        if self.trainer_name == "grpo":
            return None  # its prompts are drawn inside the library's loop: not known here (the interface's None)
        g = self.accumulation
        self._predict(k * g)
        return [self.rows[i] for micro in self._predicted[(k - 1) * g:k * g] for i in micro]

    # -- stepping -----------------------------------------------------------

    def hyperparameters(self) -> dict:
        return dict(self._hp)

    def step(self) -> dict:
        infos = [self._loop.next() for _ in range(self.accumulation)]
        self._taken += 1
        if self._taken == self.settings.steps:
            self.close()
        # One record per optimizer step: the mean over its micro-batches, as TRL logs it.
        record = {"loss": float(np.mean([i["train_loss"] for i in infos]))}
        for key, value in infos[-1].items():
            name = key.removeprefix("train_")
            if key in ("iteration", "train_loss") or name in UNSTABLE or not isinstance(value, (int, float)):
                continue
            record[name] = float(np.mean([i[key] for i in infos]))
        return record

    def close(self):
        self._loop.finish()
        self._tmp.cleanup()


class MlxLmLoraTarget:
    name = "mlx-lm-lora"
    distribution = "mlx-lm-lora"  # the PyPI name, for --target-version

    def version(self) -> str:
        return version()

    def unsupported(self) -> str:
        return unsupported(release())

    def trainers(self):
        return () if unsupported(release()) else TRAINERS

    def documented_hyperparameters(self, trainer):
        return list(DOCUMENTED[trainer])

    def workaround(self):
        """Extra settings that get a trainer past a start-up failure on this backend, and why."""
        return dict(WORKAROUND), ("mx.device_info() and mx.metal.device_info() wrapped to also report "
                                  "max_recommended_working_set_size "
                                  "(a Metal-only key) while the trainer starts")

    def prepare(self, trainer, model, tokenizer, rows, settings):
        rel = release()
        reason = unsupported(rel)
        if reason:
            raise ValueError(reason)
        if trainer not in TRAINERS:
            raise ValueError(f"mlx-lm-lora offers no {trainer} trainer")
        if getattr(settings, "ranks", 1) > 1:
            raise ValueError("the mlx-lm-lora adapter runs single-process only (settings.ranks > 1)")
        return MlxLmLoraRun(trainer, model, tokenizer, rows, settings, rel)
