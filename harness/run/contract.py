"""The target contract where the harness reads it: what ``step()`` must return.

A step returns a dict with a numeric ``loss`` and any metrics; one-element
arrays count as numbers.  A broken record is the case's ``contract`` error,
naming the method, the step, what came back and what was expected, and the
steps taken before it are kept.
"""

import reprlib

import mlx.core as mx
import numpy as np

EXPECTED = "a dict such as {'loss': 0.69, <metric>: <number>, ...}"

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 40, 40, 4, 4


class ContractError(TypeError):
    """A target returned something the target interface does not allow."""


def shown(value) -> str:
    """``value``'s type and a short repr, for a message."""
    return f"{type(value).__name__} {_short.repr(value)}"


def _plain(method: str, k: int, key: str, value):
    if isinstance(value, (mx.array, np.ndarray, np.generic)):
        if value.size != 1:
            raise ContractError(f"{method}: step {k} returned {key!r} as an array of shape {tuple(value.shape)}; "
                                "expected a number (a one-element array at most)")
        return value.item()
    return value


def step_record(record, k: int, method: str = "step()") -> dict:
    """The plain record of step ``k`` (``{"step": k, "loss": float, ...}``), or ``ContractError``."""
    if not isinstance(record, dict):
        raise ContractError(f"{method}: step {k} returned {shown(record)}; expected {EXPECTED}")
    if "loss" not in record:
        keys = ", ".join(map(repr, record)) or "none"
        raise ContractError(f"{method}: step {k} returned a dict without 'loss' (keys: {keys}); expected {EXPECTED}")
    out = {"step": k, **{key: _plain(method, k, key, v) for key, v in record.items() if key != "step"}}
    loss = out["loss"]
    if isinstance(loss, bool) or not isinstance(loss, (int, float)):
        raise ContractError(f"{method}: step {k} returned loss {shown(record['loss'])}; expected a number "
                            "(a float, an int or a one-element array)")
    return out
