import numpy as np
import pytest
import torch

from fastncsn.sampling import annealed_langevin, hmc_annealed, init_samples, langevin, step_sizes
from fastncsn.schedules import get_sigmas
from fastncsn.toy import mode_weight, seed003_mixture


def _lin_score(x, y):
    return -x * (y.float() + 1).view(-1, *([1] * (x.dim() - 1)))


def _reference_loop(x_mod, scorenet, sigmas, n_steps_each, step_lr, g):
    """The reference NCSN anneal_Langevin_dynamics, transcribed, with its randn_like drawn from ``g``."""
    for c, sigma in enumerate(sigmas):
        labels = (torch.ones(x_mod.shape[0]) * c).long()
        step_size = step_lr * (sigma / sigmas[-1]) ** 2
        for _ in range(n_steps_each):
            noise = torch.randn(x_mod.shape, generator=g, dtype=x_mod.dtype) * np.sqrt(step_size * 2)
            grad = scorenet(x_mod, labels)
            x_mod = x_mod + step_size * grad + noise
    return x_mod


def _tanh_score(x, y):
    return -torch.tanh(3 * x) * (y.to(x.dtype) + 1).view(-1, *([1] * (x.dim() - 1))) / 0.1


def test_reference_convention_reproduces_reference_loop(tol):
    sig_np = np.exp(np.linspace(np.log(1.0), np.log(0.01), 4))
    x0 = torch.rand(5, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    ref = _reference_loop(x0.clone(), _lin_score, sig_np, 7, 2e-5, torch.Generator().manual_seed(1))
    ours = annealed_langevin(_lin_score, x0, torch.tensor(sig_np).float(), eps=2e-5, steps_per_level=7,
                             step_convention="reference", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, ref, **tol[torch.float32])


def test_reference_convention_is_bitwise_the_reference_loop_in_float64():
    """Same generator, same draws in the same order: in float64 (where the reference's float64 step
    scalars are used unrounded) the trajectories are bitwise equal; another seed is not."""
    sig_np = np.exp(np.linspace(np.log(1.0), np.log(0.01), 10))
    x0 = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)).double()
    ref = _reference_loop(x0.clone(), _tanh_score, sig_np, 20, 2e-5, torch.Generator().manual_seed(1))
    kw = dict(eps=2e-5, steps_per_level=20, step_convention="reference")
    ours = annealed_langevin(_tanh_score, x0, torch.tensor(sig_np), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(ours, ref)
    other = annealed_langevin(_tanh_score, x0, torch.tensor(sig_np), generator=torch.Generator().manual_seed(2), **kw)
    assert not torch.allclose(other, ref)


def test_conventions_are_related():
    sig = get_sigmas("geometric", 1, 0.01, 5)
    a_paper = step_sizes(sig, 4e-5, "paper")
    torch.testing.assert_close(step_sizes(sig, 2e-5, "reference"), a_paper)
    a_snr = step_sizes(sig, 0.316, "snr")
    assert a_snr[-1].item() == pytest.approx(4e-5, rel=2e-3)  # snr 0.316 reproduces NCSN's 2e-5 step
    x0 = torch.rand(3, 4)
    kw = dict(steps_per_level=3)
    a = annealed_langevin(_lin_score, x0, sig, eps=4e-5, step_convention="paper", seed=3, **kw)
    b = annealed_langevin(_lin_score, x0, sig, eps=2e-5, step_convention="reference", seed=3, **kw)
    torch.testing.assert_close(a, b)


def test_same_seed_same_samples_and_different_seed_differs():
    sig = get_sigmas("geometric", 1, 0.01, 3)
    x0 = torch.rand(4, 2)
    a = annealed_langevin(_lin_score, x0, sig, steps_per_level=5, seed=7)
    b = annealed_langevin(_lin_score, x0, sig, steps_per_level=5, seed=7)
    c = annealed_langevin(_lin_score, x0, sig, steps_per_level=5, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_annealed_recovers_mixture_weights_vanilla_does_not():
    """Seed 003 Figure 3: with exact scores, annealed Langevin recovers the 4/5 weight, vanilla does not.

    Ladder as seed 003 section 4.3 (geometric 10 -> 0.1, L = 10) and uniform init on [-8, 8]^2 as the
    reference toy runner.  The runner's lr 0.1 on its sigma 20 -> 1 ladder (alpha_i = 0.1 sigma_i^2, T = 100)
    is eps = 1e-3 here and recovers only ~0.77: the mass stops flowing between the modes too early.
    Half that step with ten times the steps (eps 5e-4, T = 1000) gives ~0.795.  The vanilla chain uses
    the runner's lr 0.1 and 1000 steps on the data score itself.
    """
    gm = seed003_mixture()
    sig = get_sigmas("geometric", 10.0, 0.1, 10)
    g = torch.Generator().manual_seed(0)
    x0 = init_samples((10000, 2), "uniform", generator=g, low=-8, high=8)
    xa = annealed_langevin(gm.score_fn(sig), x0, sig, eps=5e-4, steps_per_level=1000, generator=g,
                           step_convention="paper")
    assert mode_weight(xa) == pytest.approx(0.80, abs=0.03)
    xv = langevin(lambda x, i: gm.score(x, 0.0), x0, eps=0.1, steps=1000, generator=g)
    assert abs(mode_weight(xv) - 0.80) > 0.1


def test_inpainting_keeps_known_pixels_and_denoise():
    sig = get_sigmas("geometric", 1, 0.01, 3)
    x0 = torch.rand(2, 1, 4, 4)
    known = torch.full((1, 1, 4, 4), 0.25)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    out = annealed_langevin(_lin_score, x0, sig, steps_per_level=4, seed=0, mask=mask, known=known, denoise=True)
    assert torch.equal(out[..., :2], known[..., :2].expand(2, 1, 4, 2))
    assert not torch.equal(out[..., 2:], x0[..., 2:])
    plain = annealed_langevin(_lin_score, x0, sig, steps_per_level=4, seed=0)
    plus = annealed_langevin(_lin_score, x0, sig, steps_per_level=4, seed=0, denoise=True)
    torch.testing.assert_close(plus, plain + sig[-1] ** 2 * _lin_score(plain, torch.full((2,), 2)))


def test_snapshots_buffer():
    sig = get_sigmas("geometric", 1, 0.01, 3)
    x0 = torch.rand(2, 3)
    out, snaps = annealed_langevin(_lin_score, x0, sig, steps_per_level=4, seed=0, snapshot_every=2)
    assert snaps.shape == (6, 2, 3)
    torch.testing.assert_close(snaps[-1], out)
    out1, snaps1 = annealed_langevin(_lin_score, x0, sig, steps_per_level=2, seed=0, snapshot_every=1)
    a0 = step_sizes(sig, 2e-5, "reference")[0].float()  # the defaults: NCSN_SAMPLING
    z0 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    first = x0 + a0 / 2 * _lin_score(x0, torch.zeros(2, dtype=torch.long)) + a0.sqrt() * z0
    torch.testing.assert_close(snaps1[0], first)


def test_hmc_runs_and_one_leapfrog_matches_langevin_scale():
    gm = seed003_mixture()
    sig = get_sigmas("geometric", 10.0, 0.1, 5)
    x0 = init_samples((500, 2), "uniform", generator=torch.Generator().manual_seed(0), low=-8, high=8)
    out = hmc_annealed(gm.score_fn(sig), x0, sig, eps=1e-3, steps_per_level=20, leapfrog_steps=2, seed=0,
                       step_convention="paper")
    assert out.shape == x0.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigmas=torch.tensor([0.1, 1.0])), "sigmas"),
    (dict(eps=0.0), "eps"),
    (dict(eps=-1e-3), "eps"),
    (dict(steps_per_level=0), "steps_per_level"),
    (dict(step_convention="ddpm"), "step_convention"),
    (dict(mask=torch.ones(3, 3), known=torch.zeros(2, 2)), "mask"),
    (dict(mask=torch.ones(2, 2)), "known"),
])
def test_bad_inputs(kwargs, match):
    args = dict(sigmas=torch.tensor([1.0, 0.1]), eps=1e-3, steps_per_level=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        annealed_langevin(_lin_score, torch.rand(2, 2), **args)


def test_nan_input_and_vanilla_bad_args():
    with pytest.raises(ValueError, match="x"):
        annealed_langevin(_lin_score, torch.tensor([[float("nan"), 0.0]]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="steps"):
        langevin(_lin_score, torch.rand(2, 2), eps=0.1, steps=0)
    with pytest.raises(ValueError, match="eps"):
        langevin(_lin_score, torch.rand(2, 2), eps=0.0, steps=1)


def test_one_defaults_table_for_every_sampler():
    """annealed_langevin, GraphSampler and fastncsn.sample() without settings all take NCSN's table:
    step_lr 2e-5 in the reference convention, T = 100 (the two samplers once differed by a factor 2)."""
    from fastncsn.sampling import NCSN_SAMPLING, GraphSampler, SamplerSettings
    assert (NCSN_SAMPLING["eps"], NCSN_SAMPLING["steps_per_level"], NCSN_SAMPLING["step_convention"]) == (
        2e-5, 100, "reference")
    sig = get_sigmas("geometric", 1, 0.01, 2)
    x0 = torch.rand(3, 2)
    z = torch.randn(2 * 100 * 2, 3, 2)
    draws = iter(z)
    ours = annealed_langevin(_lin_score, x0, sig, noise_fn=lambda like: next(draws))
    draws = iter(z)
    want = annealed_langevin(_lin_score, x0, sig, eps=2e-5, steps_per_level=100, step_convention="reference",
                             noise_fn=lambda like: next(draws))
    assert torch.equal(ours, want)
    gs = GraphSampler(_lin_score, 3, sigmas=sig, data_shape=(2,), use_graphs=False)
    assert gs.settings == SamplerSettings()
    torch.testing.assert_close(gs.alpha_table.double(), step_sizes(sig, 2e-5, "reference").float().double())


def test_sampler_settings_resolve_order_and_errors():
    from fastncsn.sampling import SamplerSettings
    from fastncsn.toy import ToyScoreNet
    model = ToyScoreNet(num_levels=2)
    s = SamplerSettings.resolve(model, steps_per_level=7)
    assert (s.step_convention, s.steps_per_level, s.eps) == (model.sampling_defaults["step_convention"], 7,
                                                             model.sampling_defaults["eps"])
    assert SamplerSettings.resolve().step_convention == "reference"
    for bad, name in [(dict(eps=0.0), "eps"), (dict(steps_per_level=0), "steps_per_level"),
                      (dict(init="normal"), "init"), (dict(init_range=(1.0, 0.0)), "init_range"),
                      (dict(denoise="yes"), "denoise"), (dict(clamp=(0, 1, 2)), "clamp"),
                      (dict(snapshot_every=-1), "snapshot_every")]:
        with pytest.raises(ValueError, match=name):
            SamplerSettings.resolve(**bad)
    with pytest.raises(TypeError, match="unknown"):
        SamplerSettings.resolve(step_lr=1e-5)


def test_seed_must_be_an_int_in_range():
    """``seed=1.5`` was silently truncated to 1 (issue 24): a TypeError naming seed on every path; out of
    [0, 2**63) a ValueError."""
    import fastncsn
    from fastncsn.models.refinenet import CondRefineNetDilated
    from fastncsn.sampling import GraphSampler
    from fastncsn.training import train
    x = torch.rand(2, 3)
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=2)
    calls = [lambda s: annealed_langevin(_lin_score, x, [1.0, 0.5], steps_per_level=1, seed=s),
             lambda s: fastncsn.sample(model, n=1, steps_per_level=1, seed=s, progress=False),
             lambda s: GraphSampler(_lin_score, 1, sigmas=[1.0, 0.5], data_shape=(3,), steps_per_level=1,
                                    use_graphs=False).sample(1, seed=s),
             lambda s: train(data="digits", steps=1, batch_size=2, ngf=4, num_levels=2, seed=s, progress=False)]
    for call in calls:
        for bad in (1.5, True, "3"):
            with pytest.raises(TypeError, match=r"^seed: expected an int in \[0, 2\*\*63\)"):
                call(bad)
        for bad in (-1, 2 ** 63):
            with pytest.raises(ValueError, match=r"^seed: expected an int in \[0, 2\*\*63\)"):
                call(bad)
