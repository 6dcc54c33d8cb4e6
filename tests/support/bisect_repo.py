"""Build a small trainer library's git history for the bisect tests.

The library ``mylib`` has a DPO trainer module and a harness target
(``harness_target.py:Target``).  Commit numbers are 1-based; ``drop_train``
is the commit that deletes the ``model.train()`` call, ``broken`` the commits
whose trainer module does not import.  ``src=True`` keeps the package in
``src/mylib`` (a src layout, with a pyproject.toml that says nothing of it).
"""

import subprocess
from pathlib import Path

TRAINER = '''"""mylib's DPO trainer (revision {rev})."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

BETA = 0.1


def sequence_logps(model, tokens, mask):
    logits = model(tokens[:, :-1]).astype(mx.float32)
    logp = mx.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0] - mx.logsumexp(logits, axis=-1)
    return (logp * mask).sum(-1)


def collate(rows, pad_id):
    seqs = [(r["prompt_ids"], r[k]) for k in ("chosen_ids", "rejected_ids") for r in rows]
    width = max(len(p) + len(c) for p, c in seqs)
    tokens = np.full((len(seqs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), width - 1), dtype=np.float32)
    for i, (p, c) in enumerate(seqs):
        tokens[i, : len(p) + len(c)] = p + c
        mask[i, len(p) - 1 : len(p) + len(c) - 1] = 1
    return mx.array(tokens), mx.array(mask)


class DPOTrainer{broken}
    def __init__(self, model, reference, pad_id, rows, learning_rate, batch_size):
        self.model, self.reference, self.pad_id = model, reference, pad_id
        self.rows, self.batch_size, self.k = rows, batch_size, 0
        self.optimizer = optim.AdamW(learning_rate=learning_rate)

    def loss(self, tokens, mask, ref):
        logps = sequence_logps(self.model, tokens, mask)
        n = logps.shape[0] // 2
        h = (logps[:n] - ref[:n]) - (logps[n:] - ref[n:])
        return -nn.log_sigmoid(BETA * h).mean()

    def step(self):
        rows = self.rows[self.k * self.batch_size : (self.k + 1) * self.batch_size]
        self.k += 1
        tokens, mask = collate(rows, self.pad_id)
        ref = mx.stop_gradient(sequence_logps(self.reference, tokens, mask))
{train_line}        loss, grads = nn.value_and_grad(self.model, self.loss)(tokens, mask, ref)
        self.optimizer.update(self.model, grads)
        mx.eval(loss, self.model.parameters(), self.optimizer.state)
        return {{"loss": loss.item()}}
'''

TARGET = '''import copy

from mylib.dpo import DPOTrainer


class Target:
    name = "mylib"

    def trainers(self):
        return ("dpo",)

    def prepare(self, trainer, model, tokenizer, rows, settings):
        reference = copy.deepcopy(model)
        return DPOTrainer(model, reference, tokenizer.pad_token_id, rows, settings.learning_rate,
                          settings.batch_size)
'''


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def build(repo: Path, commits: int = 12, drop_train: int = 9, broken=(6, 7), src=False) -> list:
    """Create the repository; return the commit hashes, oldest first."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@mylib.invalid")
    git(repo, "config", "user.name", "mylib dev")
    package = repo / "src" / "mylib" if src else repo / "mylib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if src:
        (repo / "pyproject.toml").write_text('[project]\nname = "mylib"\nversion = "0.1"\n')
    (repo / "harness_target.py").write_text(TARGET)
    hashes = []
    for rev in range(1, commits + 1):
        train_line = "" if rev >= drop_train else "        self.model.train()\n"
        (package / "dpo.py").write_text(TRAINER.format(
            rev=rev, train_line=train_line, broken="" if rev in broken else ":"))
        (repo / "CHANGES").write_text(f"revision {rev}\n")
        git(repo, "add", "-A")
        subjects = {drop_train: "Simplify the step", **{b: "Refactor the trainer class" for b in broken}}
        subject = subjects.get(rev, f"Revision {rev}")
        git(repo, "commit", "-q", "-m", subject)
        hashes.append(subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout.strip())
    return hashes
