"""Targets with planted faults of the run itself (not of the trainer's numerics), for tests/faults.

Each wraps the reference target and breaks one promise of the target
contract or of the process: a NaN loss returned as a value, a ``step()``
that returns the wrong thing, a ``prepare()`` that raises, a case that hangs
with a child process, prints without end, kills itself, exits or reads stdin.
"""

import os
import signal
import subprocess
import sys
import time

from mlxth.harness.adapters.reference import ReferenceRun, ReferenceTarget

# What a broken step 2 returns, per trainer (grpo: prepare() raises instead).
BROKEN_RECORDS = {
    "dpo": lambda record: [record["loss"]],
    "orpo": lambda record: {k: v for k, v in record.items() if k != "loss"},
    "kto": lambda record: {**record, "loss": "0.5"},
    "simpo": lambda record: {**record, "loss": None},
}
CHATTY_BYTES = 64 * 2**20


class _Planted(ReferenceTarget):
    golden_key = "reference"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        run = ReferenceRun(trainer, model, tokenizer, rows, settings)
        step, counter = run.step, [0]

        def wrapped():
            counter[0] += 1
            return self.step(step, counter[0], trainer, model)

        run.step = wrapped
        return run

    def step(self, step, k, trainer, model):
        return step()


class NaNLoss(_Planted):
    """From step 2 on, the loss is reported as a plain NaN (the target checks nothing)."""

    name = "planted-nan-loss"

    def step(self, step, k, trainer, model):
        record = step()
        return {**record, "loss": float("nan")} if k >= 2 else record


class BrokenContract(_Planted):
    """Step 2 returns what the contract does not allow (``BROKEN_RECORDS``); GRPO's prepare() raises."""

    name = "planted-broken-contract"

    def prepare(self, trainer, model, tokenizer, rows, settings):
        if trainer == "grpo":
            raise RuntimeError("cannot build the optimizer")
        return super().prepare(trainer, model, tokenizer, rows, settings)

    def step(self, step, k, trainer, model):
        record = step()
        return BROKEN_RECORDS[trainer](record) if k == 2 else record


class HangWithChild(_Planted):
    """On tiny-qwen35, step 1 starts a child process and never returns; elsewhere the reference."""

    name = "planted-hang-with-child"

    def step(self, step, k, trainer, model):
        if getattr(model, "model_type", "") == "qwen3_5":
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            time.sleep(3600)
        return step()


class Chatty(_Planted):
    """Step 1 prints ``CHATTY_BYTES`` of output."""

    name = "planted-chatty"

    def step(self, step, k, trainer, model):
        if k == 1:
            line = "x" * 1023 + "\n"
            for _ in range(CHATTY_BYTES // len(line)):
                sys.stdout.write(line)
            sys.stdout.flush()
        return step()


class ProcessFaults(_Planted):
    """Per trainer: DPO kills its own process with SIGKILL in step 2 (as the OOM killer would), ORPO
    calls sys.exit(4) in step 1, KTO waits for a line on stdin in step 1; SimPO and GRPO are sound."""

    name = "planted-process-faults"

    def step(self, step, k, trainer, model):
        if trainer == "dpo" and k == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if trainer == "orpo":
            sys.exit(4)
        if trainer == "kto":
            input()
        return step()
