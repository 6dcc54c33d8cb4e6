"""The case model: the settings a target is asked to honour, a case, and the default matrix.

A case is target x trainer x fixture x variant.  A variant changes how a case
runs (dtype, LoRA, compilation), never what it checks.
"""

from dataclasses import asdict, dataclass, field, replace

from ..fixtures import FIXTURES
from ..trainers import SPECS

TRAINERS = tuple(SPECS)
DATASETS = {"dpo": "preference", "orpo": "preference", "simpo": "preference", "kto": "kto", "grpo": "grpo"}
# The completion fields of each data set's rows (``<field>_ids``); GRPO samples its own.
COMPLETION_FIELDS = {"preference": ("chosen", "rejected"), "kto": ("completion",), "grpo": ()}

VARIANTS = {
    "fp32": {},
    "bf16": {"dtype": "bfloat16"},
    "lora": {"lora_rank": 4, "learning_rate": 1e-3},
    "compiled": {"compile": True},
    "compiled-bf16": {"compile": True, "dtype": "bfloat16"},
}
DEFAULT_VARIANTS = ("fp32",)

# Per-trainer settings of the default matrix, sized for a 2-core CPU.
TRAINER_SETTINGS = {
    "grpo": {"batch_size": 2, "extra": {"num_generations": 4, "max_completion_length": 8}},
}

# What every data-parallel run needs: one RNG stream cannot be split over
# ranks, so GRPO draws each prompt's group from its own key.
DATA_PARALLEL_SETTINGS = {"grpo": {"rollout_rng": "per-prompt"}}


def completion_fields(trainer: str) -> tuple:
    return COMPLETION_FIELDS[DATASETS[trainer]]


@dataclass
class Settings:
    """Hyper-parameters every target is asked to honour for a case."""

    steps: int = 3
    learning_rate: float = 1e-4
    batch_size: int = 4
    grad_accumulation_steps: int = 1
    max_length: int = 64
    seed: int = 0
    lora_rank: int = 0
    compile: bool = False
    dtype: str = "float32"
    # Data-parallel ranks (mlx.launch); ``batch_size`` is per rank, so a step
    # holds batch_size x grad_accumulation_steps x ranks rows.
    ranks: int = 1
    # Trainer-specific hyper-parameters (beta, loss_type, ...), passed through.
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class Case:
    target: str
    trainer: str
    fixture: str
    variant: str = "fp32"
    settings: Settings = field(default_factory=Settings, compare=False, hash=False)
    target_spec: str = ""  # how a worker process loads the target (name or import spec); default: target
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


def build_matrix(target, trainers=(), fixtures=(), variants=(), steps=3, ranks=1):
    """The cases for one loaded target; empty filters mean everything the target offers.

    Raises ``ValueError`` when a case's batch cannot be split over ``ranks``."""
    trainers = trainers or tuple(t for t in TRAINERS if t in target.trainers())
    fixtures = fixtures or FIXTURES
    variants = variants or DEFAULT_VARIANTS
    return [
        Case(target.name, t, f, v, case_settings(t, v, steps, ranks), target.spec)
        for t in trainers
        for f in fixtures
        for v in variants
    ]
