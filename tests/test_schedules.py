import math

import numpy as np
import pytest
import torch

from fastncsn.schedules import (SCHEDULES, get_sigmas, num_levels_for_overlap, overlap_probabilities,
                                sigma_1_from_data, step_rule_value, step_size_for, validate_sigmas)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("L", [2, 10, 200])
def test_rescaled_endpoints_and_monotone(kind, L):
    if kind == "sigmoid" and L > 30:
        # the printed sigmoid saturates (equal levels in float64) beyond L = 29: a clear error
        with pytest.raises(ValueError, match="strictly decreasing"):
            get_sigmas(kind, 50.0, 0.01, L)
        return
    s = get_sigmas(kind, 50.0, 0.01, L)
    assert s.shape == (L,) and s.dtype == torch.float32
    assert s[0].item() == pytest.approx(50.0, rel=1e-6) and s[-1].item() == pytest.approx(0.01, rel=1e-5)
    assert bool((s[1:] < s[:-1]).all())


def test_printed_formulas():
    k = np.arange(10.0)
    torch.testing.assert_close(get_sigmas("geometric", 1, 0.01, 10, rescale=False, dtype=torch.float64),
                               torch.tensor(10.0 ** (-2 * k / 9)))
    torch.testing.assert_close(get_sigmas("linear", 1, 0.01, 10, rescale=False, dtype=torch.float64),
                               torch.tensor(1 - k * 0.11))
    torch.testing.assert_close(get_sigmas("cosine", 2, 0.01, 10, rescale=False, dtype=torch.float64),
                               torch.tensor(2 * np.cos(k / (1.0064 * 10) * np.pi / 2)))
    torch.testing.assert_close(get_sigmas("squared_cosine", 2, 0.01, 10, rescale=False, dtype=torch.float64),
                               torch.tensor(2 * np.cos(k / (1.068 * 10) * np.pi / 2) ** 2))
    torch.testing.assert_close(get_sigmas("sigmoid", 1, 0.01, 10, rescale=False, dtype=torch.float64),
                               torch.tensor(1.009 - 1 / (1 + np.exp(-k - 2.5))))
    # the printed sigmoid does not start at sigma_1
    assert get_sigmas("sigmoid", 1, 0.01, 10, rescale=False)[0].item() == pytest.approx(0.0849, abs=1e-4)


def test_geometric_equals_reference_code():
    ref = torch.tensor(np.exp(np.linspace(np.log(1.0), np.log(0.01), 10))).float()
    assert torch.equal(get_sigmas("geometric", 1.0, 0.01, 10), ref)


def test_rescale_keeps_shape_affinely():
    p = get_sigmas("cosine", 1, 0.01, 10, rescale=False, dtype=torch.float64)
    r = get_sigmas("cosine", 1, 0.01, 10, dtype=torch.float64)
    lin = (p - p[0]) / (p[-1] - p[0])
    torch.testing.assert_close((r - r[0]) / (r[-1] - r[0]), lin)


@pytest.mark.parametrize("bad,match", [
    ([1.0, 1.0], "strictly decreasing"), ([0.1, 0.5], "strictly decreasing"), ([], "1-D"),
    ([1.0, float("nan")], "finite"), ([1.0, -0.1], "positive"), ([[1.0]], "1-D")])
def test_validate_sigmas(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_sigmas(torch.tensor(bad), "sigmas")


def test_get_sigmas_bad_args():
    with pytest.raises(ValueError, match="kind"):
        get_sigmas("exponential")
    with pytest.raises(ValueError, match="L"):
        get_sigmas("geometric", 1, 0.01, 0)
    with pytest.raises(ValueError, match="sigma_1"):
        get_sigmas("geometric", 0.01, 1.0, 10)


def test_overlap_geometric_ncsn_is_zero_and_rises_with_L():
    p10 = overlap_probabilities(get_sigmas("geometric", 1, 0.01, 10), 3072)
    assert p10.shape == (9,) and float(p10.max()) < 1e-10 and float(p10.min()) >= 0
    prev = 0.0
    for L in (50, 100, 200, 500, 2000):
        p = float(overlap_probabilities(get_sigmas("geometric", 1, 0.01, L), 3072).mean())
        assert p >= prev
        prev = p
    assert prev > 0.99


def test_overlap_formula_single_pair():
    from scipy.stats import norm
    g, D = 1.05, 784
    expected = norm.cdf(math.sqrt(2 * D) * (g - 1) + 3 * g) - norm.cdf(math.sqrt(2 * D) * (g - 1) - 3 * g)
    got = float(overlap_probabilities(torch.tensor([g, 1.0], dtype=torch.float64), D)[0])
    assert got == pytest.approx(expected, rel=1e-9)


def test_sigma_1_from_data_exact_and_estimate():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    brute = max(float((x[i] - x[j]).norm()) for i in range(300) for j in range(i + 1, 300))
    assert sigma_1_from_data(x) == pytest.approx(brute, rel=1e-6)
    est = sigma_1_from_data(x, max_exact=10, generator=torch.Generator().manual_seed(1))
    assert brute / 2 <= est <= brute + 1e-9
    assert est > 0.9 * brute  # farthest-point hops find nearly the diameter on Gaussian data


def test_num_levels_for_overlap():
    L = num_levels_for_overlap(1.0, 0.01, 3072, C=0.5)
    p = lambda n: float(overlap_probabilities(get_sigmas("geometric", 1, 0.01, n, dtype=torch.float64), 3072)[0])
    assert p(L) >= 0.5 > p(L - 1)
    with pytest.raises(ValueError, match="C"):
        num_levels_for_overlap(1.0, 0.01, 3072, C=1.5)


def test_step_size_rule():
    gamma = (50 / 0.01) ** (1 / 231)
    eps = step_size_for(5, gamma, 0.01)
    assert eps == pytest.approx(6.2e-6, rel=0.02)  # NCSNv2's CIFAR-10 step size
    best = abs(step_rule_value(eps, 5, gamma, 0.01) - 1)
    for other in (eps * 0.9, eps * 1.1):
        assert abs(step_rule_value(other, 5, gamma, 0.01) - 1) >= best
    with pytest.raises(ValueError, match="T"):
        step_size_for(0, gamma, 0.01)
    with pytest.raises(ValueError, match="gamma"):
        step_size_for(5, 0.5, 0.01)
