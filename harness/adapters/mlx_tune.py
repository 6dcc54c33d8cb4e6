"""Target adapter for mlx-tune (import name ``mlx_tune``), driven through its public API only.

How each setting maps onto the library, and what the adapter observes, is in
the README ("How the adapters drive each library").
"""

import contextlib
import io
import os
import re
import sys
import tempfile

import mlx.core as mx

from ...fixtures.rewards import DEFAULT_REWARDS
from . import NOT_OFFERED, StepLoop, library_version, resolve_hyperparameters

DISTRIBUTION = "mlx-tune"
TRAINERS = ("dpo", "orpo", "kto", "simpo", "grpo")
_STEP_LINE = re.compile(r"Step (\d+)/(\d+) \| Loss: (\S+)")

# standard name -> the library config's field
OFFERED = {
    "dpo": {"beta": "beta", "loss_type": "loss_type", "label_smoothing": "label_smoothing"},
    "orpo": {"beta": "beta"},
    "simpo": {"beta": "beta", "gamma": "gamma"},
    "kto": {"beta": "beta", "desirable_weight": "desirable_weight", "undesirable_weight": "undesirable_weight"},
    "grpo": {"beta": "beta", "loss_type": "loss_type", "num_generations": "num_generations",
             "max_completion_length": "max_completion_length", "temperature": "temperature"},
}
# standard names the library has no field for: the value its behaviour corresponds to
FIXED = {
    "grpo": {"num_iterations": 1, "scale_rewards": "group", "epsilon": NOT_OFFERED, "epsilon_high": NOT_OFFERED},
}
# The documented hyper-parameters and a second value for each: the dead-config probe of
# harness/conformance.py sets each in turn and checks that the loss or the update moves.
# (Settings fields by their Settings name, the rest by standard or library name.)
DOCUMENTED = {
    "dpo": [("beta", 0.5), ("loss_type", "hinge"), ("loss_type", "ipo"), ("label_smoothing", 0.2),
            ("precompute_ref_logprobs", False), ("warmup_steps", 0), ("grad_accumulation_steps", 2)],
    "orpo": [("beta", 0.5), ("warmup_steps", 0), ("grad_accumulation_steps", 2)],
    "kto": [("beta", 0.5), ("desirable_weight", 2.0), ("undesirable_weight", 2.0), ("warmup_steps", 0),
            ("grad_accumulation_steps", 2)],
    "simpo": [("beta", 2.5), ("gamma", 0.3), ("warmup_steps", 0), ("grad_accumulation_steps", 2)],
    "grpo": [("beta", 0.04), ("loss_type", "bnpo"), ("loss_type", "dr_grpo"), ("temperature", 0.5),
             ("warmup_ratio", 0.0), ("grad_accumulation_steps", 2), ("batch_size", 1)],
}
TEXT_FIELDS = {"dpo": ("prompt", "chosen", "rejected"), "orpo": ("prompt", "chosen", "rejected"),
               "simpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label"),
               "grpo": ("prompt", "answer")}


def version() -> str:
    return library_version(DISTRIBUTION)


def _library():
    import mlx_tune

    return mlx_tune


def _reward_fn(rewards):
    """mlx-tune calls ``reward_fn(completion_text, answer)``; the fixture rewards want ``(prompt, completion, row)``."""

    def reward(completion, answer):
        row = {"answer": answer}
        return float(sum(weight * fn("", completion, row) for fn, weight in rewards))

    return reward


def _find_local(name, depth=8):
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return None
        if name in frame.f_locals:
            return frame.f_locals[name]
        frame = frame.f_back
    return None


class MlxTuneRun:
    def __init__(self, trainer, model, tokenizer, rows, settings):
        lib = _library()
        self.trainer_name = trainer
        self.settings = settings
        self.rows = rows
        self._hp, lib_fields, _ = resolve_hyperparameters(
            DISTRIBUTION, trainer, settings, OFFERED[trainer], FIXED.get(trainer, {}))
        self._tmp = tempfile.TemporaryDirectory(prefix="mlxth-mlx-tune-")
        config_class = {"dpo": lib.DPOConfig, "orpo": lib.ORPOConfig, "kto": lib.KTOConfig,
                        "simpo": lib.SimPOConfig, "grpo": lib.GRPOConfig}[trainer]
        config = config_class(
            learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.grad_accumulation_steps,
            max_steps=settings.steps,
            logging_steps=1,
            save_steps=10**9,
            max_seq_length=settings.max_length,
            output_dir=self._tmp.name,
            **lib_fields,
        )
        from mlx_tune.model import MLXModelWrapper

        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            wrapped = MLXModelWrapper(model=model, tokenizer=tokenizer, max_seq_length=settings.max_length,
                                      model_name="fixture")
            if settings.lora_rank:
                lib.FastLanguageModel.get_peft_model(wrapped, r=settings.lora_rank,
                                                     lora_alpha=20 * settings.lora_rank, random_state=settings.seed)
            data = [{k: row[k] for k in TEXT_FIELDS[trainer]} for row in rows]
            kwargs = dict(model=wrapped, train_dataset=data, tokenizer=tokenizer, args=config)
            if trainer == "grpo":

                kwargs["reward_fn"] = _reward_fn(DEFAULT_REWARDS)
            self.trainer = {"dpo": lib.DPOTrainer, "orpo": lib.ORPOTrainer, "kto": lib.KTOTrainer,
                            "simpo": lib.SimPOTrainer, "grpo": lib.GRPOTrainer}[trainer](**kwargs)
        self._line = ""
        self._loop = StepLoop(self._train, on_text=self._on_text)
        self._taken = 0

    # -- the library's side (inside the StepLoop coroutine) -----------------

    def _train(self):
        previous = os.environ.get("MLX_TUNE_DISABLE_COMPILE")
        os.environ["MLX_TUNE_DISABLE_COMPILE"] = "0" if self.settings.compile else "1"
        try:
            mx.random.seed(self.settings.seed)
            self.trainer.train()
        finally:
            if previous is None:
                os.environ.pop("MLX_TUNE_DISABLE_COMPILE", None)
            else:
                os.environ["MLX_TUNE_DISABLE_COMPILE"] = previous

    def _on_text(self, text):
        self._loop.output_append(text)
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            match = _STEP_LINE.search(line)
            if match is None:
                continue
            loss = _find_local("avg_loss")
            record = {"loss": float(loss) if loss is not None else float(match.group(3))}
            reward = _find_local("avg_rew")
            if reward is not None:
                record["reward"] = float(reward)
            if self.trainer_name == "grpo":  # the library skips the update when a group's rewards are all equal
                record["update_skipped"] = 1.0 if "skipped" in line else 0.0
            self._loop.pause(record)

    # -- the harness's side -------------------------------------------------

    def hyperparameters(self) -> dict:
        return dict(self._hp)

    def rows_for_step(self, k: int):
        n = len(self.rows)
        if self.trainer_name == "grpo":
            return [self.rows[(k - 1) % n]]
        bs = max(1, self.settings.batch_size)
        return [self.rows[((k - 1) * bs + i) % n] for i in range(bs)]

    def step(self) -> dict:
        record = self._loop.next()
        self._taken += 1
        if self._taken == self.settings.steps:
            self.close()
        return record

    def close(self):
        self._loop.finish()
        self._tmp.cleanup()


class MlxTuneTarget:
    name = "mlx-tune"
    distribution = "mlx-tune"  # the PyPI name, for --target-version

    def version(self) -> str:
        return version()

    def trainers(self):
        return TRAINERS

    def documented_hyperparameters(self, trainer):
        return list(DOCUMENTED[trainer])

    def prepare(self, trainer, model, tokenizer, rows, settings):
        if trainer not in TRAINERS:
            raise ValueError(f"mlx-tune has no {trainer} trainer")
        if getattr(settings, "ranks", 1) > 1:
            raise ValueError("the mlx-tune adapter runs single-process only (settings.ranks > 1)")
        return MlxTuneRun(trainer, model, tokenizer, rows, settings)
