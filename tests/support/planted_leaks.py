"""Targets that leave state behind in their process, for the worker pool's isolation tests.

Loaded as file specs (``planted_leaks.py:Sticky``), as a user's own adapter
file is.  Each trains exactly as the reference does in a fresh process; what
they leave behind changes the trace of any case that runs after them in the
same process unless the process is put back between cases.
"""

import io
import os
import random
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its helper module sits beside it, as users do it
import leak_memory  # noqa: E402

from mlxth.harness.adapters.reference import ReferenceRun, ReferenceTarget  # noqa: E402


class Sticky(ReferenceTarget):
    """The reference, but once its helper module has served another trainer, beta is 1.5 times larger."""

    name = "planted-sticky"
    golden_key = "reference"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        run = ReferenceRun(trainer, model, tokenizer, rows, settings)
        if leak_memory.first_trainer(trainer) != trainer:
            run.trainer.config.beta *= 1.5
        return run


class Leaky(ReferenceTarget):
    """The reference, leaving behind every kind of process state a case can change."""

    name = "planted-leaky"
    golden_key = "reference"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        run = ReferenceRun(trainer, model, tokenizer, rows, settings)
        linear = nn.Linear.__call__
        nn.Linear.__call__ = lambda self, x: linear(self, x) * 1.001  # a class patched
        mx.random.seed = lambda seed=None: None  # a function of MLX patched: seeding does nothing
        mx.random.normal((3,))
        mx.disable_compile()
        mx.set_default_stream(mx.new_stream(mx.cpu))
        os.environ["MLXTH_LEFT_BEHIND"] = "1"
        np.random.seed(7)
        random.seed(7)
        sys.stdout = io.StringIO()
        return run
