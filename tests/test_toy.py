import math

import pytest
import torch

import fastncsn
from fastncsn.models import MODEL_REGISTRY
from fastncsn.sampling import annealed_langevin, init_samples
from fastncsn.schedules import get_sigmas
from fastncsn.toy import (CircleManifold, GaussianMixture, MixtureScoreModel, ToyScoreNet, mode_weight,
                          seed003_mixture, seed004_wide_peaked, train_toy)


@pytest.mark.parametrize("mix", [seed003_mixture(), seed004_wide_peaked()])
@pytest.mark.parametrize("sigma", [0.0, 0.3, 4.0])
def test_exact_score_is_gradient_of_log_prob(mix, sigma):
    x = (torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 6).double().requires_grad_(True)
    lp = mix.log_prob(x, sigma).sum()
    (grad,) = torch.autograd.grad(lp, x)
    torch.testing.assert_close(mix.score(x.detach(), sigma), grad, rtol=1e-9, atol=1e-9)


def test_per_sample_sigma_and_sampling_weights():
    mix = seed004_wide_peaked()
    x = torch.randn(5, 2, dtype=torch.float64)
    s = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    per = mix.score(x, s)
    for i in range(5):
        torch.testing.assert_close(per[i], mix.score(x[i:i + 1], float(s[i]))[0])
    samples = mix.sample(20000, generator=torch.Generator().manual_seed(0))
    assert mode_weight(samples) == pytest.approx(0.8, abs=0.01)


def test_circle_score_points_to_circle():
    circ = CircleManifold(radius=2.0)
    x = torch.tensor([[4.0, 0.0], [0.5, 0.0], [0.0, -3.0], [0.0, 0.0]])
    s = circ.score(x, 0.2)
    # outside the circle the score points inwards, inside it points outwards (radially); zero at the centre
    assert s[0, 0] < 0 and s[1, 0] > 0 and s[2, 1] > 0 and torch.equal(s[3], torch.zeros(2))
    assert circ.sample(100).norm(dim=1).sub(2.0).abs().max() < 1e-5
    with pytest.raises(ValueError, match="sigma"):
        circ.score(x, 0.0)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_circle_closed_form_against_autograd_and_angle_quadrature(sigma):
    circ = CircleManifold(radius=2.0, center=(0.5, -1.0))
    x = (torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2.5)
    x[0] = circ.center + torch.tensor([1e-9, 0.0], dtype=torch.float64)   # the series branch near the centre
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(circ.log_prob(xg, sigma).sum(), xg)
    torch.testing.assert_close(circ.score(x, sigma), grad, rtol=1e-8, atol=1e-9)
    # independent check: the circle as 4096 equal point masses smoothed by sigma (trapezoid rule in the angle)
    t = torch.arange(4096, dtype=torch.float64) * (2 * math.pi / 4096)
    pts = circ.center + 2.0 * torch.stack([t.cos(), t.sin()], dim=1)
    quad = GaussianMixture(pts, torch.zeros(4096), torch.ones(4096))
    torch.testing.assert_close(circ.score(x, sigma), quad.score(x, sigma), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(circ.log_prob(x, sigma), quad.log_prob(x, sigma), rtol=1e-9, atol=1e-9)


def test_circle_density_integrates_to_one():
    circ = CircleManifold(radius=1.5)
    h = 0.02
    g = torch.arange(-4.0, 4.0, h, dtype=torch.float64)
    xx = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).reshape(-1, 2)
    assert float(circ.log_prob(xx, 0.4).exp().sum() * h * h) == pytest.approx(1.0, abs=1e-4)


def test_score_fn_matches_score_per_level():
    mix, circ = seed004_wide_peaked(), CircleManifold(1.0)
    sig = get_sigmas("geometric", 10.0, 0.1, 4)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    for dist in (mix, circ):
        torch.testing.assert_close(dist.score_fn(sig)(x, idx), dist.score(x, sig.double()[idx]))
    with pytest.raises(ValueError, match="sigmas"):
        mix.score_fn(torch.tensor([0.1, 1.0]))


def test_mixture_score_model_follows_contract_and_roundtrips(tmp_path):
    mix = seed003_mixture()
    model = MixtureScoreModel.from_mixture(mix, num_levels=5)
    assert MODEL_REGISTRY["MixtureScoreModel"] is MixtureScoreModel and model.data_shape == (2,)
    assert model.sigmas.dtype == torch.float32 and model.sigmas.shape == (5,)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([0, 1, 2, 3, 4, 4])
    torch.testing.assert_close(model(x, idx), mix.score(x, model.sigmas.double()[idx]))
    fastncsn.save(model, str(tmp_path / "mix.pt"))
    back = fastncsn.load(str(tmp_path / "mix.pt"))
    assert isinstance(back, MixtureScoreModel) and back.config == model.config
    torch.testing.assert_close(back(x, idx), model(x, idx))
    with pytest.raises(ValueError, match="x"):
        model(torch.zeros(2, 3), idx[:2])


def test_mixture_bad_args():
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0, 0.0]], [1.0], [-1.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([0.0, 0.0], [1.0], [1.0])


@pytest.mark.slow
def test_dsm_trained_mlp_recovers_weights():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mix = seed003_mixture()
    model = ToyScoreNet(num_levels=10)
    losses = train_toy(model, mix, steps=2000, batch_size=256, lr=1e-3, generator=g)
    assert sum(losses[-100:]) < sum(losses[:100])
    x0 = init_samples((10000, 2), "uniform", generator=g, low=-8, high=8)
    with torch.no_grad():
        out = annealed_langevin(model, x0, model.sigmas, eps=1e-3, steps_per_level=200, generator=g,
                                step_convention="paper")
    assert mode_weight(out) == pytest.approx(0.80, abs=0.05)
