"""Intervals for FIDs (issue 27 item 5): a bootstrap over samples and a t-interval over sampling seeds.

A 500-sample digits-FID moves by tens of points from one draw to the next, so a single figure says
little. Two sources of spread, reported separately:

* :func:`fid_bootstrap` -- the samples of one draw resampled with replacement (the reference statistics
  held fixed): how much the figure would move with another draw of the same size, as far as one draw
  can tell. (A bootstrapped FID is biased upwards -- duplicated rows shrink the sample covariance's rank
  -- so the interval is the percentile interval of the bootstrap FIDs shifted by the point estimate's
  bias: the "basic" bootstrap, ``2 * fid - quantile``.)
* :func:`seed_interval` -- FIDs of several sampling seeds: mean, sample standard deviation and the
  Student-t interval of the mean.

    from fastncsn.metrics.intervals import fid_bootstrap, seed_interval
    r = fid_bootstrap(features, ref_stats, n_boot=200, seed=0)   # {'fid', 'low', 'high', 'level', ...}
    s = seed_interval([150.1, 139.4, 166.1])                     # {'mean', 'sd', 'low', 'high', ...}
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .fid import _gaussian, frechet_distance

__all__ = ["fid_bootstrap", "seed_interval"]


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    return float(level)


def fid_bootstrap(features, reference, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """FID of ``features`` against ``reference`` with a basic-bootstrap interval over the samples.

    Args:
        features: the samples' features ``[N, D]`` (tensor or array), N >= 2.
        reference: a feature matrix, a ``FeatureStats`` or a ``(mu, sigma)`` pair (held fixed).
        n_boot: bootstrap resamples (>= 20).
        seed: seed of the resampling (the result is a function of the inputs and ``seed``).
        level: coverage of the interval, in (0, 1).

    Returns:
        ``dict(fid, low, high, level, n, n_boot, boot_sd)``.
    """
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 20:
        raise ValueError(f"n_boot: expected an int >= 20, got {n_boot!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    level = _check_level(level)
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features: expected a feature matrix [N, D] with N >= 2, got shape {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features: holds NaN or inf")
    mu_r, s_r = _gaussian(reference, "reference")
    if int(torch.as_tensor(mu_r).numel()) != x.shape[1]:
        raise ValueError(f"reference: has dimension {int(torch.as_tensor(mu_r).numel())}, features {x.shape[1]}")

    def fid_of(rows: torch.Tensor) -> float:
        return frechet_distance(rows.mean(0), torch.cov(rows.T, correction=1), mu_r, s_r)

    point = fid_of(x)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    boots = np.array([fid_of(x[torch.randint(0, n, (n,), generator=g)]) for _ in range(n_boot)])
    a = (1.0 - level) / 2.0
    q_lo, q_hi = np.quantile(boots, [a, 1.0 - a])
    return dict(fid=point, low=max(0.0, 2.0 * point - float(q_hi)), high=2.0 * point - float(q_lo), level=level,
                n=n, n_boot=n_boot, boot_sd=float(boots.std(ddof=1)))


def seed_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean of per-seed FIDs with its Student-t interval: ``dict(mean, sd, low, high, level, n)``.

    ``values``: at least 2 finite figures, one per sampling seed."""
    level = _check_level(level)
    v = np.asarray(list(values), dtype=np.float64) if not isinstance(values, (str, bytes)) else None
    if v is None or v.ndim != 1 or v.size < 2 or not np.isfinite(v).all():
        raise ValueError(f"values: expected >= 2 finite numbers (one per seed), got {values!r}")
    mean, sd = float(v.mean()), float(v.std(ddof=1))
    from scipy.stats import t        # (scipy comes with scikit-learn, a dependency)
    half = float(t.ppf(1.0 - (1.0 - level) / 2.0, v.size - 1)) * sd / math.sqrt(v.size)
    return dict(mean=mean, sd=sd, low=mean - half, high=mean + half, level=level, n=int(v.size))
