"""Observe, rather than assume, the mode a model is in when it is used.

``ModeProbe`` records every forward pass of one model: whether the model (and
every submodule) was in training mode, whether the pass ran inside a function
being differentiated (``mx.value_and_grad`` / ``mx.grad``, which
``nn.value_and_grad`` and compiled steps go through), and whether it was a
cached, incremental pass (generation).  It patches MLX's transforms and the
model's class for the duration of a ``with`` block and touches nothing of the
trainer under test, so it works on any implementation.
"""

import threading
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

_state = threading.local()


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _marking(transform):
    def patched(fun, *args, **kwargs):
        def marked(*a, **kw):
            _state.depth = _depth() + 1
            try:
                return fun(*a, **kw)
            finally:
                _state.depth -= 1

        return transform(marked, *args, **kwargs)

    patched.__wrapped__ = transform
    return patched


@dataclass(frozen=True)
class ForwardCall:
    differentiated: bool  # inside a function being differentiated
    training: bool  # the model's own flag
    all_training: bool  # every submodule's flag
    any_training: bool
    cached: bool  # called with a cache: generation


class ModeProbe:
    def __init__(self, model):
        self.model = model
        self.calls: list[ForwardCall] = []

    def __enter__(self):
        model, calls = self.model, self.calls
        self._class = type(model)
        original_call = self._class.__call__

        def probed_call(module, *args, **kwargs):
            if module is not model:  # a copy made while probing (a reference model) is not the policy
                return original_call(module, *args, **kwargs)
            flags = [m.training for _, m in module.named_modules()]
            cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
            calls.append(ForwardCall(_depth() > 0, module.training, all(flags), any(flags), cache is not None))
            return original_call(module, *args, **kwargs)

        model.__class__ = type(self._class.__name__, (self._class,), {"__call__": probed_call})
        self._saved = (mx.value_and_grad, mx.grad)
        mx.value_and_grad = _marking(mx.value_and_grad)
        mx.grad = _marking(mx.grad)
        return self

    def __exit__(self, *exc):
        mx.value_and_grad, mx.grad = self._saved
        self.model.__class__ = self._class
        return False

    @property
    def differentiated(self):
        return [c for c in self.calls if c.differentiated]

    @property
    def generation(self):
        return [c for c in self.calls if c.cached]

    def gradient_mode_violations(self):
        """Differentiated forward passes during which some module was in inference mode."""
        return [c for c in self.differentiated if not c.all_training]


class ForcedMode:
    """Force the model's mode inside every differentiated function (a triage toggle).

    While active, each function passed to ``mx.value_and_grad`` / ``mx.grad``
    runs with the model in training mode (``training=True``) or inference
    mode (``training=False``); the previous mode is restored after it.
    """

    def __init__(self, model, training: bool):
        self.model, self.training = model, training

    def _forcing(self, transform):
        model, training = self.model, self.training

        def patched(fun, *args, **kwargs):
            def forced(*a, **kw):
                # nn.Module.train itself: a trainer may have replaced the model's own method.
                was = model.training
                nn.Module.train(model, training)
                try:
                    return fun(*a, **kw)
                finally:
                    nn.Module.train(model, was)

            return transform(forced, *args, **kwargs)

        return patched

    def __enter__(self):
        self._saved = (mx.value_and_grad, mx.grad)
        mx.value_and_grad = self._forcing(mx.value_and_grad)
        mx.grad = self._forcing(mx.grad)
        return self

    def __exit__(self, *exc):
        mx.value_and_grad, mx.grad = self._saved
        return False
