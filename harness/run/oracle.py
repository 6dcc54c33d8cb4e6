"""Recompute every step of a run from the standard definitions, beside the run itself.

Pairwise trainers and KTO are recomputed just before each step, on the rows
the step will consume (``judge.recompute``).  GRPO samples inside its step,
so the policy is kept (by reference: MLX arrays are immutable) before each
step and at the start of each generation batch, and the step is recomputed
afterwards from the completions it sampled (``judge.grpo_oracle``).
"""

import copy

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ...fixtures import load_fixture
from ...fixtures.rewards import DEFAULT_REWARDS
from ..judge import gradient, grpo_oracle
from ..judge.recompute import recompute_step
from ..model import completion_fields
from ..user_model import load_case_model


def _params(model) -> dict:
    return dict(tree_flatten(model.parameters()))


def load_reference(case, fixture_config=None):
    """The oracle's reference model: a fresh load of the reference fixture (or of the case's own).

    Load it before the target seeds MLX's generator: building a model draws from
    it, and a draw in the middle of a run would change what GRPO samples."""
    if case.settings.reference_fixture:
        reference, _ = load_fixture(case.settings.reference_fixture)
    else:  # the case's own model: a fixture, or the user's model folder (--model)
        reference, _ = load_case_model(case, fixture_config)
    if case.settings.dtype != "float32":
        reference.set_dtype(getattr(mx, case.settings.dtype))
    return reference


class StepOracle:
    def __init__(self, case, model, tokenizer, run, hp, reference):
        self.case, self.model, self.tokenizer, self.run, self.hp = case, model, tokenizer, run, hp
        self.results, self.skipped, self.gradient = [], None, None
        self._shadows, self._before, self._generation_start = [], None, None
        self.reference = reference
        self.grpo = case.trainer == "grpo"
        if not self.grpo and not completion_fields(case.trainer):
            self.skipped = f"no standard formula for {case.trainer}"

    def before(self, k: int) -> None:
        if self.skipped:
            return
        if self.grpo:
            self._before = _params(self.model)
            if (k - 1) % self.hp.get("num_iterations", 1) == 0:
                self._generation_start = self._before
            return
        rows = self.run.rows_for_step(k)
        if rows is None:
            self.skipped = "the target does not say which rows a step consumes (rows_for_step)"
            return
        was = self.model.training
        # The mode the trainer differentiates in (nn.Module's own method: a target may have replaced the
        # model's); the reference stays in inference mode.
        nn.Module.train(self.model, True)
        try:
            loss, metrics = recompute_step(self.case.trainer, self.model, self.reference, rows, self.hp)
        finally:
            nn.Module.train(self.model, was)
        self.results.append({"step": k, "loss": loss, "metrics": metrics})
        if k == 1 and self.case.settings.ranks == 1:
            self._before = _params(self.model)
            shadow = self._shadow(0, self._before)
            self._grads = gradient.standard_gradient(self.case.trainer, shadow, self.reference, rows, self.hp)

    def after(self, k: int, record: dict, tolerances: dict) -> None:
        if self.skipped:
            return
        if not self.grpo:
            if k == 1 and self._before is not None:
                self.gradient = gradient.check(self._grads, self._before, _params(self.model), record, tolerances,
                                               signs=self.case.settings.dtype == "float32")
            return
        rows, completions = self.run.rows_for_step(k), self.run.completions()
        if rows is None or completions is None:
            self.skipped = ("the target does not say which prompts and completions a step used "
                            "(rows_for_step, completions)")
            return
        policy = self._shadow(0, self._before)
        first_iteration = self._generation_start is self._before
        old = None if first_iteration else self._shadow(1, self._generation_start)
        reference = self.reference if self.hp.get("beta", 0) > 0 else None
        loss, metrics, weights = grpo_oracle.step(rows, completions, policy, old, reference, self.hp,
                                                  DEFAULT_REWARDS, self.tokenizer.decode,
                                                  self.tokenizer.eos_token_id)
        self.results.append({"step": k, "loss": loss, "metrics": metrics})
        if k == 1 and self.case.settings.ranks == 1:  # step 1 is a generation batch's first iteration
            self.gradient = gradient.check(gradient.token_gradient(policy, weights), self._before,
                                           _params(self.model), record, tolerances,
                                           signs=self.case.settings.dtype == "float32")

    def _shadow(self, slot: int, params: dict):
        """A model of the policy's structure (LoRA included) holding ``params``."""
        while len(self._shadows) <= slot:
            self._shadows.append(copy.deepcopy(self.model))
        shadow = self._shadows[slot]
        shadow.update(tree_unflatten(list(params.items())))
        nn.Module.train(shadow, True)  # the policy's log-probs in training mode, as the trainer takes them
        return shadow
