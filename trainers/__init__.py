"""Reference trainers: DPO, ORPO, KTO, SimPO (and GRPO).

Each trainer is a config dataclass, a few pure functions and a ``SPEC`` that
the shared core (``core.py``) runs.  This package never imports the harness.
"""

from . import dpo, grpo, kto, orpo, simpo
from .core import NonFiniteError, TrainConfig, Trainer, TrainerSpec, make_trainer, train

__all__ = ["NonFiniteError", "SPECS", "TrainConfig", "Trainer", "TrainerSpec", "make_trainer", "train"]

SPECS = {spec.name: spec for spec in (dpo.SPEC, orpo.SPEC, kto.SPEC, simpo.SPEC, grpo.SPEC)}
