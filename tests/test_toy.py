import pytest
import torch

from fastncsn.sampling import annealed_langevin, init_samples
from fastncsn.toy import (CircleManifold, GaussianMixture, ToyScoreNet, mode_weight, seed003_mixture,
                          seed004_wide_peaked, train_toy)


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
    x = torch.tensor([[4.0, 0.0], [0.5, 0.0], [0.0, -3.0]])
    s = circ.score(x, 0.2)
    # outside the circle the score points inwards, inside it points outwards (radially)
    assert s[0, 0] < 0 and s[1, 0] > 0 and s[2, 1] > 0
    assert circ.sample(100).norm(dim=1).sub(2.0).abs().max() < 1e-5
    with pytest.raises(ValueError, match="sigma"):
        circ.score(x, 0.0)


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
        out = annealed_langevin(model, x0, model.sigmas, eps=1e-3, steps_per_level=200, generator=g)
    assert mode_weight(out) == pytest.approx(0.80, abs=0.05)
