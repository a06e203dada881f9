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

:func:`fid_intervals` does both for the samples of several seeds under the digits or MNIST metric (what the
experiments' tables print): per-seed FIDs with their bootstrap intervals, and the seeds' interval.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .fid import _gaussian, frechet_distance

__all__ = ["fid_bootstrap", "seed_interval", "fid_intervals", "INTERVAL_COLUMNS"]

#: the columns :func:`fid_intervals` adds to an experiment's row (prefix ``<metric>_fid``)
INTERVAL_COLUMNS = ("fid_mean", "fid_seed_low", "fid_seed_high", "fid_boot_low", "fid_boot_high", "fid_seeds")


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


def fid_intervals(sample_sets: Sequence[torch.Tensor], metric: str = "digits", n_boot: int = 200,
                  level: float = 0.95, batch_size: int = 512, extractor=None, reference=None) -> dict:
    """FIDs of the samples of several sampling seeds, each with its bootstrap interval, and the seeds' interval.

    Args:
        sample_sets: one image tensor ``[N, 1, 28, 28]`` in [0, 1] per sampling seed (>= 1; the seeds'
            interval needs >= 2).
        metric: ``"digits"`` (the shipped digits classifier's features against all 1797 embedded digits) or
            ``"mnist"`` (the MNIST classifier's against the 60,000 training digits).
        n_boot, level: of the bootstrap (:func:`fid_bootstrap`, resampling seed 0) and of both intervals.
        extractor, reference: another feature extractor (``images -> [N, D]``) and its reference statistics
            (``(mu, sigma)`` or ``FeatureStats``) in place of ``metric``'s (both or neither).

    Returns:
        ``dict(fids, boot_sd, boot_low, boot_high, fid_mean, fid_seed_low, fid_seed_high, fid_boot_low,
        fid_boot_high, fid_seeds)``: per seed the FID, the bootstrap standard deviation and the interval
        ``fid +- z * boot_sd`` (z the normal quantile of ``level``); their mean with the Student-t interval
        over the seeds (None for one seed); ``fid_boot_low / high``: ``mean +- z * mean(boot_sd) /
        sqrt(seeds)``, the spread of the mean that resampling the samples alone would give; ``fid_seeds``
        the per-seed FIDs joined by "/".

    The bootstrap intervals here are centred on the point estimates: :func:`fid_bootstrap`'s basic interval
    also subtracts the resampling bias, which near the floor exceeds the figure itself (500 real digits:
    FID 16-53, bootstrap bias ~40, basic interval [0, -2]) -- the spread is what the tables need.
    """
    from .extractors import metric_parts
    if metric not in ("digits", "mnist"):
        raise ValueError(f"metric: expected 'digits' or 'mnist', got {metric!r}")
    sets = list(sample_sets)
    if not sets:
        raise ValueError("sample_sets: expected the samples of at least one seed")
    if (extractor is None) != (reference is None):
        raise ValueError("extractor, reference: give both (or neither, for the metric's own)")
    features, ref = (extractor, reference) if extractor is not None else metric_parts(metric)
    boots = []
    for x in sets:
        with torch.inference_mode():
            feats = torch.cat([features(b) for b in torch.as_tensor(x).float().split(batch_size)])
        boots.append(fid_bootstrap(feats, ref, n_boot=n_boot, seed=0, level=level))
    from scipy.stats import norm
    z = float(norm.ppf(1.0 - (1.0 - level) / 2.0))
    fids, sds = [b["fid"] for b in boots], [b["boot_sd"] for b in boots]
    mean = float(np.mean(fids))
    seeds = seed_interval(fids, level) if len(fids) >= 2 else None
    half = z * float(np.mean(sds)) / math.sqrt(len(boots))
    return dict(fids=fids, boot_sd=sds, boot_low=[max(0.0, f - z * d) for f, d in zip(fids, sds)],
                boot_high=[f + z * d for f, d in zip(fids, sds)],
                fid_mean=mean, fid_seed_low=seeds["low"] if seeds else None,
                fid_seed_high=seeds["high"] if seeds else None, fid_boot_low=max(0.0, mean - half),
                fid_boot_high=mean + half, fid_seeds="/".join(f"{f:.1f}" for f in fids))
