"""NCSN v1 score network: ``CondRefineNetDilated`` (seed 003 section 4.2, appendix A).

A RefineNet with dilated convolutions and conditional instance norm++ in every
block.  Parameter names equal those of the reference implementation (without
DataParallel's ``module.`` prefix), e.g. ``res2.0.conv2.conv.weight`` or
``refine1.adapt_convs.0.1_1_norm.embed.weight``.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
from torch import nn

from ..nn import ConditionalInstanceNorm2dPlus, RefineBlock, ResidualBlock, set_backend
from .registry import register


def default_sigmas(num_levels: int, sigma_1: float = 1.0, sigma_L: float = 0.01) -> torch.Tensor:
    """NCSN's geometric ladder, computed as the reference does (float64, then float32)."""
    from ..schedules import get_sigmas
    return get_sigmas("geometric", sigma_1, sigma_L, num_levels)


def check_sigmas(sigmas, num_levels: int) -> torch.Tensor:
    from ..schedules import validate_sigmas
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).detach().clone()
    validate_sigmas(sigmas, "sigmas")
    if sigmas.numel() != num_levels:
        raise ValueError(f"sigmas: expected {num_levels} levels (num_levels), got {sigmas.numel()}")
    return sigmas


class RefineNetTrunk(nn.Module):
    """The RefineNet trunk shared by NCSN v1 and NCSNv2.

    ``norm`` builds the norms of the residual blocks and the final normaliser;
    ``block_norm`` those inside the refine blocks (``None`` for NCSNv2); ``pool``
    is the chained-residual-pooling kind ('avg' in v1, 'max' in v2).
    """

    def __init__(self, image_size: int, channels: int, ngf: int, norm, block_norm, pool: str,
                 logit_transform: bool = False, rescaled: bool = False):
        super().__init__()
        if not isinstance(image_size, int) or image_size < 8 or image_size % 2:
            raise ValueError(f"image_size: expected an even int >= 8, got {image_size!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: expected a positive int, got {channels!r}")
        if not isinstance(ngf, int) or ngf < 1:
            raise ValueError(f"ngf: expected a positive int, got {ngf!r}")
        self.image_size, self.channels, self.ngf = image_size, channels, ngf
        self.logit_transform, self.rescaled = logit_transform, rescaled
        self.data_shape = (channels, image_size, image_size)
        n2 = 2 * ngf
        self.begin_conv = nn.Conv2d(channels, ngf, 3, stride=1, padding=1)
        self.normalizer = norm(ngf)
        self.end_conv = nn.Conv2d(ngf, channels, 3, stride=1, padding=1)
        self.res1 = nn.ModuleList([ResidualBlock(ngf, ngf, norm), ResidualBlock(ngf, ngf, norm)])
        self.res2 = nn.ModuleList([ResidualBlock(ngf, n2, norm, resample="down"), ResidualBlock(n2, n2, norm)])
        self.res3 = nn.ModuleList([ResidualBlock(n2, n2, norm, resample="down", dilation=2),
                                   ResidualBlock(n2, n2, norm, dilation=2)])
        self.res4 = nn.ModuleList([ResidualBlock(n2, n2, norm, resample="down", dilation=4,
                                                 adjust_padding=image_size == 28),
                                   ResidualBlock(n2, n2, norm, dilation=4)])
        self.refine1 = RefineBlock([n2], n2, block_norm, start=True, pool=pool)
        self.refine2 = RefineBlock([n2, n2], n2, block_norm, pool=pool)
        self.refine3 = RefineBlock([n2, n2], ngf, block_norm, pool=pool)
        self.refine4 = RefineBlock([ngf, ngf], ngf, block_norm, end=True, pool=pool)

    def check_input(self, x: torch.Tensor, level_index: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.data_shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape [N, {self.channels}, {self.image_size}, {self.image_size}] "
                             f"(channels={self.channels}, image_size={self.image_size}), got {got}")
        if not isinstance(level_index, torch.Tensor) or level_index.shape != (x.shape[0],) \
                or level_index.dtype != torch.long:
            raise ValueError(f"level_index: expected an int64 tensor of shape [{x.shape[0]}]")
        want = self.begin_conv.weight.dtype
        if x.dtype != want and not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
            raise ValueError(f"x: expected {want} (the network's parameter dtype), got {x.dtype}; cast the input "
                             f"(x.to({want})) or the network (model.to({x.dtype}))")

    def trunk(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x if (self.logit_transform or self.rescaled) else 2 * x - 1.0
        h = self.begin_conv(h)
        layers = []
        for stage in (self.res1, self.res2, self.res3, self.res4):
            for blk in stage:
                h = blk(h, y)
            layers.append(h)
        layer1, layer2, layer3, layer4 = layers
        ref1 = self.refine1([layer4], y, layer4.shape[2:])
        ref2 = self.refine2([layer3, ref1], y, layer3.shape[2:])
        ref3 = self.refine3([layer2, ref2], y, layer2.shape[2:])
        out = self.refine4([layer1, ref3], y, layer1.shape[2:])
        out = self.normalizer(out, y, activation="elu")
        return self.end_conv(out)

    def set_backend(self, backend: str) -> "RefineNetTrunk":
        """Choose the fused-op backend of every norm ("auto" | "triton" | "cuda" | "torch").

        A sampling/training option, not state: ``config`` (what ``save`` writes) does not record it."""
        set_backend(self, backend)
        return self


@register
class CondRefineNetDilated(RefineNetTrunk):
    """NCSN v1 noise-conditional score network s(x, i) ~ grad log q_{sigma_i}(x).

    Args:
        image_size: input height = width (28 for MNIST-like data, 32 for CIFAR-10).
        channels: image channels (1 or 3).
        ngf: base width (64 for MNIST, 128 for CIFAR-10/CelebA in the reference).
        num_levels: number of noise levels L (``num_classes`` in the reference).
        sigmas: the noise ladder ``[L]`` (default: geometric 1 -> 0.01, NCSN's).
        logit_transform: inputs are logits (no ``2x - 1`` rescaling), as in the reference option.
        backend: fused-op backend of the norms ("auto" | "triton" | "cuda" | "torch"); not part of
            ``config`` (a run option: ``set_backend`` changes it, ``save`` does not record it).

    ``forward(x, level_index)``: ``x`` ``[N, channels, image_size, image_size]``
    with pixels in [0, 1] (as in the reference), ``level_index`` ``[N]`` int64;
    returns the score, same shape as ``x``.
    """

    def __init__(self, image_size: int = 28, channels: int = 1, ngf: int = 64, num_levels: int = 10,
                 sigmas: Optional[Sequence[float]] = None, logit_transform: bool = False,
                 backend: str = "auto"):
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels: expected a positive int, got {num_levels!r}")
        norm = partial(ConditionalInstanceNorm2dPlus, num_levels=num_levels, backend=backend)
        super().__init__(image_size, channels, ngf, norm, norm, "avg", logit_transform=logit_transform)
        self.num_levels = num_levels
        s = default_sigmas(num_levels) if sigmas is None else check_sigmas(sigmas, num_levels)
        # not persistent: the reference v1 state dict has no such entry; the ladder lives in ``config``
        self.register_buffer("sigmas", s, persistent=False)
        self.config = dict(image_size=image_size, channels=channels, ngf=ngf, num_levels=num_levels,
                           sigmas=[float(v) for v in s], logit_transform=logit_transform)

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        self.check_input(x, level_index)
        return self.trunk(x, level_index)
