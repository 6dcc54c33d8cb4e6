"""The default target: this project's reference trainers."""

from dataclasses import asdict, fields

import mlx.core as mx

from ...fixtures import load_fixture
from ...fixtures.rewards import DEFAULT_REWARDS
from ...trainers import SPECS, make_trainer
from ..model import Settings


def config_fields(trainer: str) -> dict:
    """The reference trainer's config fields by name: the standard names of its settings and hyper-parameters."""
    return {f.name: f for f in fields(SPECS[trainer].config_class)}


def trainer_config(trainer: str, settings: Settings):
    """The reference trainer's config for a case's settings."""
    config_class = SPECS[trainer].config_class
    names = set(config_fields(trainer))
    values = {k: v for k, v in settings.to_dict().items() if k in names}  # reference_fixture: prepare's
    unknown = sorted(set(settings.extra) - names)
    if unknown:
        raise ValueError(f"{trainer}: unknown hyper-parameter(s) {', '.join(unknown)}")
    return config_class(**{**values, **settings.extra})


class ReferenceRun:
    def __init__(self, trainer, model, tokenizer, rows, settings):
        config = trainer_config(trainer, settings)
        kwargs = {"reward_funcs": DEFAULT_REWARDS} if trainer == "grpo" else {}
        ranks = settings.ranks
        if ranks > 1:  # launched by mlx.launch: the process group is already up
            kwargs["group"] = mx.distributed.init()
            if kwargs["group"].size() != ranks:
                raise ValueError(f"settings ask for {ranks} ranks, the process group has {kwargs['group'].size()}")
        if settings.reference_fixture:
            reference, _ = load_fixture(settings.reference_fixture)
            reference.set_dtype(getattr(mx, settings.dtype))
            kwargs["reference_model"] = reference
        self.trainer = make_trainer(SPECS[trainer], model, config, tokenizer, **kwargs)
        if config.precompute_reference:
            self.trainer.precompute_reference(rows)
        self._schedule = self.trainer.schedule(rows, settings.steps)
        self._next = 0

    @property
    def reference_model(self):
        ref = self.trainer.reference
        return ref.model if ref is not None else None

    def hyperparameters(self) -> dict:
        return asdict(self.trainer.config)

    def completions(self):
        return getattr(self.trainer, "last_completions", None)

    def rows_for_step(self, k: int):
        return [row for micro in self._schedule[k - 1] for row in micro]

    def step(self) -> dict:
        micro = self._schedule[self._next]
        self._next += 1
        return self.trainer.step(micro)


class ReferenceTarget:
    name = "reference"
    data_parallel = True

    def trainers(self):
        return tuple(SPECS)

    def prepare(self, trainer, model, tokenizer, rows, settings):
        return ReferenceRun(trainer, model, tokenizer, rows, settings)
