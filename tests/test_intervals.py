"""FID intervals (issue 27 item 5): bootstrap over samples, Student-t over seeds."""
import math

import numpy as np
import pytest
import torch

from fastncsn.metrics.fid import fid_from_features
from fastncsn.metrics.intervals import fid_bootstrap, seed_interval


def _gauss(n, shift, seed, d=4):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_t_quantiles_match_the_tables():
    """The interval's half-width is t_{1 - a/2, n - 1} sd / sqrt(n), with t from the printed tables."""
    for level, df, want in [(0.95, 1, 12.7062), (0.95, 2, 4.3027), (0.95, 4, 2.7764), (0.95, 30, 2.0423),
                            (0.90, 4, 2.1318)]:
        r = seed_interval([float(v % 3) for v in range(df + 1)], level=level)
        assert (r["high"] - r["mean"]) * math.sqrt(df + 1) / r["sd"] == pytest.approx(want, abs=1e-4)


def test_seed_interval():
    r = seed_interval([150.1, 139.4, 166.1])
    assert r["mean"] == pytest.approx(151.8667, abs=1e-4) and r["n"] == 3
    assert r["sd"] == pytest.approx(float(np.std([150.1, 139.4, 166.1], ddof=1)))
    assert r["high"] - r["mean"] == pytest.approx(4.3027 * r["sd"] / math.sqrt(3), rel=1e-4)
    assert seed_interval([1.0, 2.0, 3.0], level=0.5)["high"] < seed_interval([1.0, 2.0, 3.0])["high"]
    for bad in ([1.0], [1.0, float("nan")], "12"):
        with pytest.raises(ValueError, match="^values:"):
            seed_interval(bad)
    with pytest.raises(ValueError, match="^level:"):
        seed_interval([1.0, 2.0], level=95)


def test_bootstrap_brackets_the_truth_and_narrows_with_n():
    ref = _gauss(20000, 0.0, 0)
    truth = 4 * 0.5 ** 2                       # N(0.5, I) vs N(0, I) in 4 dimensions: |mu|^2, equal covariances
    small, large = (fid_bootstrap(_gauss(n, 0.5, 1), ref, n_boot=100, seed=0) for n in (200, 3200))
    for r in (small, large):
        assert r["low"] <= r["fid"] <= r["high"]
        assert r["low"] < truth < r["high"], r
    assert (small["high"] - small["low"]) > 2.5 * (large["high"] - large["low"])   # ~sqrt(16) = 4
    assert small["fid"] == pytest.approx(fid_from_features(_gauss(200, 0.5, 1), ref))


def test_bootstrap_coverage_over_draws():
    """The 90% interval holds the true FID in most of 20 independent draws (17 of 20 on 2026-12-02; the
    percentile interval 16; an interval a third as wide 8, so a too-narrow interval fails here)."""
    ref = (torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    truth = 4 * 0.5 ** 2
    hits = sum(r["low"] < truth < r["high"]
               for r in (fid_bootstrap(_gauss(100, 0.5, 10 + k), ref, n_boot=100, seed=k, level=0.9)
                         for k in range(20)))
    assert hits >= 14, hits


def test_bootstrap_is_a_function_of_its_seed_and_checks_its_arguments():
    x, ref = _gauss(50, 0.2, 3), _gauss(500, 0.0, 4)
    assert fid_bootstrap(x, ref, n_boot=30, seed=5) == fid_bootstrap(x, ref, n_boot=30, seed=5)
    assert fid_bootstrap(x, ref, n_boot=30, seed=5) != fid_bootstrap(x, ref, n_boot=30, seed=6)
    for kw, name in [(dict(n_boot=5), "n_boot"), (dict(seed=-1), "seed"), (dict(level=1.0), "level")]:
        with pytest.raises(ValueError, match=f"^{name}:"):
            fid_bootstrap(x, ref, **kw)
    with pytest.raises(ValueError, match="^features:"):
        fid_bootstrap(x[:1], ref)
    with pytest.raises(ValueError, match="^reference: has dimension"):
        fid_bootstrap(x, _gauss(500, 0.0, 4, d=3))


def test_fid_intervals_per_seed_figures_are_the_metric_and_the_mean_has_both_intervals():
    from fastncsn.data import embedded_digits
    from fastncsn.metrics import digits_fid
    from fastncsn.metrics.intervals import INTERVAL_COLUMNS, fid_intervals
    x = embedded_digits()[0]
    g = torch.Generator().manual_seed(0)
    sets = [x[torch.randperm(x.shape[0], generator=g)[:200]] for _ in range(3)]
    r = fid_intervals(sets, n_boot=20)
    for f, s in zip(r["fids"], sets):
        assert abs(f - digits_fid(s)) < 1e-6 * max(1.0, f)
    assert all(lo <= f < hi for lo, f, hi in zip(r["boot_low"], r["fids"], r["boot_high"]))
    assert r["fid_seed_low"] < r["fid_mean"] < r["fid_seed_high"] and r["fid_boot_low"] < r["fid_mean"]
    assert set(INTERVAL_COLUMNS) <= set(r) and len(r["fid_seeds"].split("/")) == 3
    # the bootstrap spread of the mean shrinks as 1/sqrt(seeds): one seed's is wider than three's
    one = fid_intervals(sets[:1], n_boot=20)
    assert one["fid_seed_low"] is None
    assert one["fid_boot_high"] - one["fid_boot_low"] > r["fid_boot_high"] - r["fid_boot_low"]
    with pytest.raises(ValueError, match="extractor, reference"):
        fid_intervals(sets, extractor=lambda t: t.flatten(1))
    with pytest.raises(ValueError, match="metric"):
        fid_intervals(sets, metric="cifar")
