"""Running a target for the conformance probes: a session (one fresh model, the target's run
on it and the steps taken so far), the probes' settings, and the trace of a whole run."""

from dataclasses import fields, replace

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ...fixtures import load_fixture
from ...fixtures.datasets import load_dataset
from ..model import DATASETS, Settings, case_settings

SETTINGS_FIELDS = {f.name for f in fields(Settings)}


def _settings(trainer, steps, **changes):
    settings = case_settings(trainer, "fp32", steps)
    extra = dict(settings.extra)
    extra.update(changes.pop("extra", {}))
    return replace(settings, extra=extra, **changes)


def _with(settings, name, value):
    if name in SETTINGS_FIELDS:
        return replace(settings, **{name: value})
    return replace(settings, extra={**settings.extra, name: value})


def _perturb(model, seed=1234, scale=0.05):
    """Move every weight by ``scale`` of its own spread, deterministically (numpy's generator)."""
    rng = np.random.default_rng(seed)
    new = []
    for key, value in tree_flatten(model.parameters()):
        v = np.array(value.astype(mx.float32))
        new.append((key, mx.array(v + scale * (v.std() or 1.0) * rng.standard_normal(v.shape)).astype(value.dtype)))
    model.load_weights(new)


class Session:
    """One fresh model, the target's run on it, and the steps taken so far."""

    def __init__(self, target, trainer, fixture, settings, rows=None, perturb=False):
        self.model, tokenizer = load_fixture(fixture)
        if rows is None:
            rows = load_dataset(DATASETS[trainer], tokenizer=tokenizer, max_length=settings.max_length)
        self.rows = rows
        self.run = target.prepare(trainer, self.model, tokenizer, rows, settings)
        if perturb:
            _perturb(self.model)
        self.initial = dict(tree_flatten(self.model.parameters()))
        self.records = []

    def step(self):
        record = self.run.step()
        self.records.append({k: (v.item() if isinstance(v, mx.array) else v) for k, v in record.items()})
        return self.records[-1]

    def losses(self):
        return [r["loss"] for r in self.records]

    def weights(self):
        return dict(tree_flatten(self.model.parameters()))

    def moved(self):
        now = self.weights()
        return any(not bool(mx.array_equal(v, now[k])) for k, v in self.initial.items() if k in now)


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool(mx.array_equal(a[k], b[k])) for k in a)


def _close(session):
    try:
        session.run.close()
    except Exception:  # noqa: BLE001 - already ended
        pass


def _trace(target, trainer, fixture, settings):
    """Losses, final weights, and whether the weights had moved before the last step's loss was taken."""
    session = Session(target, trainer, fixture, settings)
    moved_early = False
    try:
        for k in range(settings.steps):
            session.step()
            if k == settings.steps - 2:
                moved_early = session.moved()
    finally:
        _close(session)
    return session.losses(), session.weights(), moved_early, session.records
