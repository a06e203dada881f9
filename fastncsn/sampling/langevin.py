"""Reference samplers: vanilla, annealed (Algorithm 1), inpainting and HMC.

Every sampler takes a noise-conditional score function ``score_fn(x, level)``
(``level`` an int64 tensor ``[N]`` of noise-level indices), a starting batch
``x``, and a ``generator`` (or ``seed``) for the noise: the same seed gives the
same samples.  Nothing inside the step loop synchronises with the host; after
each level one ``isfinite`` check raises
:class:`~fastncsn.sampling.core.SamplingDivergedError` (a ``FloatingPointError``)
naming the first level whose samples are NaN or inf.

Defaults, validation, step-size conventions, initialisation and snapshots come
from :mod:`fastncsn.sampling.core` (shared with the CUDA-graph sampler); omitted
settings take NCSN's table :data:`~fastncsn.sampling.core.NCSN_SAMPLING`
(reference convention, step_lr 2e-5, T = 100).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..ops import langevin_step_ref
from ..schedules import validate_sigmas
from .core import (NCSN_SAMPLING, Snapshots, check_batch, check_count, check_eps, check_finite_level, check_mask,
                   check_model_levels, escape_bound,
                   make_generator, progress_bar, randn, step_sizes)

__all__ = ["langevin", "annealed_langevin", "hmc_annealed"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_EPS, _T, _CONVENTION = NCSN_SAMPLING["eps"], NCSN_SAMPLING["steps_per_level"], NCSN_SAMPLING["step_convention"]


def _levels(n: int, i: int, device) -> torch.Tensor:
    return torch.full((n,), i, dtype=torch.long, device=device)


def _noise_source(noise_fn, seed, generator, device):
    g = make_generator(seed, generator, device)
    if noise_fn is not None and g is not None:
        raise ValueError("noise_fn: give either noise_fn or seed/generator, not both")
    return noise_fn or (lambda like: randn(like.shape, like, g))


def langevin(score_fn: ScoreFn, x: torch.Tensor, eps: float, steps: int,
             generator: Optional[torch.Generator] = None, seed: Optional[int] = None, level: int = 0,
             clamp: Optional[tuple] = None, snapshot_every: int = 0, step_fn=None):
    """Vanilla Langevin dynamics (NCSN paper eq. 4) with a fixed step ``eps``::

        x_t = x_{t-1} + eps/2 * s(x_{t-1}, level) + sqrt(eps) * z_t

    Returns the final ``x`` (and the ``[steps // k, N, ...]`` snapshots when
    ``snapshot_every = k > 0``).
    """
    check_batch(x)
    check_eps(eps)
    check_count(steps, "steps")
    draw = _noise_source(None, seed, generator, x.device)
    step = step_fn or langevin_step_ref
    snaps = Snapshots(snapshot_every, steps, x)
    a = torch.tensor(float(eps), dtype=x.dtype, device=x.device)
    levels = _levels(x.shape[0], level, x.device)
    bound = escape_bound(x, 0.0)
    for _ in range(steps):
        x = step(x, score_fn(x, levels), a, draw(x), clamp=clamp)
        snaps(x)
    check_finite_level(x, 0, 1, bound=bound)
    return (x, snaps.buf) if snapshot_every else x


def annealed_langevin(score_fn: ScoreFn, x: torch.Tensor, sigmas, eps: float = _EPS, steps_per_level: int = _T,
                      generator: Optional[torch.Generator] = None, denoise: bool = False,
                      step_convention: str = _CONVENTION, mask: Optional[torch.Tensor] = None,
                      known: Optional[torch.Tensor] = None, clamp: Optional[tuple] = None,
                      snapshot_every: int = 0, progress: bool = False, seed: Optional[int] = None,
                      step_fn=None, noise_fn=None):
    """Annealed Langevin dynamics (NCSN paper, Algorithm 1).

    For each level ``i = 1..L`` (``sigmas`` decreasing) and ``t = 1..T``::

        x <- x + alpha_i/2 * s(x, i) + sqrt(alpha_i) * z,     z ~ N(0, I)

    with ``alpha_i`` from ``eps`` and ``step_convention``
    (:mod:`fastncsn.sampling.core`; defaults: NCSN's, step_lr 2e-5 in the
    reference convention, T = 100).

    Inpainting (NCSN paper appendix B.3): where ``mask`` is 1 the pixels are
    known; at the start of each level they are set to ``known + sigma_i * z``
    (drawn once per level, as in the reference) and re-imposed after every step.

    ``denoise=True`` ends with the final denoising step ``x + sigma_L^2 s(x, L)``
    (NCSNv2; Tweedie's formula).

    Args:
        score_fn: ``score_fn(x, level) -> score``.
        x: ``[N, ...]`` starting samples (see :func:`fastncsn.sampling.init_samples`).
        sigmas: ``[L]`` decreasing ladder.
        eps: step size in ``step_convention``.
        steps_per_level: T.
        generator / seed: noise source (same seed, same samples).
        clamp: optional ``(lo, hi)`` applied after every step.
        snapshot_every: k > 0 stores x after every k-th step in a preallocated
            ``[L*T // k, N, ...]`` buffer, returned as ``(x, snapshots)``.
        progress: progress bar over the levels.
        step_fn: the update (defaults to :func:`fastncsn.ops.langevin_step_ref`);
            same signature, so a fused backend can be plugged in.
        noise_fn: inject the noise source: ``noise_fn(like) -> z`` (standard
            normal, ``like``'s shape) replaces ``torch.randn`` for every draw, in
            order: per level, first the inpainting noise (only with ``mask``),
            then one draw per step.  Used to compare other samplers (e.g. the
            CUDA-graph sampler's Philox stream) with this one.

    Returns:
        the samples ``[N, ...]`` (and the snapshots when ``snapshot_every``).

    Raises:
        ValueError: a bad argument, a NaN/inf in ``x`` or ``known``, ``sigmas`` with another
            number of levels than ``score_fn`` when it is a model (has ``sigmas``).
        SamplingDivergedError: (a ``FloatingPointError``) the samples became NaN or inf; checked
            once per level (one host sync per level) and named by the first such level.
    """
    check_batch(x)
    alphas = step_sizes(sigmas, eps, step_convention).to(device=x.device, dtype=x.dtype)
    sig = validate_sigmas(sigmas, "sigmas").to(device=x.device, dtype=x.dtype)
    check_model_levels(sig, score_fn)  # (a model's level i means its own sigma_i)
    check_count(steps_per_level, "steps_per_level")
    mask, known = check_mask(mask, known, x)
    draw = _noise_source(noise_fn, seed, generator, x.device)
    step = step_fn or langevin_step_ref
    L, n = sig.numel(), x.shape[0]
    snaps = Snapshots(snapshot_every, L * steps_per_level, x)
    bound = escape_bound(x, sig[0])
    x = x.clone()
    for i in progress_bar(range(L), progress, "annealed Langevin"):
        levels = _levels(n, i, x.device)
        known_i = None
        if mask is not None:
            known_i = known + sig[i] * draw(x)
            x = torch.where(mask, known_i, x)
        for _ in range(steps_per_level):
            z = draw(x)
            x = step(x, score_fn(x, levels), alphas[i], z, mask=mask, known=known_i, clamp=clamp)
            snaps(x)
        check_finite_level(x, i, L, bound=bound)   # one host sync per level, not per step
    if denoise:
        x = x + sig[-1] ** 2 * score_fn(x, _levels(n, L - 1, x.device))
        if mask is not None:
            x = torch.where(mask, known, x)
        check_finite_level(x, L, L, bound=bound)
    return (x, snaps.buf) if snapshot_every else x


def hmc_annealed(score_fn: ScoreFn, x: torch.Tensor, sigmas, eps: float = _EPS, steps_per_level: int = _T,
                 leapfrog_steps: int = 3, generator: Optional[torch.Generator] = None,
                 step_convention: str = _CONVENTION, seed: Optional[int] = None, progress: bool = False,
                 noise_fn=None):
    """EXPERIMENTAL: annealed score-only Hamiltonian Monte Carlo (seed 004 section 5.1).

    At each level and iteration the momentum is redrawn, ``p ~ N(0, I)``, and
    ``leapfrog_steps`` leapfrog steps of size ``h_i = sqrt(alpha_i)`` are taken
    with the score as the force (``-grad U = s``)::

        p <- p + h/2 s(x);  x <- x + h p;  p <- p + h/2 s(x)

    There is no Metropolis-Hastings correction (it would need ``log p``), so the
    chain is biased; seed 004 reports that it did not converge in their
    experiments.  With ``leapfrog_steps = 1`` one iteration equals a Langevin
    step with ``alpha = h^2``.  ``noise_fn(like) -> p`` injects the momentum
    draws (one per iteration), as in :func:`annealed_langevin`.
    """
    check_batch(x)
    alphas = step_sizes(sigmas, eps, step_convention).to(device=x.device, dtype=x.dtype)
    check_model_levels(alphas, score_fn)
    check_count(steps_per_level, "steps_per_level")
    check_count(leapfrog_steps, "leapfrog_steps")
    draw = _noise_source(noise_fn, seed, generator, x.device)
    n = x.shape[0]
    bound = escape_bound(x, float(validate_sigmas(sigmas, "sigmas")[0]))
    x = x.clone()
    for i in progress_bar(range(alphas.numel()), progress, "annealed HMC"):
        levels = _levels(n, i, x.device)
        h = alphas[i].sqrt()
        for _ in range(steps_per_level):
            p = draw(x)
            s = score_fn(x, levels)
            for _ in range(leapfrog_steps):
                p = p + h / 2 * s
                x = x + h * p
                s = score_fn(x, levels)
                p = p + h / 2 * s
        check_finite_level(x, i, alphas.numel(), bound=bound)
    return x
