"""Toy lab: 2-D distributions with exact perturbed scores, and a small score MLP.

* :class:`GaussianMixture` -- isotropic Gaussian mixtures; ``score(x, sigma)``
  is the exact score of the mixture convolved with ``N(0, sigma^2 I)``.
* :func:`seed003_mixture` -- ``1/5 N((-5,-5), I) + 4/5 N((5,5), I)`` (seed 003, Fig. 2-3).
* :func:`seed004_wide_peaked` -- centres (-5,-5), (5,5), stds 3 and 0.5, weights
  0.2 / 0.8 (seed 004, Figure 10 and Table 1).
* :class:`CircleManifold` -- the uniform distribution on a circle (seed 004, Fig. 1).
* :class:`ToyScoreNet` -- a noise-conditional MLP following the score-model contract.
* :class:`MixtureScoreModel` -- a mixture's exact score behind the same contract.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .models.registry import register

__all__ = ["GaussianMixture", "CircleManifold", "seed003_mixture", "seed004_wide_peaked", "ToyScoreNet",
           "MixtureScoreModel", "TOY_SAMPLING", "train_toy", "mode_weight"]


def _sigma_column(sigma, x: torch.Tensor, check: bool = True, positive: bool = False) -> torch.Tensor:
    """``sigma`` (a number or ``[N]``) as an ``[N, 1]`` column in ``x``'s dtype.

    ``check=False`` skips the value check (a host sync): the samplers' score
    functions validate their ladder once instead of once per step.
    """
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma: expected a number or a tensor of shape [{x.shape[0]}], got {tuple(s.shape)}")
    if check:
        bad = bool((s <= 0).any()) if positive else bool((s < 0).any())
        if bad or not bool(torch.isfinite(s).all()):
            raise ValueError(f"sigma: expected finite noise levels {'> 0' if positive else '>= 0'}")
    return s[:, None]


def _ladder(sigmas) -> torch.Tensor:
    from .schedules import validate_sigmas
    return validate_sigmas(torch.as_tensor(sigmas, dtype=torch.float64), "sigmas").double()


def _mixture_log_terms(x: torch.Tensor, s: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                       log_weights: torch.Tensor):
    """Per-component ``log w_k N(x; mu_k, (std_k^2 + s^2) I)`` ``[N, K]`` (float64), with ``x - mu_k`` and the variances."""
    var = stds[None, :] ** 2 + s ** 2                                  # [N, K]
    diff = x[:, None, :] - means[None]                                 # [N, K, D]
    logp = log_weights[None] - 0.5 * means.shape[1] * torch.log(2 * math.pi * var) - 0.5 * diff.square().sum(-1) / var
    return logp, diff, var


def _mixture_score(x: torch.Tensor, s: torch.Tensor, means, stds, log_weights) -> torch.Tensor:
    """``sum_k r_k(x) (mu_k - x) / var_k`` with responsibilities ``r = softmax(logp)`` (stable)."""
    logp, diff, var = _mixture_log_terms(x, s, means, stds, log_weights)
    r = torch.softmax(logp, dim=1)
    return (-(r / var)[:, :, None] * diff).sum(1)


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

    def _params(self, device):
        return self.means.to(device), self.stds.to(device), self.weights.log().to(device)

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape [N, {self.dim}], got {tuple(x.shape)}")

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """``log q_sigma(x)`` ``[N]`` (float64) of the mixture convolved with ``N(0, sigma^2 I)``;
        ``sigma`` a number or ``[N]``."""
        self._check_x(x)
        xd = x.double()
        logp, _, _ = _mixture_log_terms(xd, _sigma_column(sigma, xd), *self._params(xd.device))
        return torch.logsumexp(logp, dim=1)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """Exact ``grad_x log q_sigma(x)`` ``[N, D]`` in ``x``'s dtype: ``sum_k r_k (mu_k - x) / (std_k^2 + sigma^2)``,
        the responsibilities ``r_k`` from a softmax of the log terms (stable far from every mode).
        ``sigma`` a number or ``[N]`` (one level per sample)."""
        self._check_x(x)
        xd = x.double()
        return _mixture_score(xd, _sigma_column(sigma, xd), *self._params(xd.device)).to(x.dtype)

    def score_fn(self, sigmas):
        """A ``score_fn(x, level_index)`` for the samplers, with levels from ``sigmas`` ``[L]``
        (validated once here; the returned function does not synchronise with the host)."""
        sig = _ladder(sigmas)
        cache = {}

        def fn(x, idx):
            dev = x.device
            if dev not in cache:
                cache[dev] = (sig.to(dev), *self._params(dev))
            s, means, stds, logw = cache[dev]
            xd = x.double()
            return _mixture_score(xd, _sigma_column(s[idx], xd, check=False), means, stds, logw).to(x.dtype)
        return fn


class CircleManifold:
    """Uniform distribution on a circle of ``radius`` r around ``center`` c (a 1-D manifold in 2-D, seed 004 Fig. 1).

    The perturbed density has a closed form: with ``rho = |x - c|`` and
    ``z = r rho / sigma^2``,

        q_sigma(x) = (1/2pi) int N(x; c + r (cos t, sin t), sigma^2 I) dt
                   = exp(-(rho^2 + r^2) / (2 sigma^2)) I_0(z) / (2 pi sigma^2)

    (``I_0`` the modified Bessel function; the angular integral of
    ``exp(z cos t)`` is ``2 pi I_0(z)``), so the score is exact:

        grad log q_sigma(x) = (x - c) / sigma^2 * (r^2 / sigma^2 * I_1(z) / (z I_0(z)) - 1).

    ``I_1/I_0`` is evaluated with the exponentially scaled ``i1e/i0e``
    (no overflow for large z) and its series ``z/2 - z^3/16`` near the
    centre, where ``I_1(z)/z -> 1/2``.  Needs sigma > 0 (the data density itself
    is singular).
    """

    def __init__(self, radius: float = 1.0, center=(0.0, 0.0)):
        if not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
            raise ValueError(f"radius: expected a finite number > 0, got {radius!r}")
        self.radius = float(radius)
        self.center = torch.as_tensor(center, dtype=torch.float64)
        if self.center.shape != (2,):
            raise ValueError(f"center: expected 2 coordinates, got {tuple(self.center.shape)}")
        self.dim = 2

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[n, 2]`` float32 points uniform on the circle."""
        t = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
        return (self.center + self.radius * torch.stack([t.cos(), t.sin()], dim=1)).float()

    def _polar(self, x: torch.Tensor, sigma, check: bool = True):
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"x: expected shape [N, 2], got {tuple(x.shape)}")
        xd = x.double()
        s2 = _sigma_column(sigma, xd, check=check, positive=True) ** 2     # [N, 1]
        d = xd - self.center.to(xd.device)
        rho = d.norm(dim=1, keepdim=True)
        return d, rho, s2, self.radius * rho / s2

    def log_prob(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``log q_sigma(x)`` ``[N]`` (float64), exact (closed form above)."""
        _, rho, s2, z = self._polar(x, sigma)
        # log(exp(-(rho^2 + r^2)/2s2) I0(z)) = -(rho - r)^2 / 2s2 + log i0e(z)
        return (-(rho - self.radius) ** 2 / (2 * s2) + torch.log(torch.special.i0e(z)) - torch.log(2 * math.pi * s2))[:, 0]

    def score(self, x: torch.Tensor, sigma, _check: bool = True) -> torch.Tensor:
        """Exact ``grad_x log q_sigma(x)`` ``[N, 2]`` in ``x``'s dtype; ``sigma`` > 0, a number or ``[N]``."""
        d, rho, s2, z = self._polar(x, sigma, check=_check)
        small = z < 1e-3
        zs = torch.where(small, torch.ones_like(z), z)
        ratio_over_z = torch.where(small, 0.5 - z * z / 16, torch.special.i1e(zs) / (torch.special.i0e(zs) * zs))
        return (d / s2 * (self.radius ** 2 / s2 * ratio_over_z - 1)).to(x.dtype)

    def score_fn(self, sigmas):
        """A ``score_fn(x, level_index)`` for the samplers (ladder validated once, no host sync per call)."""
        sig = _ladder(sigmas)
        return lambda x, idx: self.score(x, sig.to(x.device)[idx], _check=False)


def seed003_mixture() -> GaussianMixture:
    """``1/5 N((-5,-5), I) + 4/5 N((5,5), I)`` (seed 003, section 3.2)."""
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8])


def seed004_wide_peaked() -> GaussianMixture:
    """Wide light mode at (-5,-5) (std 3, weight 0.2), peaked heavy mode at (5,5) (std 0.5, weight 0.8)."""
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [3.0, 0.5], [0.2, 0.8])


def mode_weight(samples: torch.Tensor) -> float:
    """Fraction of 2-D samples nearer to (5, 5) than to (-5, -5) (i.e. ``x1 + x2 > 0``)."""
    return float((samples[:, 0] + samples[:, 1] > 0).double().mean())


#: sampler defaults of the toy models (``fastncsn.sample`` reads ``model.sampling_defaults``).
#: The snr convention makes the step independent of the ladder: alpha_i = 4 snr^2 sigma_i^2 = 0.25 sigma_i^2.
#: That is 2.5x the reference toy runner's alpha_i = 0.1 sigma_i^2 (lr 0.1 on sigma 20 -> 1); with T = 100 and
#: exact scores of seed003_mixture the smaller step leaves the heavy mode at ~0.77 (the mass stops flowing
#: between the modes before it has moved from the uniform start's 0.5 to 0.8), the larger one gives ~0.79.
#: Initialisation: uniform on [-8, 8]^2, as the reference toy runner.
TOY_SAMPLING = dict(eps=0.25, steps_per_level=100, step_convention="snr", init="uniform", init_range=(-8.0, 8.0),
                    denoise=False)


def _default_toy_sigmas(sigmas, num_levels: int) -> torch.Tensor:
    from .schedules import get_sigmas
    s = get_sigmas("geometric", 10.0, 0.1, num_levels) if sigmas is None else _ladder(sigmas)
    if s.numel() != num_levels:
        raise ValueError(f"sigmas: expected {num_levels} levels (num_levels), got {s.numel()}")
    return s.float()


@register
class MixtureScoreModel(nn.Module):
    """The exact perturbed score of a :class:`GaussianMixture` as a score model (no parameters).

    Follows the score-model contract (``forward(x, level_index)``, ``sigmas``,
    ``config``, ``data_shape``), so :func:`fastncsn.sample`, checkpoints and
    tests can use the exact score wherever a trained network would go.
    ``MixtureScoreModel.from_mixture(seed003_mixture())`` is the Figure 3 setting.

    Args:
        means ``[K, D]``, stds ``[K]``, weights ``[K]``: the mixture.
        sigmas: ladder ``[L]`` (default geometric 10 -> 0.1, L = ``num_levels``).
    """

    def __init__(self, means, stds, weights, sigmas: Optional[Sequence[float]] = None, num_levels: int = 10):
        super().__init__()
        mix = GaussianMixture(means, stds, weights)
        s = _default_toy_sigmas(sigmas, num_levels if sigmas is None else len(sigmas))
        self.register_buffer("sigmas", s.clone())
        self.register_buffer("means", mix.means.clone())
        self.register_buffer("stds", mix.stds.clone())
        self.register_buffer("log_weights", mix.weights.log())
        self.data_shape = (mix.dim,)
        self.config = dict(means=mix.means.tolist(), stds=mix.stds.tolist(), weights=mix.weights.tolist(),
                           sigmas=[float(v) for v in s], num_levels=int(s.numel()))
        self.sampling_defaults = dict(TOY_SAMPLING)

    @classmethod
    def from_mixture(cls, mixture: GaussianMixture, sigmas: Optional[Sequence[float]] = None, num_levels: int = 10):
        return cls(mixture.means, mixture.stds, mixture.weights, sigmas=sigmas, num_levels=num_levels)

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` exact score of level ``level_index`` ``[N]``, in ``x``'s dtype (computed in float64)."""
        if x.dim() != 2 or x.shape[1] != self.data_shape[0]:
            raise ValueError(f"x: expected shape [N, {self.data_shape[0]}], got {tuple(x.shape)}")
        xd = x.double()
        s = self.sigmas.double()[level_index][:, None]
        return _mixture_score(xd, s, self.means, self.stds, self.log_weights).to(x.dtype)


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
        s = _default_toy_sigmas(sigmas, num_levels)
        self.register_buffer("sigmas", s.clone())
        self.embed = nn.Embedding(num_levels, embed_dim)
        self.net = nn.Sequential(nn.Linear(dim + embed_dim, hidden), nn.Softplus(),
                                 nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, dim))
        self.data_shape = (dim,)
        self.config = dict(dim=dim, hidden=hidden, num_levels=num_levels, sigmas=[float(v) for v in s],
                           embed_dim=embed_dim)
        self.sampling_defaults = dict(TOY_SAMPLING)

    def forward(self, x: torch.Tensor, level_index: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.data_shape[0]:
            raise ValueError(f"x: expected shape [N, {self.data_shape[0]}], got {tuple(x.shape)}")
        h = self.net(torch.cat([x, self.embed(level_index)], dim=1))
        return h / self.sigmas[level_index][:, None]


def train_toy(model: ToyScoreNet, dist, steps: int = 3000, batch_size: int = 256, lr: float = 1e-3,
              generator: Optional[torch.Generator] = None, log_every: int = 0, objective: str = "dsm") -> list:
    """Train ``model`` on samples of ``dist`` (anything with ``sample(n, generator=)``); returns the losses.

    ``objective="dsm"``: denoising score matching over ``model.sigmas`` (the one training step,
    :func:`fastncsn.training.step.dsm_step`, fp32; levels and noise from ``generator``).
    ``"ssm"``: sliced score matching on the samples as drawn -- no noise added (seed 003 eq. 3,
    variance-reduced, one projection; :func:`fastncsn.losses.sliced_score_matching_loss` with
    ``perturb=False``), levels drawn from ``generator`` and weighted by ``sigma^2`` (a one-level
    ``sigmas=[1.0]`` model is an unconditional ``s(x)`` trained with the plain objective)."""
    from .losses import sliced_score_matching_loss
    from .training.step import dsm_step
    if objective not in ("dsm", "ssm"):
        raise ValueError(f"objective: expected 'dsm' or 'ssm', got {objective!r}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for it in range(steps):
        x = dist.sample(batch_size, generator=generator)
        if objective == "dsm":
            out = dsm_step(model, x, model.sigmas, generator=generator, optimizer=opt)
        else:
            out = sliced_score_matching_loss(model, x, model.sigmas, generator=generator, perturb=False)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
        losses.append(float(out.loss.detach()))
        if log_every and (it + 1) % log_every == 0:
            print(f"step {it + 1}: loss {losses[-1]:.4f}")
    return losses
