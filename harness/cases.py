"""Cases: target x trainer x fixture x variant, and the default matrix."""

from dataclasses import asdict, dataclass, field, replace

from mlxth.fixtures import FIXTURES

from .target import Settings

TRAINERS = ("dpo", "orpo", "kto", "simpo", "grpo")
DATASETS = {"dpo": "preference", "orpo": "preference", "simpo": "preference", "kto": "kto", "grpo": "grpo"}

# A variant changes how a case runs, not what it checks.
VARIANTS = {
    "fp32": {},
    "bf16": {"dtype": "bfloat16"},
    "lora": {"lora_rank": 4, "learning_rate": 1e-3},
    "compiled": {"compile": True},
}
DEFAULT_VARIANTS = ("fp32",)

# Per-trainer settings of the default matrix, sized for a 2-core CPU.
TRAINER_SETTINGS = {
    "grpo": {"batch_size": 2, "extra": {"num_generations": 4, "max_completion_length": 8}},
}

# Per-trainer settings every data-parallel run needs: one RNG stream cannot be
# split over ranks, so GRPO draws each prompt's group from its own key.
DATA_PARALLEL_SETTINGS = {"grpo": {"rollout_rng": "per-prompt"}}


@dataclass(frozen=True)
class Case:
    target: str
    trainer: str
    fixture: str
    variant: str = "fp32"
    settings: Settings = field(default_factory=Settings, compare=False, hash=False)
    target_spec: str = ""  # how the worker loads the target (name or import spec); default: target
    # Worker-level toggles used by triage: force-train, force-eval, kernel-off, cpu.
    interventions: tuple = ()

    @property
    def id(self) -> str:
        ranks = f"/{self.settings.ranks}ranks" if self.settings.ranks > 1 else ""
        return f"{self.target}/{self.trainer}/{self.fixture}/{self.variant}{ranks}"

    @property
    def dataset(self) -> str:
        return DATASETS[self.trainer]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**{**data, "settings": Settings(**data["settings"]),
                      "interventions": tuple(data.get("interventions", ()))})


def case_settings(trainer: str, variant: str, steps: int, ranks: int = 1) -> Settings:
    """A case's settings; with ``ranks`` > 1 the case's batch is split over the ranks (the
    same global step, so the single-process golden still applies)."""
    settings = Settings(steps=steps)
    per_trainer = TRAINER_SETTINGS.get(trainer, {})
    settings = replace(settings, **{k: v for k, v in per_trainer.items() if k != "extra"})
    settings.extra = dict(per_trainer.get("extra", {}))
    settings = replace(settings, **VARIANTS[variant])
    if ranks > 1:
        if settings.batch_size % ranks:
            raise ValueError(f"{trainer}: a batch of {settings.batch_size} cannot be split over {ranks} ranks")
        settings = replace(settings, batch_size=settings.batch_size // ranks, ranks=ranks)
        settings.extra.update(DATA_PARALLEL_SETTINGS.get(trainer, {}))
    return settings


def build_matrix(target, trainers=(), fixtures=(), variants=(), steps=3, spec="", ranks=1):
    """The cases for one target; empty filters mean everything the target offers."""
    trainers = trainers or tuple(t for t in TRAINERS if t in target.trainers())
    fixtures = fixtures or FIXTURES
    variants = variants or DEFAULT_VARIANTS
    return [
        Case(target.name, t, f, v, case_settings(t, v, steps, ranks), spec or target.name)
        for t in trainers
        for f in fixtures
        for v in variants
    ]
