"""Samplers as plans: every sampler is a list of steps over the noise ladder, run by both executors.

A :class:`Plan` is what a sampler does, in numbers only: for each *loop level* the same sequence
of steps (same kinds, per-level coefficients -- one captured graph replays every loop level), then
a *final* sequence.  The reference executor (:func:`run_plan`) and the CUDA-graph executor
(:class:`~fastncsn.sampling.graphs.GraphSampler`) execute the same plan with the same update
functions (:func:`affine_update`, :func:`heun_update`, ``langevin_step_ref``), so the same seed
gives the same samples on both.

Step kinds (``s_i = s(x, level i)``, ``z ~ N(0, I)``):

============ ====================================================== =========================
kind         update                                                 evaluations
============ ====================================================== =========================
``langevin`` ``x + alpha/2 s_i + sqrt(alpha) z`` (Algorithm 1)     1
``affine``   ``x + a s_i + c z``                                    1
``heun``     ``x' = x + h s_i``; ``x + b0 s_i + b1 s_j(x')``         2
============ ====================================================== =========================

Samplers (``L`` levels ``sigma_1 > ... > sigma_L``, ``T = steps_per_level``, ``eps`` per sampler):

* ``ald`` -- annealed Langevin dynamics (NCSN paper, Algorithm 1): ``T`` Langevin steps per level
  with ``alpha_i`` from ``eps`` in ``step_convention``; ``denoise`` adds Tweedie's
  ``x + sigma_L^2 s_L``.  NFE ``L T (+1)``.
* ``cas`` -- consistent annealed sampling (Jolicoeur-Martineau et al. 2020, Algorithm 2 /
  ``anneal_Langevin_dynamics_consistent`` of their code): ``eps`` is their ``eta = step_lr /
  sigma_L^2``; a step at level ``i`` is ``x + eta sigma_i^2 s_i + sigma_next beta z`` with
  ``gamma = sigma_next / sigma_i`` and ``beta = sqrt(1 - ((1 - eta) / gamma)^2)``, so the noise
  in ``x`` is exactly ``sigma_next`` afterwards (``(1-eta)^2 sigma_i^2 + beta^2 sigma_next^2 =
  sigma_next^2``).  ``T`` steps per level: the first ``T-1`` stay at ``sigma_i`` (``gamma = 1``),
  the last moves to ``sigma_{i+1}``; the very last step adds no noise and, with ``denoise``,
  uses ``sigma_L^2`` instead of ``eta sigma_L^2`` (their denoised output: the same evaluation,
  no extra NFE).  Needs ``1 - gamma_min < eta <= 1 + gamma_min``.  NFE ``L T``.
* ``pc`` -- predictor-corrector (Song et al. 2021, VE SDE on the discrete ladder): per level ``T``
  Langevin corrector steps (``eps`` in ``step_convention``; the ``snr`` convention is score
  SDE's corrector with the 1/sigma score law per sample, nothing averaged over the batch), then the
  ancestral predictor (score SDE's ``AncestralSamplingPredictor`` for VE, the Gaussian posterior
  step) ``x + d s_i + (sigma_{i+1} / sigma_i) sqrt(d) z`` with ``d = sigma_i^2 - sigma_{i+1}^2``;
  after the last level the predictor to 0 is the denoising step (``denoise``).  NFE ``L (T + 1)``
  (``-1`` without denoise).  (The reverse-diffusion predictor's noise ``sqrt(d) z`` is twice
  sigma_{i+1} on the bundled ladder's ratio 2.25: measured 2026-12-02 it left the bundled model's
  digits with pixel std 6.4 (ancestral: 0.31) and the L = 10 toy mixture's heavy mode at weight 0.69
  with variance 1.61 (ancestral: 0.77, 0.67; exact: 0.8, 1).)
* ``heun`` -- Heun's 2nd-order method on the probability-flow ODE in sigma (Karras et al. 2022,
  Algorithm 1 without churn): ``dx/dsigma = -sigma s(x, sigma)``, steps ``sigma_i -> sigma_{i+1}``
  on the model's ladder (a level-indexed network has a score only there), Euler for the last
  step to 0 (= Tweedie).  NFE ``2L - 1``.

Noise: sample ``k`` of a run draws its noise for *slot* ``t`` (one per step, one per level for
inpainting, slot 0 for the starting point) from the Philox stream ``langevin_noise_ref`` at
counter ``t * SLOT_STRIDE + k * ceil(D / 4)`` -- a function of ``(seed, k)`` only, so ``n``,
``batch_size`` and the number of processes never change a sample (:func:`noise_rows`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch

from ..ops import langevin_noise_ref, langevin_step_ref
from ..schedules import validate_sigmas
from .core import (SAMPLERS, Snapshots, SamplerSettings, check_finite_level, escape_bound, progress_bar, step_sizes)

__all__ = ["SAMPLERS", "SLOT_STRIDE", "Step", "Plan", "build_plan", "noise_rows", "init_rows", "affine_update",
           "heun_update", "run_plan", "row_counters"]

#: Philox counters between two noise slots: room for 2**40 counters (5.6e9 samples of 784 values) per slot
SLOT_STRIDE = 2 ** 40
KINDS = ("langevin", "affine", "heun")


@dataclasses.dataclass(frozen=True)
class Step:
    """One update: ``kind`` (``KINDS``), the model ``level`` of its score, ``coef`` (langevin:
    ``(alpha,)``; affine: ``(a, c)``; heun: ``(h, b0, b1)``), heun's second ``level2``, its noise
    ``slot``, and ``denoise`` (the final Tweedie step: known pixels are put back clean)."""

    kind: str
    level: int
    coef: tuple
    slot: int
    level2: int = -1
    denoise: bool = False

    @property
    def nfe(self) -> int:
        return 2 if self.kind == "heun" else 1

    @property
    def noisy(self) -> bool:
        return self.kind == "langevin" or (self.kind == "affine" and self.coef[1] != 0.0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A sampler's steps: ``levels[i]`` (loop level ``i``, model level ``i``; the same kinds at every
    level), each level opened by an inpainting slot ``begin_slots[i]``; then ``final`` (after
    ``final_begin_slot`` when it has noisy steps).  ``num_levels``: the ladder's L."""

    sampler: str
    sigmas: tuple
    levels: tuple
    begin_slots: tuple
    final: tuple
    final_begin_slot: int
    num_levels: int

    @property
    def kinds(self) -> tuple:
        return tuple(s.kind for s in self.levels[0]) if self.levels else ()

    @property
    def nfe(self) -> int:
        """Network evaluations per sample."""
        return sum(s.nfe for lv in self.levels for s in lv) + sum(s.nfe for s in self.final)

    @property
    def final_level_id(self) -> int:
        """The level a divergence after the final steps is named by: L for a lone denoising step."""
        return self.num_levels if all(s.denoise for s in self.final) else self.num_levels - 1

    @property
    def snapshot_steps(self) -> int:
        """Steps a snapshot counts: every step but the final denoising step (as Algorithm 1's snapshots)."""
        return sum(len(lv) for lv in self.levels) + sum(not s.denoise for s in self.final)

    def final_needs_begin(self) -> bool:
        return any(not s.denoise for s in self.final)

    def level_sigma(self, i: int) -> float:
        return self.sigmas[min(i, self.num_levels - 1)]

    def table(self, device) -> dict:
        """Per-loop-level device tables: ``coef [Lloop, P, 3]`` fp32, ``level``/``level2`` ``[Lloop, P]``
        and ``slot [Lloop, P]`` int64, ``begin [Lloop]`` int64, ``sigma [Lloop]`` fp32."""
        P = len(self.levels[0]) if self.levels else 0
        coef = torch.zeros((len(self.levels), max(P, 1), 3), dtype=torch.float32)
        lvl = torch.zeros((len(self.levels), max(P, 1)), dtype=torch.long)
        lvl2, slot = torch.zeros_like(lvl), torch.zeros_like(lvl)
        for i, lv in enumerate(self.levels):
            for j, s in enumerate(lv):
                coef[i, j, :len(s.coef)] = torch.tensor(s.coef, dtype=torch.float64).float()
                lvl[i, j], lvl2[i, j], slot[i, j] = s.level, max(s.level2, 0), s.slot
        sig = torch.tensor([self.level_sigma(i) for i in range(len(self.levels))], dtype=torch.float32)
        return dict(coef=coef.to(device), level=lvl.to(device), level2=lvl2.to(device), slot=slot.to(device),
                    begin=torch.tensor(self.begin_slots, dtype=torch.long, device=device), sigma=sig.to(device))


def _f32(v: float) -> float:
    """``v`` rounded to float32 (the samplers' dtype), as a Python float."""
    return float(torch.tensor(v, dtype=torch.float32))


def build_plan(settings: SamplerSettings, sigmas) -> Plan:
    """The :class:`Plan` of ``settings.sampler`` on the ladder ``sigmas`` (decreasing, ``[L]``; a
    level-indexed network's own ladder: every score is evaluated at one of its levels).

    Raises ``ValueError`` naming the setting (one line, before any compute) when the sampler cannot
    run with these settings on this ladder."""
    sampler = settings.sampler
    sig64 = validate_sigmas(sigmas, "sigmas").double()
    sig = [float(v) for v in sig64.float()]                       # the fp32 ladder the steps see
    L, T = len(sig), settings.steps_per_level
    slots = iter(range(1, 1 << 62))                               # slot 0: the starting point
    levels, begins = [], []
    final = []
    if sampler == "ald":
        alphas = [float(a) for a in step_sizes(sig64, settings.eps, settings.step_convention).float()]
        for i in range(L):
            begins.append(next(slots))
            levels.append(tuple(Step("langevin", i, (alphas[i],), next(slots)) for _ in range(T)))
        fb = next(slots)
        if settings.denoise:
            final.append(Step("affine", L - 1, (_f32(sig[-1] ** 2), 0.0), next(slots), denoise=True))
    elif sampler == "cas":
        eta = settings.eps
        if L < 2:
            raise ValueError("sampler: 'cas' needs a ladder of at least 2 levels")
        gmin = min(sig[i + 1] / sig[i] for i in range(L - 1))
        if not (1 - gmin < eta <= 1 + gmin):
            raise ValueError(f"eps: consistent annealed sampling needs eta in ({1 - gmin:.4g}, {1 + gmin:.4g}] on "
                             f"this ladder (smallest sigma ratio {gmin:.4g}), got {eta:g}")

        def beta(gamma):
            return math.sqrt(max(0.0, 1 - ((1 - eta) / gamma) ** 2))

        def cas_level(i, last):
            steps = []
            for t in range(T):
                moving = t == T - 1
                if moving and last:
                    a = sig[i] ** 2 if settings.denoise else eta * sig[i] ** 2
                    steps.append(Step("affine", i, (_f32(a), 0.0), next(slots), denoise=settings.denoise))
                    continue
                nxt = sig[i + 1] if moving else sig[i]
                steps.append(Step("affine", i, (_f32(eta * sig[i] ** 2), _f32(nxt * beta(nxt / sig[i]))), next(slots)))
            return tuple(steps)
        for i in range(L - 1):
            begins.append(next(slots))
            levels.append(cas_level(i, False))
        fb = next(slots)
        final.extend(cas_level(L - 1, True))
    elif sampler == "pc":
        alphas = [float(a) for a in step_sizes(sig64, settings.eps, settings.step_convention).float()]
        for i in range(L - 1):
            begins.append(next(slots))
            d = sig[i] ** 2 - sig[i + 1] ** 2
            c = sig[i + 1] / sig[i] * math.sqrt(d)          # the ancestral predictor's noise (docstring)
            levels.append(tuple(Step("langevin", i, (alphas[i],), next(slots)) for _ in range(T))
                          + (Step("affine", i, (_f32(d), _f32(c)), next(slots)),))
        fb = next(slots)
        final.extend(Step("langevin", L - 1, (alphas[-1],), next(slots)) for _ in range(T))
        if settings.denoise:
            final.append(Step("affine", L - 1, (_f32(sig[-1] ** 2), 0.0), next(slots), denoise=True))
    elif sampler == "heun":
        if T != 1:
            raise ValueError(f"steps_per_level: sampler 'heun' steps from level to level of the model's ladder "
                             f"(a level-indexed network has a score only at its {L} levels): expected 1, got {T}")
        for i in range(L - 1):
            begins.append(next(slots))
            dt = sig[i] - sig[i + 1]
            levels.append((Step("heun", i, (_f32(sig[i] * dt), _f32(dt / 2 * sig[i]), _f32(dt / 2 * sig[i + 1])),
                                next(slots), level2=i + 1),))
        fb = next(slots)
        final.append(Step("affine", L - 1, (_f32(sig[-1] ** 2), 0.0), next(slots), denoise=True))
    else:
        raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
    if sampler == "heun" and settings.clamp is not None:
        raise ValueError("clamp: not supported with sampler 'heun' (an ODE step)")
    return Plan(sampler, tuple(sig), tuple(levels), tuple(begins), tuple(final), fb, L)


# ---------------------------------------------------------------------------- per-sample noise


def row_counters(like: torch.Tensor) -> int:
    """Philox counters one sample of ``like`` ``[N, ...]`` owns per slot: ``ceil(D / 4)``."""
    return -(-like[0].numel() // 4)


def noise_rows(seed, offset, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` ``[m, ...]`` whose row ``r`` is the Philox stream
    (``langevin_noise_ref``) at counters ``offset + r * ceil(D / 4) + [0, ceil(D / 4))``.

    For ``D % 4 == 0`` this is ``langevin_noise_ref(seed, offset, like)`` (what the fused step draws
    in its kernel); otherwise each row is padded to ``4 ceil(D / 4)`` values and cut back."""
    m, d = like.shape[0], like[0].numel()
    r = -(-d // 4)
    if d == 4 * r:
        return langevin_noise_ref(seed, offset, like)
    z = langevin_noise_ref(seed, offset, like.new_empty((m, 4 * r)))
    return z[:, :d].reshape(like.shape)


def slot_offset(slot: int, first_row: int, like: torch.Tensor) -> int:
    """The Philox counter of slot ``slot`` for the sample with global index ``first_row``."""
    return slot * SLOT_STRIDE + first_row * row_counters(like)


def init_rows(shape, kind: str, seed: int, first_row: int = 0, sigma: float = 1.0, low: float = 0.0,
              high: float = 1.0, device="cpu") -> torch.Tensor:
    """Starting points ``[n, ...]`` of samples ``first_row .. first_row + n - 1`` from slot 0 of their
    noise streams: ``"uniform"`` U[low, high) (the normal draw through its CDF), ``"gaussian"``
    ``sigma * N(0, I)``."""
    like = torch.empty(tuple(shape), device=device)
    z = noise_rows(torch.tensor(seed, dtype=torch.int64, device=device), slot_offset(0, first_row, like), like)
    if kind == "gaussian":
        return sigma * z
    u = torch.special.ndtr(z).clamp_(max=1 - 2 ** -24)
    return u if (low, high) == (0.0, 1.0) else low + (high - low) * u


# ---------------------------------------------------------------------------- the updates (both executors)


def affine_update(x, s, a, c, z, mask=None, known=None, clamp=None):
    """``x + a s + c z`` (``z`` None: no noise), then the known pixels and the clamp (as the Langevin step)."""
    out = x + a * s
    if z is not None:
        out = out + c * z
    if mask is not None:
        out = torch.where(mask, known, out)
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    return out


def heun_update(x, s0, s1, b0, b1):
    """Heun's corrector ``x + b0 s0 + b1 s1`` (Karras et al. 2022, Algorithm 1 line 8 in sigma)."""
    return x + b0 * s0 + b1 * s1


# ---------------------------------------------------------------------------- the reference executor


def _labels(n: int, i: int, device) -> torch.Tensor:
    return torch.full((n,), i, dtype=torch.long, device=device)


def run_plan(plan: Plan, score_fn: Callable, x: torch.Tensor, seed: int, first_row: int = 0,
             mask=None, known=None, clamp=None, snapshot_every: int = 0, progress=False,
             noise: Optional[Callable] = None):
    """Run ``plan`` eagerly on the batch ``x`` ``[m, ...]`` of samples ``first_row ..``: the reference
    executor.  ``noise(slot, like) -> z`` injects the noise (default: :func:`noise_rows` of the samples'
    own streams).  One divergence check per level (one host sync).  Returns ``x`` (and the snapshots
    ``[snapshot_steps // k, m, ...]`` with ``snapshot_every = k``)."""
    n, dev = x.shape[0], x.device
    seed_t = torch.tensor(seed, dtype=torch.int64, device=dev)
    draw = noise or (lambda slot, like: noise_rows(seed_t, slot_offset(slot, first_row, like), like))
    sig = torch.tensor(plan.sigmas, dtype=x.dtype, device=dev)
    snaps = Snapshots(snapshot_every, plan.snapshot_steps, x)
    bound = escape_bound(x, plan.sigmas[0])
    tables = {}

    def coef(step):
        t = tables.get(step.coef)
        if t is None:
            t = tables[step.coef] = torch.tensor(step.coef, dtype=torch.float64).to(dtype=x.dtype, device=dev)
        return t

    def run(step, x, known_i):
        c = coef(step)
        s = score_fn(x, _labels(n, step.level, dev))
        if step.kind == "langevin":
            return langevin_step_ref(x, s, c[0], draw(step.slot, x), mask=mask, known=known_i, clamp=clamp)
        if step.kind == "affine":
            k = known if step.denoise else known_i
            return affine_update(x, s, c[0], c[1], draw(step.slot, x) if step.noisy else None, mask, k, clamp)
        xp = x + c[0] * s
        s1 = score_fn(xp, _labels(n, step.level2, dev))
        out = heun_update(x, s, s1, c[1], c[2])
        return torch.where(mask, known_i, out) if mask is not None else out

    def begin(slot, i, x):
        if mask is None:
            return x, None
        known_i = known + sig[min(i, plan.num_levels - 1)] * draw(slot, x)
        return torch.where(mask, known_i, x), known_i

    x = x.clone()
    for i in progress_bar(range(len(plan.levels)), progress, plan.sampler):
        x, known_i = begin(plan.begin_slots[i], i, x)
        for step in plan.levels[i]:
            x = run(step, x, known_i)
            snaps(x)
        check_finite_level(x, i, plan.num_levels, bound=bound)
    if plan.final:
        known_i = None
        if plan.final_needs_begin():
            x, known_i = begin(plan.final_begin_slot, plan.num_levels - 1, x)
        for step in plan.final:
            x = run(step, x, known_i)
            if not step.denoise:
                snaps(x)
        check_finite_level(x, plan.final_level_id, plan.num_levels, bound=bound)
    return (x, snaps.buf) if snapshot_every else x
