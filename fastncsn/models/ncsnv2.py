"""NCSNv2-style score network (seed 000 section 5; Song & Ermon 2020).

One *unconditional* RefineNet with instance norm++ (``InstanceNorm2dPlus``:
parameters ``alpha``, ``gamma``, ``beta``), no norms inside the refine blocks,
max pooling in the chained residual pooling, and the output divided by the
noise level: ``s(x, i) = net(x) / sigma_i``.  Parameter names equal those of the
reference NCSNv2 code, so its checkpoints load (``fastncsn.checkpoint``).

Reference CIFAR-10 setting (``NCSNV2_CIFAR10``): sigma_1 = 50, L = 232
(geometric to 0.01), T = 5 steps per level, step 6.2e-6 (reference step
convention), EMA 0.999, final denoising step.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch

from ..nn import InstanceNorm2dPlus
from .registry import register
from .refinenet import RefineNetTrunk, check_sigmas, default_sigmas

#: the reference NCSNv2 CIFAR-10 configuration (model and sampling)
NCSNV2_CIFAR10 = dict(
    model=dict(image_size=32, channels=3, ngf=128, num_levels=232, sigma_1=50.0, sigma_L=0.01),
    sampling=dict(eps=6.2e-6, steps_per_level=5, step_convention="reference", denoise=True, init="uniform"),
    ema_rate=0.999,
)


@register
class NCSNv2(RefineNetTrunk):
    """NCSNv2 score network ``s(x, i) = RefineNet(x) / sigmas[i]``.

    Args as :class:`~fastncsn.models.CondRefineNetDilated`, plus ``sigma_1`` and
    ``sigma_L`` for the default geometric ladder, and ``rescaled`` (inputs
    already in [-1, 1]).
    """

    def __init__(self, image_size: int = 32, channels: int = 3, ngf: int = 128, num_levels: int = 232,
                 sigmas: Optional[Sequence[float]] = None, sigma_1: float = 50.0, sigma_L: float = 0.01,
                 logit_transform: bool = False, rescaled: bool = False, backend: str = "auto"):
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels: expected a positive int, got {num_levels!r}")
        norm = partial(InstanceNorm2dPlus, backend=backend)
        super().__init__(image_size, channels, ngf, norm, None, "max", logit_transform=logit_transform,
                         rescaled=rescaled)
        self.num_levels = num_levels
        s = default_sigmas(num_levels, sigma_1, sigma_L) if sigmas is None else check_sigmas(sigmas, num_levels)
        self.register_buffer("sigmas", s)
        self.config = dict(image_size=image_size, channels=channels, ngf=ngf, num_levels=num_levels,
                           sigmas=[float(v) for v in s], logit_transform=logit_transform, rescaled=rescaled)
        self.sampling_defaults = dict(NCSNV2_CIFAR10["sampling"])

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        self.check_input(x, level_index)
        out = self.trunk(x, level_index)
        used = self.sigmas[level_index].view(-1, *([1] * (x.dim() - 1)))
        return out / used
