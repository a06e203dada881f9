"""Toy lab: 2-D distributions with exact perturbed scores, and a small score MLP.

* :class:`GaussianMixture` -- isotropic Gaussian mixtures; ``score(x, sigma)``
  is the exact score of the mixture convolved with ``N(0, sigma^2 I)``.
* :func:`seed003_mixture` -- ``1/5 N((-5,-5), I) + 4/5 N((5,5), I)`` (seed 003, Fig. 2-3).
* :func:`seed004_wide_peaked` -- centres (-5,-5), (5,5), stds 3 and 0.5, weights
  0.2 / 0.8 (seed 004, Figure 10 and Table 1).
* :class:`CircleManifold` -- the uniform distribution on a circle (seed 004, Fig. 1).
* :class:`ToyScoreNet` -- a noise-conditional MLP following the score-model contract.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .models import register

__all__ = ["GaussianMixture", "CircleManifold", "seed003_mixture", "seed004_wide_peaked", "ToyScoreNet",
           "train_toy", "mode_weight"]


def _sigma_column(sigma, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma: expected a number or a tensor of shape [{x.shape[0]}], got {tuple(s.shape)}")
    if bool((s < 0).any()):
        raise ValueError("sigma: expected noise levels >= 0")
    return s[:, None]


class GaussianMixture:
    """``sum_k w_k N(mu_k, std_k^2 I)`` in ``D`` dimensions.

    Args:
        means: ``[K, D]``; stds: ``[K]`` (> 0, or 0 with sigma > 0 for point masses);
        weights: ``[K]``, normalised here.
    """

    def __init__(self, means, stds, weights):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        w = torch.as_tensor(weights, dtype=torch.float64)
        if self.means.dim() != 2:
            raise ValueError(f"means: expected [K, D], got {tuple(self.means.shape)}")
        k = self.means.shape[0]
        if self.stds.shape != (k,) or bool((self.stds < 0).any()):
            raise ValueError(f"stds: expected [{k}] non-negative values, got {self.stds.tolist()}")
        if w.shape != (k,) or bool((w <= 0).any()):
            raise ValueError(f"weights: expected [{k}] positive values, got {w.tolist()}")
        self.weights = w / w.sum()
        self.dim = self.means.shape[1]

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[n, D]`` float32 samples."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[comp] + self.stds[comp, None] * z).float()

    def _log_terms(self, x: torch.Tensor, sigma):
        xd = x.double()
        s = _sigma_column(sigma, xd)                                   # [N, 1]
        var = self.stds[None, :].to(xd.device) ** 2 + s ** 2            # [N, K]
        diff = xd[:, None, :] - self.means[None].to(xd.device)         # [N, K, D]
        logp = (torch.log(self.weights.to(xd.device))[None] - 0.5 * self.dim * torch.log(2 * math.pi * var)
                - 0.5 * diff.square().sum(-1) / var)
        return logp, diff, var

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """``log q_sigma(x)`` ``[N]`` (float64)."""
        logp, _, _ = self._log_terms(x, sigma)
        return torch.logsumexp(logp, dim=1)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact ``grad_x log q_sigma(x)`` ``[N, D]`` in ``x``'s dtype (responsibilities via logsumexp)."""
        logp, diff, var = self._log_terms(x, sigma)
        r = torch.softmax(logp, dim=1)                                  # [N, K]
        return (-(r / var)[:, :, None] * diff).sum(1).to(x.dtype)

    def score_fn(self, sigmas):
        """A ``score_fn(x, level_index)`` for the samplers, with levels from ``sigmas``."""
        sig = torch.as_tensor(sigmas, dtype=torch.float64)
        return lambda x, idx: self.score(x, sig.to(x.device)[idx])


class CircleManifold:
    """Uniform distribution on a circle of ``radius`` around ``center`` (a 1-D manifold in 2-D).

    The perturbed density ``q_sigma(x) = (1/2pi) int N(x; c + r(cos t, sin t), sigma^2 I) dt``
    has no closed form; ``score`` integrates over ``num_angles`` equally spaced
    angles (the trapezoid rule, spectrally accurate for this periodic integrand
    once ``r / num_angles << sigma``), i.e. the exact score of an equal-weight
    mixture of point masses on the circle smoothed by ``sigma``.  Needs sigma > 0.
    """

    def __init__(self, radius: float = 1.0, center=(0.0, 0.0), num_angles: int = 1024):
        if radius <= 0:
            raise ValueError(f"radius: expected > 0, got {radius!r}")
        self.radius = float(radius)
        self.center = torch.as_tensor(center, dtype=torch.float64)
        t = torch.arange(num_angles, dtype=torch.float64) * (2 * math.pi / num_angles)
        pts = self.center + self.radius * torch.stack([t.cos(), t.sin()], dim=1)
        self._mix = GaussianMixture(pts, torch.zeros(num_angles), torch.ones(num_angles))
        self.dim = 2

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        t = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
        return (self.center + self.radius * torch.stack([t.cos(), t.sin()], dim=1)).float()

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = _sigma_column(sigma, x.double())
        if bool((s <= 0).any()):
            raise ValueError("sigma: the circle's score needs sigma > 0 (the data density is singular)")
        return self._mix.score(x, sigma)

    def score_fn(self, sigmas):
        sig = torch.as_tensor(sigmas, dtype=torch.float64)
        return lambda x, idx: self.score(x, sig.to(x.device)[idx])


def seed003_mixture() -> GaussianMixture:
    """``1/5 N((-5,-5), I) + 4/5 N((5,5), I)`` (seed 003, section 3.2)."""
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])


def seed004_wide_peaked() -> GaussianMixture:
    """Wide light mode at (-5,-5) (std 3, weight 0.2), peaked heavy mode at (5,5) (std 0.5, weight 0.8)."""
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [3.0, 0.5], [0.2, 0.8])


def mode_weight(samples: torch.Tensor) -> float:
    """Fraction of 2-D samples nearer to (5, 5) than to (-5, -5) (i.e. ``x1 + x2 > 0``)."""
    return float((samples[:, 0] + samples[:, 1] > 0).double().mean())


@register
class ToyScoreNet(nn.Module):
    """Noise-conditional MLP score network for low-dimensional data.

    ``s(x, i) = MLP([x, e_i]) / sigma_i`` with a learned level embedding
    ``e_i``; dividing by ``sigma_i`` builds in the ``||s|| ~ 1/sigma`` law (seed
    004, Figure 5) so one network covers every level.

    Args:
        dim: data dimension D.  hidden: width.  num_levels: L.
        sigmas: the ladder ``[L]`` (default geometric 10 -> 0.1, seed 003's toy setting).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, num_levels: int = 10,
                 sigmas: Optional[Sequence[float]] = None, embed_dim: int = 16):
        super().__init__()
        from .schedules import get_sigmas, validate_sigmas
        s = get_sigmas("geometric", 10.0, 0.1, num_levels) if sigmas is None else \
            validate_sigmas(torch.as_tensor(sigmas, dtype=torch.float32), "sigmas").float()
        if s.numel() != num_levels:
            raise ValueError(f"sigmas: expected {num_levels} levels (num_levels), got {s.numel()}")
        self.register_buffer("sigmas", s.clone())
        self.embed = nn.Embedding(num_levels, embed_dim)
        self.net = nn.Sequential(nn.Linear(dim + embed_dim, hidden), nn.Softplus(),
                                 nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, dim))
        self.data_shape = (dim,)
        self.config = dict(dim=dim, hidden=hidden, num_levels=num_levels, sigmas=[float(v) for v in s],
                           embed_dim=embed_dim)
        self.sampling_defaults = dict(eps=0.1, steps_per_level=100, step_convention="paper", init="uniform", init_range=(-8.0, 8.0))

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.data_shape[0]:
            raise ValueError(f"x: expected shape [N, {self.data_shape[0]}], got {tuple(x.shape)}")
        h = self.net(torch.cat([x, self.embed(level_index)], dim=1))
        return h / self.sigmas[level_index][:, None]


def train_toy(model: ToyScoreNet, dist, steps: int = 3000, batch_size: int = 256, lr: float = 1e-3,
              generator: Optional[torch.Generator] = None, log_every: int = 0) -> list:
    """Train ``model`` on samples of ``dist`` with DSM (``fastncsn.losses.dsm_loss``); returns the losses."""
    from .losses import dsm_loss
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for it in range(steps):
        x = dist.sample(batch_size, generator=generator)
        out = dsm_loss(model, x, model.sigmas, generator=generator)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
        if log_every and (it + 1) % log_every == 0:
            print(f"step {it + 1}: loss {losses[-1]:.4f}")
    return losses
