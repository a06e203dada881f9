"""Instance normalisation++ layers (NCSN appendix A; NCSNv2 section 5 of seed 000).

Both layers call :func:`fastncsn.ops.cond_instance_norm_plus`, so the fused
Triton/CUDA kernels are used when the ``backend`` attribute allows it, and an
activation that follows the norm in the network can be fused into it.  The glue around
a norm can be fused too (``fastncsn.nn.set_fused_glue``): ``forward(..., bias=)`` folds the
bias of the conv that produced ``x``, ``forward_add`` adds a residual and returns the sum.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops import add_cond_instance_norm_plus, cond_instance_norm_plus


class ConditionalInstanceNorm2dPlus(nn.Module):
    """CIN++ with one row ``gamma | alpha | beta`` of ``embed.weight`` per noise level.

    Shapes: ``x`` ``[N, C, H, W]``, ``y`` (level index) ``[N]`` int64.  The
    parameter is named ``embed.weight`` (``[num_levels, 3C]``, or ``[L, 2C]``
    with ``bias=False``) as in the reference NCSN code, initialised with
    gamma, alpha ~ N(1, 0.02) and beta = 0.
    """

    def __init__(self, num_features: int, num_levels: int, bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.num_features = num_features
        self.bias = bias
        self.backend = backend
        self.embed = nn.Embedding(num_levels, (3 if bias else 2) * num_features)
        with torch.no_grad():
            self.embed.weight[:, :2 * num_features].normal_(1.0, 0.02)
            self.embed.weight[:, 2 * num_features:].zero_()

    def forward(self, x: torch.Tensor, y: torch.Tensor, activation: Optional[str] = None,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """CIN++(x [+ bias]); ``bias`` ``[C]`` is a folded conv bias."""
        return cond_instance_norm_plus(x, y, self.embed.weight, activation=activation, backend=self.backend,
                                       bias=bias)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor, y: torch.Tensor,
                    activation: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, CIN++(s))`` with ``s = x + residual`` (the residual add fused into the norm)."""
        return add_cond_instance_norm_plus(x, residual, y, self.embed.weight, activation=activation,
                                           backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_levels={self.embed.num_embeddings}, bias={self.bias}"


class InstanceNorm2dPlus(nn.Module):
    """Unconditional instance norm++ (NCSNv2): parameters ``alpha``, ``gamma``, ``beta`` [C].

    Same formula as :class:`ConditionalInstanceNorm2dPlus` with a single level;
    ``y`` is accepted and ignored so blocks can call every norm the same way.
    Initialisation as NCSNv2: alpha, gamma ~ N(1, 0.02), beta = 0.
    """

    def __init__(self, num_features: int, bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.num_features = num_features
        self.bias = bias
        self.backend = backend
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        if bias:
            self.beta = nn.Parameter(torch.zeros(num_features))

    def _weight_and_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.gamma, self.alpha] + ([self.beta] if self.bias else [])
        return torch.cat(rows).unsqueeze(0), torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                activation: Optional[str] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Instance norm++ of ``x [+ bias]``; ``bias`` ``[C]`` is a folded conv bias."""
        weight, level = self._weight_and_level(x)
        return cond_instance_norm_plus(x, level, weight, activation=activation, backend=self.backend, bias=bias)

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor, y: Optional[torch.Tensor] = None,
                    activation: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, norm(s))`` with ``s = x + residual`` (the residual add fused into the norm)."""
        weight, level = self._weight_and_level(x)
        return add_cond_instance_norm_plus(x, residual, level, weight, activation=activation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_features}, bias={self.bias}"
