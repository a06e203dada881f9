"""Training objectives: denoising and sliced score matching over a noise ladder.

Both take a noise-conditional score function ``score_fn(x, level_index)`` and
return a :class:`ScoreLoss` with the scalar loss, the per-level breakdown and
the level indices used.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from .schedules import validate_sigmas

__all__ = ["ScoreLoss", "dsm_loss", "sliced_score_matching_loss", "per_level_mean"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ScoreLoss(NamedTuple):
    loss: torch.Tensor          #: scalar, differentiable: mean over the batch
    per_level: torch.Tensor     #: [L] detached mean loss per level (NaN where a level is absent)
    level_index: torch.Tensor   #: [N] the level drawn for each sample


def per_level_mean(values: torch.Tensor, level_index: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Mean of ``values`` [N] per level (``[num_levels]``, NaN for levels with no sample); no host sync."""
    v = values.detach().float()
    sums = torch.zeros(num_levels, device=v.device).index_add_(0, level_index, v)
    counts = torch.zeros(num_levels, device=v.device).index_add_(0, level_index, torch.ones_like(v))
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))


def _prepare(x: torch.Tensor, sigmas, level_index, generator):
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x: expected a batch tensor [N, ...]")
    sig = validate_sigmas(sigmas).to(device=x.device, dtype=torch.float32)
    n = x.shape[0]
    if level_index is None:
        level_index = torch.randint(0, sig.numel(), (n,), generator=generator,
                                    device=generator.device if generator is not None else "cpu").to(x.device)
    elif level_index.shape != (n,):
        raise ValueError(f"level_index: expected shape [{n}], got {tuple(level_index.shape)}")
    used = sig[level_index].view(n, *([1] * (x.dim() - 1)))
    return sig, level_index, used


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def dsm_loss(score_fn: ScoreFn, x: torch.Tensor, sigmas, level_index: Optional[torch.Tensor] = None,
             anneal_power: float = 2.0, generator: Optional[torch.Generator] = None,
             noise: Optional[torch.Tensor] = None) -> ScoreLoss:
    """Denoising score matching over noise levels (seed 003 eq. 5-6).

    For each sample, with ``sigma = sigmas[level_index]``, ``z ~ N(0, I)`` and
    ``x~ = x + sigma z``::

        l = 1/2 * || s(x~, i) + z / sigma ||^2 * sigma^p          (target -(x~ - x)/sigma^2 = -z/sigma)

    ``lambda(sigma) = sigma^p`` (``p = anneal_power = 2``: NCSN's choice).  For
    ``p = 2`` this equals ``1/2 ||sigma s + z||^2``, which is how it is computed
    (every term O(1), so it is safe in reduced precision); other ``p`` use the
    literal form.  Equal to the reference code's ``anneal_dsm_score_estimation``.

    Args:
        score_fn: ``score_fn(x, level_index) -> score`` of ``x``'s shape.
        x: ``[N, ...]`` clean data.
        sigmas: ``[L]`` decreasing noise ladder.
        level_index: ``[N]`` int64 levels; drawn uniformly (from ``generator``) if None.
        noise: optional fixed ``z`` (same shape as ``x``).

    Returns:
        :class:`ScoreLoss` (mean loss, ``[L]`` per-level means, levels used).
    """
    sig, level_index, used = _prepare(x, sigmas, level_index, generator)
    z = _randn_like(x, generator) if noise is None else noise
    if z.shape != x.shape:
        raise ValueError(f"noise: expected shape {tuple(x.shape)}, got {tuple(z.shape)}")
    scores = score_fn(x + used * z, level_index)
    n = x.shape[0]
    if anneal_power == 2.0:
        per = 0.5 * (used * scores.float() + z.float()).reshape(n, -1).square().sum(dim=1)
    else:
        target = -z / used
        per = 0.5 * (scores.float() - target.float()).reshape(n, -1).square().sum(dim=1) \
            * used.reshape(n) ** anneal_power
    return ScoreLoss(per.mean(), per_level_mean(per, level_index, sig.numel()), level_index)


def sliced_score_matching_loss(score_fn: ScoreFn, x: torch.Tensor, sigmas,
                               level_index: Optional[torch.Tensor] = None, n_particles: int = 1,
                               generator: Optional[torch.Generator] = None,
                               variance_reduced: bool = True, perturb: bool = True) -> ScoreLoss:
    """Sliced score matching on noise-perturbed data (seed 003 eq. 3), weighted by sigma^2.

    For projections ``v ~ N(0, I)``::

        l = E_v[ v^T (d s / d x~) v + 1/2 (v^T s)^2 ]      (plain)
        l = E_v[ v^T (d s / d x~) v ] + 1/2 ||s||^2        (variance reduced: E_v (v^T s)^2 = ||s||^2)

    as the reference's ``anneal_sliced_score_estimation_vr``, then multiplied by
    ``sigma^2``.  ``n_particles`` projections per sample.  Needs one extra
    backward pass (Hessian-vector product), so ``score_fn`` must be
    differentiable in ``x``.

    ``perturb=False``: score matching on ``x`` as given (no noise is added; ``sigmas`` then only
    weight the levels -- ``[1.0]`` gives the plain objective, seed 003 eq. 3, e.g. on clean data).
    """
    if not isinstance(n_particles, int) or n_particles < 1:
        raise ValueError(f"n_particles: expected an int >= 1, got {n_particles!r}")
    sig, level_index, used = _prepare(x, sigmas, level_index, generator)
    n = x.shape[0]
    perturbed = x + used * _randn_like(x, generator) if perturb else x
    dup = perturbed.unsqueeze(0).expand(n_particles, *x.shape).reshape(-1, *x.shape[1:]).detach()
    dup.requires_grad_(True)
    dup_levels = level_index.repeat(n_particles)
    v = _randn_like(dup, generator)
    s = score_fn(dup, dup_levels)
    sv = (s * v).reshape(dup.shape[0], -1).sum(dim=1)
    grad_sv = torch.autograd.grad(sv.sum(), dup, create_graph=True)[0]
    loss2 = (v * grad_sv).reshape(dup.shape[0], -1).sum(dim=1)
    if variance_reduced:
        loss1 = 0.5 * s.reshape(dup.shape[0], -1).square().sum(dim=1)
    else:
        loss1 = 0.5 * sv.square()
    per = (loss1 + loss2).view(n_particles, n).mean(dim=0) * used.reshape(n) ** 2
    return ScoreLoss(per.mean(), per_level_mean(per, level_index, sig.numel()), level_index)
