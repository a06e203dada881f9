"""The sampler plans (fastncsn/sampling/rules.py): the same samples on both executors, sample k a function
of (seed, k) only, every sampler correct on exact scores, the releases' ALD samples reproduced."""
import hashlib
import math

import pytest
import torch
from torch import nn

import fastncsn
from fastncsn.sampling import SAMPLERS, annealed_langevin, plan
from fastncsn.sampling.core import SamplerSettings
from fastncsn.sampling.rules import SLOT_STRIDE, build_plan, noise_rows, run_plan
from fastncsn.schedules import get_sigmas
from fastncsn.toy import MixtureScoreModel, mode_weight, seed003_mixture

# settings that keep every sampler's test fast (ald: T steps; the others: their defaults)
FAST = {"ald": dict(steps_per_level=3), "cas": {}, "pc": {}, "heun": {}}


class GaussModel(nn.Module):
    """The exact perturbed score of N(MU, STD^2 I) on 1x4x4 images: s(x, i) = (MU - x) / (STD^2 + sigma_i^2).
    (D = 16: the graph executor draws the Langevin noise in the fused step; the toy's D = 2 takes the padded path.)"""

    MU, STD = 0.3, 0.2

    def __init__(self, sigmas):
        super().__init__()
        self.register_buffer("sigmas", torch.as_tensor(sigmas, dtype=torch.float32))
        self.data_shape = (1, 4, 4)

    def forward(self, x, level):
        var = self.STD ** 2 + self.sigmas[level].view(-1, 1, 1, 1) ** 2
        return (self.MU - x) / var


def _hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def _toy(levels=10, sigma_1=10.0, sigma_L=0.1):
    return MixtureScoreModel.from_mixture(seed003_mixture(),
                                          sigmas=get_sigmas("geometric", sigma_1, sigma_L, levels).tolist())


def test_ald_batch_noise_reproduces_the_releases():
    """noise='batch' is the releases' ALD: the hashes were recorded with the code before the sampler plans
    (commit 9a8f7b2, this machine's CPU build) -- the default settings on the toy and the bundled model."""
    toy = MixtureScoreModel.from_mixture(seed003_mixture())
    kw = dict(n=8, steps_per_level=3, seed=1, progress=False, noise="batch")
    assert _hash(fastncsn.sample(toy, fast=False, **kw)) == "0001109879c7dd9f"
    assert _hash(fastncsn.sample(toy, fast=True, **kw)) == "ce251a283ded076d"
    assert _hash(fastncsn.sample(toy, fast=True, batch_size=3, **kw)) == "8b1d75b18f36b62d"
    assert _hash(fastncsn.sample(toy, fast=False, batch_size=3, **kw)) == "e7aede82255b68d4"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # the network's float sums depend on the thread count (recorded with 1)
    try:
        x = fastncsn.sample(n=4, steps_per_level=2, seed=0, progress=False, fast=False, noise="batch")
    finally:
        torch.set_num_threads(threads)
    assert _hash(x) == "efc3c4ceb47540aa"


@pytest.mark.parametrize("denoise", [False, True])
@pytest.mark.parametrize("inpaint", [False, True])
def test_ald_plan_is_algorithm_1(denoise, inpaint):
    """The ald plan run with the same noise is annealed_langevin, bit for bit (steps, inpainting, denoising)."""
    model = GaussModel(get_sigmas("geometric", 1.0, 0.05, 4))
    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = known = None
    if inpaint:
        mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
        mask[..., :2] = True
        known = torch.full((1, 1, 4, 4), 0.7).expand(3, 1, 4, 4)
    settings = SamplerSettings.resolve(model, sampler="ald", steps_per_level=5, eps=3e-3, denoise=denoise)
    p = build_plan(settings, model.sigmas)
    drawn = []

    def noise(slot, like):
        z = noise_rows(torch.tensor(7), slot * SLOT_STRIDE, like)
        drawn.append(z)
        return z
    ours = run_plan(p, model, x0, seed=7, noise=noise, mask=mask, known=known if inpaint else None)
    draws = iter(drawn)
    want = annealed_langevin(model, x0, model.sigmas, eps=3e-3, steps_per_level=5, denoise=denoise,
                             noise_fn=lambda like: next(draws), mask=mask, known=known)
    assert torch.equal(ours, want)
    assert len(drawn) == 4 * 5 + (4 if inpaint else 0)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kind", ["toy", "image"])
def test_both_executors_give_the_same_samples(sampler, kind):
    model = _toy() if kind == "toy" else GaussModel(get_sigmas("geometric", 1.0, 0.05, 5))
    kw = dict(n=7, seed=3, progress=False, sampler=sampler, **FAST[sampler])
    ref = fastncsn.sample(model, fast=False, **kw)
    assert torch.equal(ref, fastncsn.sample(model, fast=True, **kw))
    assert torch.equal(ref, fastncsn.sample(model, fast=True, batch_size=3, **kw))
    if sampler != "heun":   # inpainting too
        mask = torch.zeros(model.data_shape, dtype=torch.bool)
        mask.view(-1)[0] = True
        known = torch.ones(model.data_shape)
        a = fastncsn.sample(model, fast=False, mask=mask, known=known, **kw)
        b = fastncsn.sample(model, fast=True, batch_size=4, mask=mask, known=known, **kw)
        assert torch.equal(a, b)
        # the known pixel: known + sigma_L z after the last level, known itself after a denoising step
        tol = 0 if plan(model, sampler=sampler, **FAST[sampler]).final[-1:] and \
            plan(model, sampler=sampler, **FAST[sampler]).final[-1].denoise else 5 * float(model.sigmas[-1])
        assert torch.allclose(a.reshape(7, -1)[:, 0], torch.ones(7), rtol=0, atol=tol)
    snaps_ref = fastncsn.sample(model, fast=False, snapshot_every=1, **kw)[1]
    snaps_fast = fastncsn.sample(model, fast=True, snapshot_every=1, batch_size=2, **kw)[1]
    assert snaps_ref.shape[0] == plan(model, sampler=sampler, **FAST[sampler]).snapshot_steps
    assert torch.equal(snaps_ref, snaps_fast)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("fast", [False, True])
def test_sample_k_depends_on_seed_and_k_only(sampler, fast):
    model = _toy() if sampler != "ald" else GaussModel(get_sigmas("geometric", 1.0, 0.05, 3))
    kw = dict(seed=11, progress=False, sampler=sampler, fast=fast, **FAST[sampler])
    x16 = fastncsn.sample(model, n=16, **kw)
    x64 = fastncsn.sample(model, n=64, **kw)
    assert torch.equal(x16, x64[:16])
    assert torch.equal(x16, fastncsn.sample(model, n=16, batch_size=8, **kw))
    # a process sampling from index 16 on draws samples 16.. of the same run
    assert torch.equal(x64[16:40], fastncsn.sample(model, n=24, first_index=16, batch_size=5, **kw))
    assert not torch.equal(x16, fastncsn.sample(model, n=16, **dict(kw, seed=12)))


#: a ladder fine enough for one step per level on the toy mixture (sigma_1 >> the modes' distance)
TOY_FINE = dict(levels=100, sigma_1=100.0, sigma_L=0.05)
EXACT = {"ald": dict(denoise=True), "cas": dict(eps=0.1), "pc": {}, "heun": {}}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_recovers_the_mixture(sampler):
    """Exact scores of 1/5 N((-5,-5), I) + 4/5 N((5,5), I): the heavy mode's weight within 0.03 of 0.8 on
    10,000 samples and each mode's per-coordinate variance within 0.1 of 1."""
    # ald: the toy's own defaults (L = 10, T = 100; on the fine ladder T = 5 lags: variance 1.12-1.5, measured);
    # one step per level needs the fine ladder
    model = _toy() if sampler == "ald" else _toy(**TOY_FINE)
    x = fastncsn.sample(model, n=10_000, seed=0, progress=False, fast=False, sampler=sampler, **EXACT[sampler])
    assert abs(mode_weight(x) - 0.8) < 0.03
    heavy, light = x[x.sum(1) > 0], x[x.sum(1) <= 0]
    for part, centre in ((heavy, 5.0), (light, -5.0)):
        assert torch.allclose(part.mean(0), torch.full((2,), centre), atol=0.1)
        assert torch.allclose(part.var(0), torch.ones(2), atol=0.1)


def test_cas_keeps_each_level_at_its_sigma():
    """Consistent annealed sampling (Jolicoeur-Martineau et al. 2020): on a point mass at 0 (score -x/sigma^2)
    the samples after level i have standard deviation sigma_{i+1} exactly, whatever eta."""
    sig = get_sigmas("geometric", 10.0, 0.1, 6)

    class PointMass(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("sigmas", sig.float())
            self.data_shape = (4,)

        def forward(self, x, level):
            return -x / self.sigmas[level].view(-1, 1) ** 2
    model = PointMass()
    for eta in (0.7, 0.9, 1.3):
        settings = SamplerSettings.resolve(model, sampler="cas", eps=eta, denoise=False)
        p = build_plan(settings, model.sigmas)
        x0 = 10.0 * torch.randn(20_000, 4, generator=torch.Generator().manual_seed(0))
        _, snaps = run_plan(p, model, x0, seed=0, snapshot_every=1)
        for i in range(5):
            assert abs(float(snaps[i].std()) / float(sig[i + 1]) - 1) < 0.01, (eta, i)


def test_nfe_of_every_sampler():
    model = _toy(levels=10)
    assert plan(model, sampler="ald", steps_per_level=20, denoise=True).nfe == 201
    assert plan(model, sampler="ald", steps_per_level=4, denoise=False).nfe == 40
    assert plan(model, sampler="cas", steps_per_level=4).nfe == 40
    assert plan(model, sampler="pc", steps_per_level=1).nfe == 20
    assert plan(model, sampler="pc", steps_per_level=3, denoise=False).nfe == 39
    assert plan(model, sampler="heun").nfe == 19


@pytest.mark.parametrize("call, name", [
    (dict(sampler="heun", steps_per_level=2), "steps_per_level"),
    (dict(sampler="cas", eps=0.2), "eps"),
    (dict(sampler="cas", noise="batch"), "noise"),
    (dict(sampler="pc", noise="everywhere"), "noise"),
    (dict(sampler="euler"), "sampler"),
    (dict(sampler="heun", mask=torch.ones(2, dtype=torch.bool), known=torch.zeros(2)), "mask"),
    (dict(noise="batch", first_index=3), "first_index"),
])
def test_a_sampler_that_cannot_run_says_so_first(call, name, monkeypatch):
    model = _toy(levels=10)
    monkeypatch.setattr(model, "forward", lambda *a: pytest.fail("the model ran"))
    with pytest.raises(ValueError) as err:
        fastncsn.sample(model, n=2, progress=False, fast=False, **call)
    assert str(err.value).startswith(name + ":") and "\n" not in str(err.value)


def test_per_sampler_defaults_and_the_models_own():
    """A model's sampling_defaults are for its sampler (default ald); another sampler takes its own row of
    SAMPLER_DEFAULTS (and only the model's data settings, init_range and clamp)."""
    toy = _toy(levels=10)       # TOY_SAMPLING: ald, eps 0.25 snr, T 100, uniform on [-8, 8]
    ald = SamplerSettings.resolve(toy)
    assert (ald.sampler, ald.eps, ald.steps_per_level, ald.init_range) == ("ald", 0.25, 100, (-8.0, 8.0))
    cas = SamplerSettings.resolve(toy, sampler="cas")
    assert (cas.eps, cas.steps_per_level, cas.init, cas.denoise, cas.init_range) == (0.75, 1, "gaussian", True,
                                                                                     (-8.0, 8.0))
    toy.sampling_defaults = dict(toy.sampling_defaults, sampler="pc", steps_per_level=2)
    pc = SamplerSettings.resolve(toy)
    assert (pc.sampler, pc.steps_per_level) == ("pc", 2)
    assert SamplerSettings.resolve(toy, sampler="ald").steps_per_level == 100


def test_noise_rows_is_the_fused_steps_stream():
    """For D % 4 == 0 a row's noise is langevin_noise_ref's stream at the row's counters (what the fused
    kernel draws); padded rows (D % 4 != 0) are cut from the same stream."""
    from fastncsn.ops import langevin_noise_ref
    like = torch.empty(5, 8)
    z = noise_rows(torch.tensor(3), 10, like)
    assert torch.equal(z, langevin_noise_ref(3, 10, like))
    assert torch.equal(noise_rows(torch.tensor(3), 14, like[2:]), z[2:])
    odd = noise_rows(torch.tensor(3), 10, torch.empty(5, 3))
    assert torch.equal(odd, langevin_noise_ref(3, 10, torch.empty(5, 4))[:, :3])
    assert math.isfinite(float(odd.sum()))


def test_bundled_model_first_samples_do_not_depend_on_n_or_batch_size():
    """The issue's acceptance on the bundled model (cas: 10 evaluations): the same first 16 samples for n = 16
    and 64, and for batch_size 8 and None -- equal noise; the network's convolutions round differently per
    batch size (1.7e-5 measured after 10 steps), hence a fp32 tolerance for the batch sizes."""
    x16 = fastncsn.sample(n=16, seed=0, sampler="cas", progress=False)
    torch.testing.assert_close(fastncsn.sample(n=64, seed=0, sampler="cas", progress=False)[:16], x16,
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(fastncsn.sample(n=16, seed=0, sampler="cas", batch_size=8, progress=False), x16,
                               rtol=0, atol=1e-4)
