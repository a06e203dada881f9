"""Reference samplers: vanilla, annealed (Algorithm 1), inpainting and HMC.

Every sampler takes a noise-conditional score function ``score_fn(x,
level_index)`` (``level_index`` an int64 tensor ``[N]``), a starting batch
``x``, and a ``generator`` (or ``seed``) for the noise: the same seed gives the
same samples.  Nothing inside the step loop synchronises with the host.

Step-size conventions
=====================
Three conventions for the per-level step are in use and easily confused; all
three are supported through ``step_convention`` and mapped to Algorithm 1's
``alpha_i`` (update ``x + alpha_i/2 * s + sqrt(alpha_i) * z``):

============== ========================================== =================================== ======================
convention     meaning of ``eps``                          update                               ``alpha_i``
============== ========================================== =================================== ======================
``paper``      Algorithm 1 of seed 003                     ``x + a/2 s + sqrt(a) z``            ``eps sigma_i^2/sigma_L^2``
``reference``  ``step_lr`` of the reference code           ``x + step s + sqrt(2 step) z``,     ``2 eps sigma_i^2/sigma_L^2``
                                                           ``step = eps sigma_i^2/sigma_L^2``
``snr``        signal-to-noise ratio (score-SDE's ``ald``  reference form with                  ``4 (eps sigma_i)^2``
               corrector with the 1/sigma score law)       ``step = 2 (snr sigma_i)^2``
============== ========================================== =================================== ======================

NCSN's published setting is ``step_lr = 2e-5`` in the *reference* convention
(T = 100, L = 10, sigma 1 -> 0.01); that is ``eps = 4e-5`` in the paper
convention and ``snr ~ 0.316`` in the snr convention.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..ops import langevin_step_ref
from ..schedules import validate_sigmas

__all__ = [
    "STEP_CONVENTIONS",
    "step_sizes",
    "init_samples",
    "make_generator",
    "langevin",
    "annealed_langevin",
    "hmc_annealed",
]

STEP_CONVENTIONS = ("paper", "reference", "snr")

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def step_sizes(sigmas, eps: float, step_convention: str = "paper") -> torch.Tensor:
    """Algorithm 1's ``alpha_i`` for every level (float64 ``[L]``), from ``eps`` in ``step_convention``."""
    if step_convention not in STEP_CONVENTIONS:
        raise ValueError(f"step_convention: expected one of {STEP_CONVENTIONS}, got {step_convention!r}")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite step size > 0, got {eps!r}")
    s = validate_sigmas(sigmas, "sigmas").double()
    if step_convention == "paper":
        return eps * (s / s[-1]) ** 2
    if step_convention == "reference":
        return 2 * eps * (s / s[-1]) ** 2
    return 4 * (eps * s) ** 2


def make_generator(seed: Optional[int], generator: Optional[torch.Generator], device) -> Optional[torch.Generator]:
    """The generator to draw noise from: ``generator`` as given, or a new one seeded with ``seed``."""
    if generator is not None:
        if seed is not None:
            raise ValueError("seed: give either seed or generator, not both")
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def _randn(shape, like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if generator.device != like.device:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def init_samples(shape: Sequence[int], kind: str = "uniform", sigma: float = 1.0,
                 generator: Optional[torch.Generator] = None, device="cpu", mean: float = 0.0,
                 low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Starting points of the sampler.

    ``"uniform"``: U[low, high) per coordinate (U[0, 1): the reference NCSN
    image sampler; U[-8, 8): its toy experiments);
    ``"gaussian"``: ``mean + sigma * N(0, I)`` (seed 000's initial-noise study uses
    ``N(0, sigma_1^2)``).
    """
    if kind not in ("uniform", "gaussian"):
        raise ValueError(f"init: expected 'uniform' or 'gaussian', got {kind!r}")
    like = torch.empty(0, device=device)
    if kind == "uniform":
        if generator is None:
            u = torch.rand(tuple(shape), device=device)
        else:
            u = torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)
        return u if (low, high) == (0.0, 1.0) else low + (high - low) * u
    return mean + sigma * _randn(tuple(shape), like, generator)


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError("x: expected a floating-point batch tensor [N, ...]")
    if bool(torch.isnan(x).any()):
        raise ValueError("x: contains NaN")


def _check_mask(mask, known, x):
    if mask is None:
        if known is not None:
            raise ValueError("mask: required when known is given")
        return None, None
    if known is None:
        raise ValueError("known: required when mask is given (the data at the known pixels)")
    mask = torch.as_tensor(mask, device=x.device)
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
        torch.broadcast_shapes(known.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"mask: expected a shape broadcastable to x {tuple(x.shape)}, got mask "
                         f"{tuple(mask.shape)} and known {tuple(known.shape)}") from None
    if torch.broadcast_shapes(mask.shape, x.shape) != x.shape or torch.broadcast_shapes(known.shape, x.shape) != x.shape:
        raise ValueError(f"mask: expected a shape broadcastable to x {tuple(x.shape)}, got mask "
                         f"{tuple(mask.shape)} and known {tuple(known.shape)}")
    return mask.bool(), known.to(device=x.device, dtype=x.dtype).expand_as(x)


def _check_steps(steps, name):
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {steps!r}")


class _Snapshots:
    """Preallocated trajectory buffer: one copy every ``every`` steps, no host sync."""

    def __init__(self, every: int, total_steps: int, x: torch.Tensor):
        if not isinstance(every, int) or every < 0:
            raise ValueError(f"snapshot_every: expected an int >= 0, got {every!r}")
        self.every = every
        self.buf = x.new_empty((total_steps // every, *x.shape)) if every else None
        self.count = 0
        self.k = 0

    def __call__(self, x: torch.Tensor) -> None:
        if not self.every:
            return
        self.count += 1
        if self.count % self.every == 0:
            self.buf[self.k].copy_(x)
            self.k += 1


def _levels(n: int, i: int, device) -> torch.Tensor:
    return torch.full((n,), i, dtype=torch.long, device=device)


def langevin(score_fn: ScoreFn, x: torch.Tensor, eps: float, steps: int,
             generator: Optional[torch.Generator] = None, seed: Optional[int] = None, level: int = 0,
             clamp: Optional[tuple] = None, snapshot_every: int = 0, step_fn=None):
    """Vanilla Langevin dynamics (seed 003 eq. 4) with a fixed step ``eps``::

        x_t = x_{t-1} + eps/2 * s(x_{t-1}, level) + sqrt(eps) * z_t

    Returns the final ``x`` (and the ``[steps // k, N, ...]`` snapshots when
    ``snapshot_every = k > 0``).
    """
    _check_x(x)
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite step size > 0, got {eps!r}")
    _check_steps(steps, "steps")
    g = make_generator(seed, generator, x.device)
    step = step_fn or langevin_step_ref
    snaps = _Snapshots(snapshot_every, steps, x)
    a = torch.tensor(float(eps), dtype=x.dtype, device=x.device)
    labels = _levels(x.shape[0], level, x.device)
    for _ in range(steps):
        x = step(x, score_fn(x, labels), a, _randn(x.shape, x, g), clamp=clamp)
        snaps(x)
    return (x, snaps.buf) if snapshot_every else x


def annealed_langevin(score_fn: ScoreFn, x: torch.Tensor, sigmas, eps: float = 2e-5, steps_per_level: int = 100,
                      generator: Optional[torch.Generator] = None, denoise: bool = False,
                      step_convention: str = "paper", mask: Optional[torch.Tensor] = None,
                      known: Optional[torch.Tensor] = None, clamp: Optional[tuple] = None,
                      snapshot_every: int = 0, progress: bool = False, seed: Optional[int] = None,
                      step_fn=None, noise_fn=None):
    """Annealed Langevin dynamics (seed 003, Algorithm 1).

    For each level ``i = 1..L`` (``sigmas`` decreasing) and ``t = 1..T``::

        x <- x + alpha_i/2 * s(x, i) + sqrt(alpha_i) * z,     z ~ N(0, I)

    with ``alpha_i`` from ``eps`` and ``step_convention`` (module docstring).

    Inpainting (seed 003 appendix B.3): where ``mask`` is 1 the pixels are
    known; at the start of each level they are set to ``known + sigma_i * z``
    (drawn once per level, as in the reference) and re-imposed after every step.

    ``denoise=True`` ends with the final denoising step ``x + sigma_L^2 s(x, L)``
    (NCSNv2; Tweedie's formula).

    Args:
        score_fn: ``score_fn(x, level_index) -> score``.
        x: ``[N, ...]`` starting samples (see :func:`init_samples`).
        sigmas: ``[L]`` decreasing ladder.
        eps: step size in ``step_convention``.
        steps_per_level: T.
        generator / seed: noise source (same seed, same samples).
        clamp: optional ``(lo, hi)`` applied after every step.
        snapshot_every: k > 0 stores x after every k-th step in a preallocated
            ``[L*T // k, N, ...]`` buffer, returned as ``(x, snapshots)``.
        progress: tqdm bar over the levels.
        step_fn: the update (defaults to :func:`fastncsn.reference.langevin_step_ref`);
            same signature, so a fused backend can be plugged in.
        noise_fn: inject the noise source: ``noise_fn(like) -> z`` (standard
            normal, ``like``'s shape) replaces ``torch.randn`` for every draw, in
            order: per level, first the inpainting noise (only with ``mask``),
            then one draw per step.  Used to compare other samplers (e.g. the
            CUDA-graph sampler's Philox stream) with this one.

    Returns:
        the samples ``[N, ...]`` (and the snapshots when ``snapshot_every``).
    """
    _check_x(x)
    alphas = step_sizes(sigmas, eps, step_convention)
    sig = validate_sigmas(sigmas, "sigmas").to(device=x.device, dtype=x.dtype)
    _check_steps(steps_per_level, "steps_per_level")
    mask, known = _check_mask(mask, known, x)
    g = make_generator(seed, generator, x.device)
    if noise_fn is not None and g is not None:
        raise ValueError("noise_fn: give either noise_fn or seed/generator, not both")
    draw = noise_fn or (lambda like: _randn(like.shape, like, g))
    step = step_fn or langevin_step_ref
    L, n = sig.numel(), x.shape[0]
    snaps = _Snapshots(snapshot_every, L * steps_per_level, x)
    alphas = alphas.to(device=x.device, dtype=x.dtype)
    x = x.clone()
    levels = range(L)
    if progress:
        from tqdm.auto import tqdm
        levels = tqdm(levels, desc="annealed Langevin", unit="level")
    for i in levels:
        labels = _levels(n, i, x.device)
        known_i = None
        if mask is not None:
            known_i = known + sig[i] * draw(x)
            x = torch.where(mask, known_i, x)
        for _ in range(steps_per_level):
            z = draw(x)
            x = step(x, score_fn(x, labels), alphas[i], z, mask=mask, known=known_i, clamp=clamp)
            snaps(x)
    if denoise:
        x = x + sig[-1] ** 2 * score_fn(x, _levels(n, L - 1, x.device))
        if mask is not None:
            x = torch.where(mask, known, x)
    return (x, snaps.buf) if snapshot_every else x


def hmc_annealed(score_fn: ScoreFn, x: torch.Tensor, sigmas, eps: float = 2e-5, steps_per_level: int = 100,
                 leapfrog_steps: int = 3, generator: Optional[torch.Generator] = None,
                 step_convention: str = "paper", seed: Optional[int] = None, progress: bool = False,
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
    _check_x(x)
    alphas = step_sizes(sigmas, eps, step_convention).to(device=x.device, dtype=x.dtype)
    _check_steps(steps_per_level, "steps_per_level")
    _check_steps(leapfrog_steps, "leapfrog_steps")
    g = make_generator(seed, generator, x.device)
    if noise_fn is not None and g is not None:
        raise ValueError("noise_fn: give either noise_fn or seed/generator, not both")
    draw = noise_fn or (lambda like: _randn(like.shape, like, g))
    n = x.shape[0]
    x = x.clone()
    levels = range(alphas.numel())
    if progress:
        from tqdm.auto import tqdm
        levels = tqdm(levels, desc="annealed HMC", unit="level")
    for i in levels:
        labels = _levels(n, i, x.device)
        h = alphas[i].sqrt()
        for _ in range(steps_per_level):
            p = draw(x)
            s = score_fn(x, labels)
            for _ in range(leapfrog_steps):
                p = p + h / 2 * s
                x = x + h * p
                s = score_fn(x, labels)
                p = p + h / 2 * s
    return x
