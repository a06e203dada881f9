"""Noise ladders (sigma schedules) and the heuristics for choosing them.

Schedules (seed 000, section 7; ``k = 0 .. L-1``):

============== ==================================================== ===================
kind           as printed in the report (``rescale=False``)          parameters
============== ==================================================== ===================
geometric      ``sigma_1 * r**k`` with ``r = (sigma_L/sigma_1)**(1/(L-1))``
               (NCSN's default, computed as the reference code
               does: ``exp(linspace(log sigma_1, log sigma_L, L))``)
linear         ``sigma_1 - k*r`` with ``r = (sigma_1 - sigma_L)/(L-1)``
cosine         ``sigma_1 * cos(k/(alpha L) * pi/2)``                 alpha = 1.0064
squared_cosine ``sigma_1 * cos(k/(alpha L) * pi/2)**2``              alpha = 1.068
sigmoid        ``-1/(1 + exp(-k - alpha)) + beta``                   alpha = 2.5, beta = 1.009
============== ==================================================== ===================

Geometric and linear hit both requested endpoints by construction.  The printed
cosine and squared cosine start at ``sigma_1`` but end wherever ``alpha`` puts
them (for L = 10: ``0.1653*sigma_1`` and ``0.0598*sigma_1``); the printed
sigmoid ignores ``sigma_1``/``sigma_L`` altogether (it runs from 0.0849 down
to 0.0090 for L = 10).  With ``rescale=True`` (the default) the shape of the
printed curve is kept and mapped *affinely* onto ``[sigma_L, sigma_1]``:
``sigma_1 + (s - s[0]) * (sigma_L - sigma_1)/(s[-1] - s[0])``, so every kind
starts at ``sigma_1`` and ends at ``sigma_L`` (geometric and linear are
unchanged by the map).  The printed sigmoid saturates in float64 near
k = 29 (consecutive levels become equal), so it is limited to L <= 29; larger L
raises a ValueError.

Heuristics (seed 000 Proposition 2 / seed 004 section 4):

* :func:`overlap_probabilities` -- P(q_{sigma_i} radial mass in the 3-sigma
  interval of level i-1) for every consecutive pair.
* :func:`sigma_1_from_data` -- sigma_1 as the largest pairwise distance of the data.
* :func:`num_levels_for_overlap` -- the smallest geometric L reaching overlap C.
* :func:`step_size_for` -- epsilon from the rule of seed 004 section 4.2.2.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

__all__ = [
    "SCHEDULES",
    "get_sigmas",
    "validate_sigmas",
    "overlap_probabilities",
    "sigma_1_from_data",
    "num_levels_for_overlap",
    "step_size_for",
    "step_rule_value",
]

SCHEDULES = ("geometric", "linear", "cosine", "squared_cosine", "sigmoid")

COSINE_ALPHA = 1.0064
SQUARED_COSINE_ALPHA = 1.068
SIGMOID_ALPHA = 2.5
SIGMOID_BETA = 1.009


def validate_sigmas(sigmas, name: str = "sigmas") -> torch.Tensor:
    """Check a noise ladder: 1-D, L >= 1, finite, positive, strictly decreasing.

    Returns the ladder as a tensor; raises ``ValueError`` naming ``name`` otherwise.
    """
    t = torch.as_tensor(sigmas)
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name}: expected a 1-D sequence of at least one noise level, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        # inside a CUDA-graph capture a value check would sync with the host (an error there): the
        # capturing code (fastncsn.training.graph_step) checked the ladder before capture
        return t
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite noise levels, got {t.tolist()}")
    if not bool((t > 0).all()):
        raise ValueError(f"{name}: expected positive noise levels, got {t.tolist()}")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"{name}: expected strictly decreasing noise levels (sigma_1 > ... > sigma_L), "
                         f"got {t.tolist()}")
    return t


def _printed(kind: str, sigma_1: float, sigma_L: float, L: int) -> np.ndarray:
    k = np.arange(L, dtype=np.float64)
    if kind == "geometric":
        return np.exp(np.linspace(np.log(sigma_1), np.log(sigma_L), L))
    if kind == "linear":
        return np.linspace(sigma_1, sigma_L, L) if L > 1 else np.array([sigma_1])
    if kind == "cosine":
        return sigma_1 * np.cos(k / (COSINE_ALPHA * L) * np.pi / 2)
    if kind == "squared_cosine":
        return sigma_1 * np.cos(k / (SQUARED_COSINE_ALPHA * L) * np.pi / 2) ** 2
    if kind == "sigmoid":
        return -1.0 / (1.0 + np.exp(-k - SIGMOID_ALPHA)) + SIGMOID_BETA
    raise ValueError(f"kind: expected one of {SCHEDULES}, got {kind!r}")


def get_sigmas(kind: str = "geometric", sigma_1: float = 1.0, sigma_L: float = 0.01, L: int = 10, *,
               rescale: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The noise ladder ``[L]``, decreasing, of schedule ``kind`` (see the module docstring).

    Args:
        kind: geometric | linear | cosine | squared_cosine | sigmoid.
        sigma_1: the largest noise level (> sigma_L > 0).
        sigma_L: the smallest noise level.
        L: number of levels (>= 1; L = 1 gives ``[sigma_1]`` for every kind, with or without ``rescale``).
        rescale: map the printed curve affinely onto ``[sigma_L, sigma_1]``
            (default); ``False`` returns the formula as printed in seed 000.
        dtype: output dtype (computed in float64 first, as the reference code).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind: expected one of {SCHEDULES}, got {kind!r}")
    if not isinstance(L, (int, np.integer)) or isinstance(L, bool) or L < 1:
        raise ValueError(f"L: expected an int >= 1, got {L!r}")
    for nm, v in (("sigma_1", sigma_1), ("sigma_L", sigma_L)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{nm}: expected a finite positive number, got {v!r}")
    if L > 1 and not sigma_1 > sigma_L:
        raise ValueError(f"sigma_1: expected sigma_1 > sigma_L, got sigma_1={sigma_1}, sigma_L={sigma_L}")
    # one level is sigma_1 for every kind (the printed sigmoid would start at 0.0849 whatever sigma_1 is)
    s = np.array([float(sigma_1)]) if L == 1 else _printed(kind, float(sigma_1), float(sigma_L), int(L))
    if rescale and L > 1 and kind not in ("geometric", "linear"):
        s = sigma_1 + (s - s[0]) * (sigma_L - sigma_1) / (s[-1] - s[0])
    out = torch.tensor(s, dtype=torch.float64).to(dtype)
    validate_sigmas(out, f"get_sigmas({kind!r}, rescale={rescale})")
    return out


# ----------------------------------------------------------------------------- heuristics

def _log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Phi(x) in float64, accurate in both tails."""
    return torch.special.log_ndtr(x)


def overlap_probabilities(sigmas, dim: int) -> torch.Tensor:
    """Overlap of consecutive noise levels for data dimension ``D = dim``.

    With ``gamma_i = sigma_{i-1}/sigma_i`` (seed 000 Proposition 2, seed 004
    section 4.1.2)::

        P_i = Phi(sqrt(2D)(gamma_i - 1) + 3 gamma_i) - Phi(sqrt(2D)(gamma_i - 1) - 3 gamma_i)

    the probability that the radial part of ``q_{sigma_i}`` falls in the 3-sigma
    interval of ``q_{sigma_{i-1}}``.  Computed in float64 as a difference of
    upper tails (``Phi(b) - Phi(a) = Q(a) - Q(b)``) so tiny values stay >= 0.

    Returns:
        float64 tensor ``[L-1]`` (entry ``i-1`` for the pair ``(i-1, i)``).
    """
    s = validate_sigmas(sigmas).double()
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim: expected a positive int (data dimension D), got {dim!r}")
    g = s[:-1] / s[1:]
    c = math.sqrt(2 * dim) * (g - 1)
    a, b = c - 3 * g, c + 3 * g
    # Q(a) - Q(b) with Q(t) = Phi(-t); both as exp(log) to keep relative accuracy in the tail
    qa, qb = torch.exp(_log_ndtr(-a)), torch.exp(_log_ndtr(-b))
    return (qa - qb).clamp_min(0.0)


def sigma_1_from_data(x: torch.Tensor, max_exact: int = 20000, num_anchors: int = 64,
                      generator: Optional[torch.Generator] = None, chunk: int = 1024) -> float:
    """sigma_1 as the maximum pairwise Euclidean distance of the training set (seed 004, 4.1.2).

    Exact (chunked ``torch.cdist``, O(N^2 D)) for ``N <= max_exact``.  Above that,
    a bounded-cost estimate, O(num_anchors * N * D): from ``num_anchors`` random
    anchors, each followed by two farthest-point hops (the diameter heuristic),
    the largest distance found.  The estimate is a *lower bound* of the true
    diameter (it is a distance between two data points) and is at least half of
    it (triangle inequality through any anchor).

    Args:
        x: ``[N, ...]`` data (flattened per sample).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 2:
        raise ValueError("x: expected a tensor [N, ...] with N >= 2 samples")
    x = x.reshape(x.shape[0], -1).double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x: contains NaN or inf")
    n = x.shape[0]
    if n <= max_exact:
        best = 0.0
        for i in range(0, n, chunk):
            best = max(best, float(torch.cdist(x[i:i + chunk], x).max()))
        return best
    idx = torch.randint(0, n, (num_anchors,), generator=generator)
    best = 0.0
    for a in idx.tolist():
        p = a
        for _ in range(2):
            d = torch.cdist(x[p:p + 1], x)[0]
            p = int(d.argmax())
            best = max(best, float(d[p]))
    return best


def num_levels_for_overlap(sigma_1: float, sigma_L: float, dim: int, C: float = 0.5, max_levels: int = 100000) -> int:
    """Smallest L whose geometric ladder ``sigma_1 -> sigma_L`` has overlap >= C (seed 004, 4.1.2).

    All consecutive ratios of a geometric ladder are equal, so one
    probability decides; it grows with L, and a bisection over L finds the
    smallest one.
    """
    if not 0 < C < 1:
        raise ValueError(f"C: expected a target overlap probability in (0, 1), got {C!r}")

    def ok(L: int) -> bool:
        return bool(overlap_probabilities(get_sigmas("geometric", sigma_1, sigma_L, L, dtype=torch.float64),
                                          dim)[0] >= C)

    if not ok(max_levels):
        raise ValueError(f"C: overlap {C} not reached with up to max_levels={max_levels} levels")
    lo, hi = 2, max_levels  # ok(hi) holds
    if ok(lo):
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def step_rule_value(eps: float, T: int, gamma: float, sigma_L: float) -> float:
    """The expression of seed 004 section 4.2.2 (Song & Ermon 2020, technique 4)::

        (1 - eps/sigma_L^2)^(2T) * (gamma^2 - 2 eps/(sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2))
            + 2 eps/(sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2)

    which the step size ``eps`` should bring close to 1.
    """
    s2 = sigma_L ** 2
    r = 1.0 - eps / s2
    frac = 2 * eps / (s2 - s2 * r ** 2)
    return r ** (2 * T) * (gamma ** 2 - frac) + frac


def step_size_for(T: int, gamma: float, sigma_L: float, target: float = 1.0, num_grid: int = 2000) -> float:
    """Step size epsilon for the annealed sampler by the rule of seed 004 section 4.2.2.

    A log-spaced grid search over ``eps in (0, sigma_L^2)`` (``num_grid``
    points from ``1e-12 sigma_L^2``) for the value of :func:`step_rule_value`
    closest to ``target``, refined by a golden-section search between the
    neighbouring grid points.  The rule is derived for the update
    ``x + eps_i s + sqrt(2 eps_i) z`` with ``eps_i = eps sigma_i^2/sigma_L^2``, so
    ``eps`` is in the *reference* step convention (``step_convention="reference"``
    of the samplers; Algorithm 1's alpha is ``2 eps``).  For NCSNv2's CIFAR-10
    setting (sigma 50 -> 0.01, L = 232, T = 5) it gives 6.2e-6, the value that
    code uses.
    """
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T: expected an int >= 1 (steps per level), got {T!r}")
    if not gamma > 1:
        raise ValueError(f"gamma: expected the ladder ratio sigma_(i-1)/sigma_i > 1, got {gamma!r}")
    if not sigma_L > 0:
        raise ValueError(f"sigma_L: expected > 0, got {sigma_L!r}")
    s2 = sigma_L ** 2
    grid = np.exp(np.linspace(np.log(1e-12 * s2), np.log(s2 * (1 - 1e-9)), num_grid))

    def err(e):
        return abs(step_rule_value(float(e), int(T), float(gamma), float(sigma_L)) - target)

    errs = np.array([err(e) for e in grid])
    i = int(errs.argmin())
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, num_grid - 1)])
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if err(math.exp(a)) < err(math.exp(b)):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))
