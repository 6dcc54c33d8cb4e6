"""Target adapter for mlx-tune (import name ``mlx_tune``), driven through its public API only.

It follows the library through its releases (0.4.0 on; what changed when is
in ``RELEASES`` and the README): the release is read from the code that
``import mlx_tune`` takes, so a source checkout put first on the path is
driven as what it is.  How each setting maps onto the library, and what the
adapter observes, is in the README ("How the adapters drive each library").
"""

import contextlib
import io
import os
import re
import sys
import tempfile

import mlx.core as mx
from packaging.version import Version

from ...fixtures.rewards import DEFAULT_REWARDS
from . import NOT_OFFERED, StepLoop, code_release, describe_version, resolve_hyperparameters

DISTRIBUTION = "mlx-tune"
MODULE = "mlx_tune"
TRAINERS = ("dpo", "orpo", "kto", "simpo", "grpo")
_STEP_LINE = re.compile(r"Step (\d+)/(\d+) \| Loss: (\S+)")

# The releases at which the API or the data order changed (the git history of ARahim3/mlx-tune).
FIRST_RELEASE = Version("0.4.0")  # earlier releases were published as unsloth-mlx
CONFIGS_FOR_ALL = Version("0.4.11")  # KTOConfig / SimPOConfig; before, KTO and SimPO take keywords
BATCHED = Version("0.4.17")  # per_device_train_batch_size honoured; before, one row per step
PRECOMPUTED_REFERENCE = Version("0.5.0")  # DPOConfig.precompute_ref_logprobs
CONFIG = {"dpo": "DPOConfig", "orpo": "ORPOConfig", "kto": "KTOConfig", "simpo": "SimPOConfig",
          "grpo": "GRPOConfig"}
TRAINER_CLASS = {"dpo": "DPOTrainer", "orpo": "ORPOTrainer", "kto": "KTOTrainer", "simpo": "SimPOTrainer",
                 "grpo": "GRPOTrainer"}

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
# Before KTOConfig, KTO has no weights: both are 1.
KEYWORD_KTO = {"offered": {"beta": "beta"}, "fixed": {"desirable_weight": 1.0, "undesirable_weight": 1.0}}
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
# Fields a release does not have (they would be swallowed by the configs' **kwargs): (name, first release).
INTRODUCED = {("dpo", "precompute_ref_logprobs"): PRECOMPUTED_REFERENCE,
              ("kto", "desirable_weight"): CONFIGS_FOR_ALL, ("kto", "undesirable_weight"): CONFIGS_FOR_ALL,
              ("kto", "warmup_steps"): CONFIGS_FOR_ALL, ("kto", "grad_accumulation_steps"): CONFIGS_FOR_ALL,
              ("simpo", "warmup_steps"): CONFIGS_FOR_ALL, ("simpo", "grad_accumulation_steps"): CONFIGS_FOR_ALL}
TEXT_FIELDS = {"dpo": ("prompt", "chosen", "rejected"), "orpo": ("prompt", "chosen", "rejected"),
               "simpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label"),
               "grpo": ("prompt", "answer")}


def version() -> str:
    return describe_version(MODULE, DISTRIBUTION)


def release():
    """The release of the code ``import mlx_tune`` takes (a ``Version``), or None."""
    return code_release(MODULE, DISTRIBUTION)


def unsupported(rel) -> str:
    """Why the adapter cannot drive release ``rel`` (one line), or "" when it can."""
    if rel is None:
        return "mlx-tune is not installed (pip install mlx-tune)"
    if rel < FIRST_RELEASE:
        return f"mlx-tune {rel} predates the mlx_tune package: releases before 0.4.0 were published as unsloth-mlx"
    return ""


def _library():
    import mlx_tune

    return mlx_tune


def _reward_fn(rewards, answers):
    """The fixture rewards ``fn(prompt, completion, row)`` as mlx-tune's ``reward_fn(completion, second)``.

    From 0.4.11 the second argument is the row's answer; before, it is the
    prompt, whose answer the adapter looks up in its own rows (``answers``).
    """

    def reward(completion, second):
        row = {"answer": answers.get(second, second)}
        return float(sum(weight * fn("", completion, row) for fn, weight in rewards))

    return reward


def _find_local(name, start=2, depth=8):
    """A local variable of the library's frame that is printing (``start`` frames up: the router's write)."""
    frame = sys._getframe(start)
    for _ in range(depth):
        if frame is None:
            return None
        if name in frame.f_locals:
            return frame.f_locals[name]
        frame = frame.f_back
    return None


def _unrounded_loss(printed: float) -> float:
    """The step loss the library printed, unrounded: its ``avg_loss`` local (DPO and GRPO always, every
    trainer from 0.5.0), else ``total_loss`` (with ``logging_steps=1`` the step's loss, not yet reset
    while the line prints), else the printed 4-decimal value."""
    for name in ("avg_loss", "total_loss"):
        value = _find_local(name, start=3)
        if isinstance(value, (int, float)) and round(float(value), 4) == printed:
            return float(value)
    return printed


class MlxTuneRun:
    def __init__(self, trainer, model, tokenizer, rows, settings, rel):
        lib = _library()
        self.trainer_name = trainer
        self.settings = settings
        self.rows = rows
        config_class = getattr(lib, CONFIG[trainer], None)
        offered, fixed = OFFERED[trainer], FIXED.get(trainer, {})
        if config_class is None and trainer == "kto":
            offered, fixed = KEYWORD_KTO["offered"], KEYWORD_KTO["fixed"]
        self._hp, lib_fields, _ = resolve_hyperparameters(DISTRIBUTION, trainer, settings, offered, fixed)
        self._tmp = tempfile.TemporaryDirectory(prefix="mlxth-mlx-tune-")
        # Batched from 0.4.17 (the step line then says "batch_size: B", which _on_text also reads).
        self._batched = rel >= BATCHED
        common = dict(learning_rate=settings.learning_rate, max_steps=settings.steps, logging_steps=1,
                      max_seq_length=settings.max_length, output_dir=self._tmp.name)
        data = [{k: row[k] for k in TEXT_FIELDS[trainer]} for row in rows]
        if config_class is not None:
            config = config_class(per_device_train_batch_size=settings.batch_size,
                                  gradient_accumulation_steps=settings.grad_accumulation_steps,
                                  save_steps=10**9, **common, **lib_fields)
            options = {"args": config}
        else:  # KTO and SimPO before 0.4.11: keyword arguments, one row per step
            options = {**common, **lib_fields}
            if trainer == "kto":  # ... and KTO reads {"text", "label"} rows only
                data = [{"text": row["prompt"] + row["completion"], "label": row["label"]} for row in rows]
        from mlx_tune.model import MLXModelWrapper

        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            wrapped = MLXModelWrapper(model=model, tokenizer=tokenizer, max_seq_length=settings.max_length,
                                      model_name="fixture")
            if settings.lora_rank:
                lib.FastLanguageModel.get_peft_model(wrapped, r=settings.lora_rank,
                                                     lora_alpha=20 * settings.lora_rank, random_state=settings.seed)
            kwargs = dict(model=wrapped, train_dataset=data, tokenizer=tokenizer, **options)
            if trainer == "grpo":
                answers = {row["prompt"]: row["answer"] for row in rows}
                kwargs["reward_fn"] = _reward_fn(DEFAULT_REWARDS, answers)
            self.trainer = getattr(lib, TRAINER_CLASS[trainer])(**kwargs)
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
            self._batched = "batch_size:" in line
            record = {"loss": _unrounded_loss(float(match.group(3)))}
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
        bs = max(1, self.settings.batch_size) if self._batched else 1
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

    def unsupported(self) -> str:
        return unsupported(release())

    def trainers(self):
        # Every release from 0.4.0 has all five trainer classes (KTO and SimPO configured by keywords
        # before 0.4.11); a release the adapter cannot drive offers none.
        return () if unsupported(release()) else TRAINERS

    def documented_hyperparameters(self, trainer):
        rel = release()
        return [(name, value) for name, value in DOCUMENTED[trainer]
                if rel is None or rel >= INTRODUCED.get((trainer, name), FIRST_RELEASE)]

    def prepare(self, trainer, model, tokenizer, rows, settings):
        rel = release()
        reason = unsupported(rel)
        if reason:
            raise ValueError(reason)
        if trainer not in TRAINERS:
            raise ValueError(f"mlx-tune has no {trainer} trainer")
        if getattr(settings, "ranks", 1) > 1:
            raise ValueError("the mlx-tune adapter runs single-process only (settings.ranks > 1)")
        return MlxTuneRun(trainer, model, tokenizer, rows, settings, rel)
