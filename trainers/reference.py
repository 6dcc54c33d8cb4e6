"""Model setup for the reference trainers: LoRA adapters and the frozen reference policy."""

import copy
from contextlib import contextmanager


def apply_lora(model, config):
    """Freeze the model and add mlx-lm LoRA adapters (B initialised to zero, so the adapted
    model starts equal to the base); ``config`` a ``TrainConfig``."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    num_layers = len(model.layers) if config.lora_layers < 0 else config.lora_layers
    lora = {"rank": config.lora_rank, "scale": config.lora_scale, "dropout": 0.0}
    linear_to_lora_layers(model, num_layers, lora)
    return model


def _lora_layers(model):
    return [m for _, m in model.named_modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]


class Reference:
    """The frozen reference policy.

    With LoRA it is the policy itself with every adapter's scale set to zero
    (the base model, no second copy of the weights).  Otherwise it is a copy
    of the policy taken before training, or the model the caller passes.
    """

    def __init__(self, policy, model=None, lora: bool = False):
        self.policy = policy
        self.lora = lora
        if model is None and not lora:
            model = copy.deepcopy(policy)
        if model is not None:
            model.freeze()
            model.eval()
        self.model = model

    @contextmanager
    def active(self):
        if self.model is not None:
            self.model.eval()
            yield self.model
            return
        layers = _lora_layers(self.policy)
        scales = [m.scale for m in layers]
        was_training = self.policy.training
        for m in layers:
            m.scale = 0.0
        self.policy.eval()
        try:
            yield self.policy
        finally:
            for m, s in zip(layers, scales):
                m.scale = s
            self.policy.train(was_training)
