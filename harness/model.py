"""The case model: the settings a target is asked to honour, a case, and the default matrix.

A case is target x trainer x fixture x variant, plus, for the scenarios, a
name.  A variant changes how a case runs (dtype, LoRA, compilation); a
scenario leaves the easy path on purpose (non-default hyper-parameters, a
confident model, a reference that differs from the policy, GRPO clipping and
EOS) and says which paths it must reach and which knobs must move the trace.
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
# The default matrix also runs every other release variant once per trainer, on this fixture:
# their paths (bf16 casts, LoRA freezing and its reference, the compiled step) are then part of
# every default run without multiplying it by the fixtures.
RELEASE_VARIANTS = ("bf16", "lora", "compiled")
VARIANT_FIXTURE = "tiny-llama"
# ... and, for a target that trains data-parallel, one case over ranks (mlx.launch), held to the
# one-process golden: KTO, whose step shares counts and its reference point z over the ranks.
DATA_PARALLEL_CASE = ("kto", 2)

# Per-trainer settings of the default matrix, sized for a 2-core CPU.
TRAINER_SETTINGS = {
    "grpo": {"batch_size": 2, "extra": {"num_generations": 4, "max_completion_length": 8}},
}

# What every data-parallel run needs: one RNG stream cannot be split over
# ranks, so GRPO draws each prompt's group from its own key.
DATA_PARALLEL_SETTINGS = {"grpo": {"rollout_rng": "per-prompt"}}


@dataclass(frozen=True)
class Scenario:
    fixture: str
    extra: dict = field(default_factory=dict)  # trainer hyper-parameters
    settings: dict = field(default_factory=dict)  # other Settings fields
    reference_fixture: str = ""  # a reference model other than a copy of the policy
    expects: tuple = ()  # paths the trace must show it reached (see judge.companions.COVERAGE)
    knobs: tuple = ()  # (name, second value): each must change the trace
    companion: str = ""  # "equivalence": the run is held to batch B taken in one micro-batch


_GRPO_HARD = {"num_iterations": 2, "beta": 0.04, "epsilon": 0.05, "max_completion_length": 8,
              "num_generations": 4, "temperature": 1.0}
# Non-default values on the warm fixture, so that every documented field has a measurable effect.
SCENARIOS = {
    "dpo": {
        "smoothed": Scenario("tiny-warm", {"beta": 0.5, "label_smoothing": 0.2}, reference_fixture="tiny-llama",
                             knobs=(("beta", 0.1), ("label_smoothing", 0.0), ("loss_type", "hinge"))),
        "ipo": Scenario("tiny-warm", {"loss_type": "ipo", "beta": 0.3}, reference_fixture="tiny-llama"),
        "hinge": Scenario("tiny-warm", {"loss_type": "hinge", "beta": 0.5}, reference_fixture="tiny-llama"),
        "accumulation": Scenario("tiny-llama", settings={"batch_size": 2, "grad_accumulation_steps": 2},
                                 companion="equivalence"),
    },
    "orpo": {
        "odds": Scenario("tiny-warm", {"beta": 0.5}, knobs=(("beta", 0.1),)),
        "accumulation": Scenario("tiny-llama", settings={"batch_size": 2, "grad_accumulation_steps": 2},
                                 companion="equivalence"),
    },
    "kto": {
        "weighted": Scenario("tiny-warm", {"beta": 0.2, "desirable_weight": 1.33, "undesirable_weight": 0.75},
                             reference_fixture="tiny-llama", expects=("kl-positive-from-start",),
                             knobs=(("beta", 0.1), ("desirable_weight", 1.0), ("undesirable_weight", 1.0))),
        "accumulation": Scenario("tiny-llama", settings={"batch_size": 2, "grad_accumulation_steps": 2},
                                 companion="equivalence"),
    },
    "simpo": {
        "margin": Scenario("tiny-warm", {"beta": 2.5, "gamma": 0.5}, knobs=(("beta", 2.0), ("gamma", 1.0))),
        "accumulation": Scenario("tiny-llama", settings={"batch_size": 2, "grad_accumulation_steps": 2},
                                 companion="equivalence"),
    },
    "grpo": {
        **{loss: Scenario("tiny-warm", {**_GRPO_HARD, "loss_type": loss}, settings={"learning_rate": 1e-3},
                          expects=("clipped", "lengths-vary", "kl-positive"))
           for loss in ("grpo", "bnpo", "dr_grpo")},
        "dapo": Scenario("tiny-warm", {**_GRPO_HARD, "loss_type": "dapo"}, settings={"learning_rate": 1e-3},
                         expects=("clipped", "lengths-vary", "kl-positive"),
                         knobs=(("beta", 0.0), ("loss_type", "grpo"), ("epsilon", 0.2), ("epsilon_high", 0.1),
                                ("num_iterations", 1), ("scale_rewards", "none"), ("scale_rewards", "batch"),
                                ("temperature", 0.7),
                                ("max_completion_length", 2), ("num_generations", 2),
                                ("max_grad_norm", 0.0))),  # its norms (about 5) are clipped at 1.0
        "accumulation": Scenario("tiny-llama", {"rollout_rng": "per-prompt"},
                                 settings={"batch_size": 1, "grad_accumulation_steps": 2},
                                 companion="equivalence"),
    },
}


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
    # A fixture to use as the frozen reference instead of a copy of the policy (same tokenizer and
    # architecture); empty: the policy's copy, as trainers do by default.
    reference_fixture: str = ""
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
    model_path: str = ""  # a user's mlx-lm model folder, standing in for the fixture named ``fixture``
    # Worker-level toggles used by triage: force-train, force-eval, kernel-off, cpu.
    interventions: tuple = ()
    scenario: str = ""  # a name in SCENARIOS[trainer]; empty: the trainer's defaults

    @property
    def id(self) -> str:
        ranks = f"/{self.settings.ranks}ranks" if self.settings.ranks > 1 else ""
        scenario = f"/{self.scenario}" if self.scenario else ""
        return f"{self.target}/{self.trainer}/{self.fixture}/{self.variant}{scenario}{ranks}"

    @property
    def spec(self):
        """The case's scenario (None for the trainer's defaults)."""
        return SCENARIOS[self.trainer][self.scenario] if self.scenario else None

    @property
    def dataset(self) -> str:
        return DATASETS[self.trainer]

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**{**data, "settings": Settings(**data["settings"]),
                      "interventions": tuple(data.get("interventions", ()))})


SETTINGS_FIELDS = ("steps", "learning_rate", "batch_size", "grad_accumulation_steps", "max_length", "seed",
                   "lora_rank", "compile", "dtype", "ranks", "reference_fixture")


def with_setting(settings: Settings, name: str, value) -> Settings:
    """``settings`` with one field (or, for a trainer's own hyper-parameter, one ``extra`` entry) changed."""
    if name in SETTINGS_FIELDS:
        return replace(settings, **{name: value})
    return replace(settings, extra={**settings.extra, name: value})


def case_settings(trainer: str, variant: str, steps: int, ranks: int = 1, project: dict = None,
                  scenario: str = "") -> Settings:
    """A case's settings; with ``ranks`` > 1 the case's batch is split over the ranks (the
    same global step, so the single-process golden still applies).  ``project``: the
    project's settings for this trainer (Settings fields, hyper-parameters under "extra")."""
    settings = Settings(steps=steps)
    per_trainer, project = TRAINER_SETTINGS.get(trainer, {}), project or {}
    settings = replace(settings, **{k: v for k, v in {**per_trainer, **project}.items() if k != "extra"})
    settings.extra = {**per_trainer.get("extra", {}), **project.get("extra", {})}
    settings = replace(settings, **VARIANTS[variant])
    if scenario:
        spec = SCENARIOS[trainer][scenario]
        settings = replace(settings, **spec.settings, reference_fixture=spec.reference_fixture)
        settings.extra.update(spec.extra)
    if ranks > 1:
        if settings.batch_size % ranks:
            raise ValueError(f"{trainer}: a batch of {settings.batch_size} cannot be split over {ranks} ranks")
        settings = replace(settings, batch_size=settings.batch_size // ranks, ranks=ranks)
        settings.extra.update(DATA_PARALLEL_SETTINGS.get(trainer, {}))
    return settings


PLAIN = "plain"  # the scenario filter's name for the cases with the trainer's defaults


def scenario_names() -> list:
    return [PLAIN] + sorted({name for per in SCENARIOS.values() for name in per})


def build_matrix(target, trainers=(), fixtures=(), variants=(), steps=3, ranks=1, project=None, models=(),
                 scenarios=()):
    """The cases for one loaded target; empty filters mean everything the target offers.

    Each trainer's plain cases (its defaults, every fixture or model folder and variant; with no
    variant, fixture or scenario named, fp32 everywhere and ``RELEASE_VARIANTS`` on ``VARIANT_FIXTURE``,
    after the ``DATA_PARALLEL_CASE`` of a target that trains data-parallel) come first,
    then its scenarios in fp32 on their own fixture; ``scenarios`` picks by name (``PLAIN`` for
    the plain cases).  ``project``: per-trainer settings (``case_settings``); ``models``:
    ``(name, folder)`` of user model folders, cases beside the fixtures (instead of them when no
    fixture is named).  Raises ``ValueError`` when a case's batch cannot be split over ``ranks``."""
    trainers = trainers or tuple(t for t in TRAINERS if t in target.trainers())
    sources = [(f, "") for f in (fixtures or (() if models else FIXTURES))] + [(n, str(p)) for n, p in models]
    # Named variants run on every source; by default fp32 does, and, when no fixture or scenario is
    # named either (the default matrix), each release variant on one fixture.
    default_matrix = not variants and not fixtures and not scenarios
    plain = [(f, path, v) for f, path in sources for v in variants or DEFAULT_VARIANTS]
    if default_matrix:
        plain += [(f, path, v) for f, path in sources if f == VARIANT_FIXTURE and not path for v in RELEASE_VARIANTS]
    variants = variants or DEFAULT_VARIANTS
    project = project or {}
    cases = []
    dp_trainer, dp_ranks = DATA_PARALLEL_CASE
    if (default_matrix and ranks == 1 and getattr(target, "data_parallel", False) and dp_trainer in trainers
            and any(f == VARIANT_FIXTURE and not p for f, p in sources)):
        # First, so that its processes start while the pool's workers import.
        cases.append(Case(target.name, dp_trainer, VARIANT_FIXTURE, "fp32",
                          case_settings(dp_trainer, "fp32", steps, dp_ranks, project.get(dp_trainer)), target.spec))
    for t in trainers:
        if not scenarios or PLAIN in scenarios:
            cases += [Case(target.name, t, f, v, case_settings(t, v, steps, ranks, project.get(t)), target.spec, path)
                      for f, path, v in plain]
        if "fp32" not in variants or (models and not fixtures):
            continue
        for name, spec in SCENARIOS[t].items():
            if (fixtures and spec.fixture not in fixtures) or (scenarios and name not in scenarios):
                continue
            if ranks > 1 and spec.companion:
                continue  # a split of a split: the plain cases carry the data-parallel check
            cases.append(Case(target.name, t, spec.fixture, "fp32",
                              case_settings(t, "fp32", steps, ranks, project.get(t), name), target.spec,
                              scenario=name))
    return cases
