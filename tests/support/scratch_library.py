"""A scratch trainer library, ``toyprefs``, written for the end-to-end test: not this project's code.

Its own git repository with a small DPO-style trainer (summed completion
log-probs, a frozen reference, AdamW) and the adapter its maintainer writes
after ``harness init``.  ``REGRESSION`` is a change a maintainer could make
without noticing: a learning-rate warm-up switched on by default, which
every check but the golden lets through.
"""

import subprocess
from pathlib import Path

PYPROJECT = """\
[project]
name = "toyprefs"
version = "0.3.0"
description = "Toy preference optimisation for MLX"
"""

TRAINER = '''"""Preference training: one optimizer step over chosen/rejected pairs at a time."""

import copy
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten


@dataclass
class PrefConfig:
    beta: float = 0.1
    learning_rate: float = 1e-4
    batch_size: int = 4
    warmup_steps: int = {warmup_steps}  # linear learning-rate warm-up; 0: none


def completion_logps(model, tokens, mask):
    logits = model(tokens[:, :-1]).astype(mx.float32)
    picked = mx.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    return ((picked - mx.logsumexp(logits, axis=-1)) * mask).sum(axis=-1)


def pad_pairs(pairs, pad_id):
    width = max(len(p) + len(c) for p, c in pairs)
    tokens = np.full((len(pairs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(pairs), width - 1), dtype=np.float32)
    for row, (prompt, completion) in enumerate(pairs):
        tokens[row, : len(prompt) + len(completion)] = list(prompt) + list(completion)
        mask[row, len(prompt) - 1 : len(prompt) + len(completion) - 1] = 1.0
    return mx.array(tokens), mx.array(mask)


class PreferenceTrainer:
    def __init__(self, model, pad_id, config: PrefConfig):
        self.model, self.pad_id, self.config = model, pad_id, config
        self.reference = copy.deepcopy(model)
        self.reference.freeze()
        self.optimizer = optim.AdamW(learning_rate=config.learning_rate, weight_decay=0.0)
        self.steps_taken = 0

    def objective(self, tokens, mask, ref):
        logps = completion_logps(self.model, tokens, mask)
        half = logps.shape[0] // 2
        margin = (logps[:half] - ref[:half]) - (logps[half:] - ref[half:])
        return -nn.log_sigmoid(self.config.beta * margin).mean()

    def train_step(self, prompts, chosen, rejected):
        self.steps_taken += 1
        if self.config.warmup_steps:
            ramp = min(1.0, self.steps_taken / self.config.warmup_steps)
            self.optimizer.learning_rate = self.config.learning_rate * ramp
        pairs = list(zip(prompts, chosen)) + list(zip(prompts, rejected))
        tokens, mask = pad_pairs(pairs, self.pad_id)
        ref = mx.stop_gradient(completion_logps(self.reference, tokens, mask))
        self.model.train()
        loss, grads = nn.value_and_grad(self.model, self.objective)(tokens, mask, ref)
        norm = mx.sqrt(sum((g * g).sum() for _, g in tree_flatten(grads)))
        self.optimizer.update(self.model, grads)
        mx.eval(loss, norm, self.model.parameters(), self.optimizer.state)
        return {{"loss": loss.item(), "grad_norm": norm.item()}}
'''

ADAPTER = '''"""toyprefs as a harness target (the maintainer filled in the skeleton `harness init` wrote)."""

import mlx.core as mx

from toyprefs.trainer import PrefConfig, PreferenceTrainer


class Run:
    def __init__(self, model, tokenizer, rows, settings):
        config = PrefConfig(beta=settings.extra.get("beta", 0.1), learning_rate=settings.learning_rate,
                            batch_size=settings.batch_size)
        self.trainer = PreferenceTrainer(model, tokenizer.pad_token_id, config)
        self.reference_model = self.trainer.reference
        self.rows, self.k = rows, 0

    def rows_for_step(self, k):
        n = self.trainer.config.batch_size
        return [self.rows[((k - 1) * n + i) % len(self.rows)] for i in range(n)]

    def step(self):
        self.k += 1
        rows = self.rows_for_step(self.k)
        return self.trainer.train_step([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows],
                                       [r["rejected_ids"] for r in rows])


class Target:
    name = "toyprefs"

    def trainers(self):
        return ("dpo",)

    def prepare(self, trainer, model, tokenizer, rows, settings):
        mx.random.seed(settings.seed)
        return Run(model, tokenizer, rows, settings)
'''

REGRESSION = "Warm the learning rate up over 10 steps by default"


def git(repo, *args) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def commit(repo, message) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def create(repo: Path) -> str:
    """The library before the harness: its first commit; returns its hash."""
    (repo / "toyprefs").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "maintainer@toyprefs.invalid")
    git(repo, "config", "user.name", "toyprefs maintainer")
    (repo / "pyproject.toml").write_text(PYPROJECT)
    (repo / "toyprefs" / "__init__.py").write_text('"""toyprefs."""\n')
    write_trainer(repo, warmup_steps=0)
    return commit(repo, "Preference trainer")


def write_trainer(repo: Path, warmup_steps: int) -> None:
    (repo / "toyprefs" / "trainer.py").write_text(TRAINER.format(warmup_steps=warmup_steps))


def write_adapter(repo: Path) -> None:
    (repo / "harness_target.py").write_text(ADAPTER)


def later_history(repo: Path) -> dict:
    """Commits after the gate: an unrelated one, the regression, another unrelated one."""
    (repo / "README.md").write_text("# toyprefs\n\nPreference optimisation for MLX.\n")
    docs = commit(repo, "Add a README")
    write_trainer(repo, warmup_steps=10)
    regression = commit(repo, REGRESSION)
    (repo / "CHANGES.md").write_text("## 0.3.1\n\n- Learning-rate warm-up.\n")
    changes = commit(repo, "Changelog for 0.3.1")
    return {"docs": docs, "regression": regression, "head": changes}
