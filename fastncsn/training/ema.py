"""The exponential moving average of a model's weights (NCSNv2 technique)."""
from __future__ import annotations

import torch

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of a model's floating-point state (NCSNv2 technique).

    ``shadow <- rate * shadow + (1 - rate) * weights`` after every optimizer step, for the
    floating-point entries of ``model.state_dict()`` (the others, e.g. counters, are copied),
    with one ``_foreach`` launch per operation for all tensors.  ``shadow`` is a state dict of
    the model (name -> tensor); checkpoints store it as ``ema_state_dict``.
    """

    def __init__(self, model: torch.nn.Module, rate: float = 0.999):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"ema_rate: expected a value in (0, 1), got {rate!r}")
        self.rate = rate
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        sd = model.state_dict()
        floating = [k for k, v in sd.items() if v.is_floating_point()]
        if floating:
            shadow = [self.shadow[k] for k in floating]
            torch._foreach_mul_(shadow, self.rate)
            torch._foreach_add_(shadow, [sd[k].detach() for k in floating], alpha=1.0 - self.rate)
        for k, v in sd.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, sd: dict) -> None:
        for k, v in sd.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)
