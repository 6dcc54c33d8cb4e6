"""A toy trainer library, ``toylib``, with a git history and locally built releases (wheels).

Its story is the one the release sweep and the two-way bisect exist for:

    commit  subject                           release  dpo               simpo
    1       Initial trainer                   1.0.0    model.train()     -
    2       Leave the model's mode alone      1.1.0    no model.train()  -
    3       Document the trainer              -        no model.train()  -
    4       Add SimPO                         1.2.0    no model.train()  model.train()
    5       Put the model in training mode    1.3.0    model.train()     model.train()
    6       Document the fix                  -        model.train()     model.train()

plus release 0.9.0 (a ``toylib`` without trainers, which the target cannot
drive).  The harness target (``TARGET``, a file outside the repository, so
that ``import toylib`` must find the code under test) offers a trainer only
where the installed release has it.  Wheels are zip files written here, so
nothing is downloaded or built with other tools.
"""

import base64
import hashlib
import subprocess
import zipfile
from pathlib import Path

from .bisect_repo import TRAINER

HISTORY = [  # (subject, release or None, dpo trains in training mode, has simpo)
    ("Initial trainer", "1.0.0", True, False),
    ("Leave the model's mode alone", "1.1.0", False, False),
    ("Document the trainer", None, False, False),
    ("Add SimPO", "1.2.0", False, True),
    ("Put the model in training mode", "1.3.0", True, True),
    ("Document the fix", None, True, True),
]
EARLY_RELEASE = "0.9.0"

SIMPO = '''"""toylib's SimPO trainer."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from toylib.dpo import collate, sequence_logps

BETA, GAMMA = 2.0, 1.0


class SimPOTrainer:
    def __init__(self, model, pad_id, rows, learning_rate, batch_size):
        self.model, self.pad_id, self.rows, self.batch_size, self.k = model, pad_id, rows, batch_size, 0
        self.optimizer = optim.AdamW(learning_rate=learning_rate)

    def loss(self, tokens, mask):
        logps = sequence_logps(self.model, tokens, mask) / mask.sum(-1)
        n = logps.shape[0] // 2
        return -nn.log_sigmoid(BETA * (logps[:n] - logps[n:]) - GAMMA).mean()

    def step(self):
        rows = self.rows[self.k * self.batch_size : (self.k + 1) * self.batch_size]
        self.k += 1
        tokens, mask = collate(rows, self.pad_id)
        self.model.train()
        loss, grads = nn.value_and_grad(self.model, self.loss)(tokens, mask)
        self.optimizer.update(self.model, grads)
        mx.eval(loss, self.model.parameters(), self.optimizer.state)
        return {"loss": loss.item()}
'''

TARGET = '''"""The harness target for toylib: kept outside toylib, as a built-in adapter is."""

import copy
import importlib.util

from packaging.version import Version


class Target:
    name = "toylib"
    distribution = "toylib"

    def version(self):
        try:
            import toylib
        except ImportError:
            return None
        return toylib.__version__

    def unsupported(self):
        found = self.version()
        if found is None:
            return "toylib is not installed"
        if Version(found) < Version("1.0.0"):
            return f"toylib {found} has no trainers yet"
        return ""

    def trainers(self):
        if self.unsupported():
            return ()
        return ("dpo", "simpo") if importlib.util.find_spec("toylib.simpo") else ("dpo",)

    def prepare(self, trainer, model, tokenizer, rows, settings):
        if trainer == "simpo":
            from toylib.simpo import SimPOTrainer

            return SimPOTrainer(model, tokenizer.pad_token_id, rows, settings.learning_rate, settings.batch_size)
        from toylib.dpo import DPOTrainer

        return DPOTrainer(model, copy.deepcopy(model), tokenizer.pad_token_id, rows, settings.learning_rate,
                          settings.batch_size)
'''


def sources(version: str, train: bool = True, simpo: bool = False) -> dict:
    """toylib's files at one revision: path -> text."""
    files = {"toylib/__init__.py": f'"""toylib, a toy trainer library."""\n\n__version__ = "{version}"\n'}
    if version != EARLY_RELEASE:
        train_line = "        self.model.train()\n" if train else ""
        files["toylib/dpo.py"] = TRAINER.format(rev=version, train_line=train_line, broken=":")
    if simpo:
        files["toylib/simpo.py"] = SIMPO
    return files


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(files: dict, version: str, dest: Path) -> Path:
    """A pure-Python wheel of toylib ``version`` holding ``files``."""
    info = f"toylib-{version}.dist-info"
    meta = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: toylib\nVersion: {version}\n",
            f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: mlxth-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    entries = {**files, **meta}
    record = [f"{path},{_record_hash(text.encode())},{len(text.encode())}" for path, text in entries.items()]
    entries[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"toylib-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return wheel


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def build(root: Path) -> dict:
    """The repository (``root/toylib``), the wheels (``root/wheels``) and the target file (``root/target.py``).

    Returns ``{"repo", "wheels", "target", "commits"}``, commits oldest first.
    """
    repo, wheels = root / "toylib", root / "wheels"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@toylib.invalid")
    git(repo, "config", "user.name", "toylib dev")
    build_wheel(sources(EARLY_RELEASE), EARLY_RELEASE, wheels)
    commits, version = [], EARLY_RELEASE
    for number, (subject, release, train, simpo) in enumerate(HISTORY, 1):
        version = release or version
        files = sources(version, train, simpo)
        for path, text in files.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(text)
        (repo / "pyproject.toml").write_text(f'[project]\nname = "toylib"\nversion = "{version}"\n')
        (repo / "CHANGES").write_text(f"{number}. {subject}\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", subject)
        commits.append(git(repo, "rev-parse", "HEAD"))
        if release:
            build_wheel(files, release, wheels)
    target = root / "target.py"
    target.write_text(TARGET)
    return {"repo": repo, "wheels": wheels, "target": target, "commits": commits}


def repo_state(repo) -> dict:
    """Everything of a repository a tool could leave changed."""
    def out(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout

    return {
        "head": out("rev-parse", "HEAD"), "branch": out("symbolic-ref", "-q", "HEAD"),
        "status": out("status", "--porcelain", "--untracked-files=all"), "refs": out("for-each-ref"),
        "worktrees": out("worktree", "list", "--porcelain"), "index": out("ls-files", "-s"),
        "diff": out("diff"), "bisect": out("bisect", "log"),
    }
