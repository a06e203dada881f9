"""GraphSampler (fastncsn.sampling.graphs) against the reference sampler fed the same Philox noise.

On the CPU the sampler runs its static-buffer step functions eagerly (``use_graphs=False``); the
tests marked ``gpu`` replay the captured CUDA graphs.
"""
import contextlib
import os
import socket

import pytest
import torch

import fastncsn
from fastncsn.models.refinenet import CondRefineNetDilated
from fastncsn.ops import langevin_noise_counters, langevin_noise_ref
from fastncsn.sampling import (GraphSampler, annealed_langevin, clear_graph_cache, get_graph_sampler, hmc_annealed,
                               sample_distributed, shard_seed, shard_sizes)
from fastncsn.sampling import graphs
from fastncsn.schedules import get_sigmas
from fastncsn.toy import ToyScoreNet

F32 = torch.float32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny CPU networks: one thread (fixture in conftest.py)."""


class PhiloxNoise:
    """``noise_fn`` for the reference samplers: the GraphSampler's Philox stream (key ``seed``, counters
    from 0, advanced by ``langevin_noise_counters`` per draw)."""

    def __init__(self, seed: int):
        self.seed, self.offset = seed, 0

    def __call__(self, like):
        z = langevin_noise_ref(self.seed, self.offset, like)
        self.offset += langevin_noise_counters(like.numel())
        return z


def _lin_score(x, y):
    return -x * (y.to(x.dtype) + 1).view(-1, *([1] * (x.dim() - 1)))


def _model(channels=3, size=8, levels=3, device="cpu"):
    torch.manual_seed(0)
    return CondRefineNetDilated(image_size=size, channels=channels, ngf=4, num_levels=levels,
                                backend="torch").to(device).eval()


def _reference(score_fn, x0, batch, seed, reference=annealed_langevin, **kw):
    """The reference sampler run chunk by chunk as GraphSampler does (spare rows repeat the last one),
    with the noise stream continuing across chunks."""
    noise = PhiloxNoise(seed)
    outs, snaps = [], []
    mask, known = kw.pop("mask", None), kw.pop("known", None)
    for start in range(0, x0.shape[0], batch):
        chunk = x0[start:start + batch]
        m = chunk.shape[0]
        pad = lambda t: torch.cat([t, t[-1:].expand(batch - m, *t.shape[1:])])  # noqa: E731
        extra = {}
        if mask is not None:
            extra = dict(mask=pad(mask.expand_as(x0)[start:start + m]), known=pad(known.expand_as(x0)[start:start + m]))
        with torch.no_grad():
            out = reference(score_fn, pad(chunk), noise_fn=noise, **kw, **extra)
        if isinstance(out, tuple):
            out, s = out
            snaps.append(s[:, :m])
        outs.append(out[:m])
    return (torch.cat(outs), torch.cat(snaps, 1)) if snaps else torch.cat(outs)


def _assert_close(a, b, tol):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, **tol[F32])
    else:
        torch.testing.assert_close(a, b, **tol[F32])


# ---------------------------------------------------------------------------------------------- CPU: equivalence

@pytest.mark.parametrize("capture,batch,n,steps,snapshot_every,channels_last", [
    ("level", 2, 2, 4, 2, True),    # snapshot steps the same in every replay (static pattern)
    ("step", 2, 3, 2, 3, False),    # chunks with a spare row; snapshot index kept on the device
])
def test_refinenet_matches_reference(tol, capture, batch, n, steps, snapshot_every, channels_last):
    model = _model()
    x0 = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(eps=2e-5, steps_per_level=steps, step_convention="reference", snapshot_every=snapshot_every)
    gs = GraphSampler(model, batch, precision="fp32", backend="torch", use_graphs=False, capture=capture,
                      channels_last=channels_last, **kw)
    got = gs.sample(n, seed=11, x0=x0)
    want = _reference(model, x0, batch, 11, sigmas=model.sigmas, **kw)
    assert got[1].shape == (3 * steps // snapshot_every, n, 3, 8, 8)
    _assert_close(got, want, tol)


@pytest.mark.parametrize("capture", ["level", "step"])
def test_ncsnv2_matches_reference(tol, capture):
    """NCSNv2 (unconditional norms, output divided by sigma_i): the graph sampler reads the level
    through the model's own sigma buffer, the same as the reference loop."""
    from fastncsn.models import NCSNv2
    torch.manual_seed(0)
    model = NCSNv2(image_size=8, channels=1, ngf=4, num_levels=3, sigma_1=1.0, sigma_L=0.01, backend="torch").eval()
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    kw = dict(eps=3e-5, steps_per_level=2, step_convention="reference", denoise=True)
    gs = GraphSampler(model, 2, precision="fp32", backend="torch", use_graphs=False, capture=capture, **kw)
    got = gs.sample(3, seed=6, x0=x0)
    want = _reference(model, x0, 2, 6, sigmas=model.sigmas, **kw)
    _assert_close(got, want, tol)


@pytest.mark.parametrize("capture", ["level", "step"])
def test_refinenet_inpainting_and_denoise_match_reference(tol, capture):
    model = _model()
    x0 = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    known = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :3] = 1
    kw = dict(eps=2e-5, steps_per_level=2, step_convention="reference", denoise=True, clamp=(0.0, 1.0))
    gs = GraphSampler(model, 2, precision="fp32", backend="torch", use_graphs=False, capture=capture, **kw)
    got = gs.sample(3, seed=4, x0=x0, mask=mask, known=known)
    want = _reference(model, x0, 2, 4, sigmas=model.sigmas, mask=mask, known=known, **kw)
    _assert_close(got, want, tol)
    assert torch.equal(got[..., :3], known[..., :3].expand(3, 3, 8, 3))


def test_toy_score_vanilla_and_hmc_match_reference(tol):
    sig = get_sigmas("geometric", 1.0, 0.01, 4)
    x0 = torch.rand(4, 5, generator=torch.Generator().manual_seed(5))
    # annealed, snr convention, clamp
    kw = dict(eps=0.2, steps_per_level=3, step_convention="snr", clamp=(-0.5, None))
    got = GraphSampler(_lin_score, 4, sigmas=sig, data_shape=(5,), use_graphs=False, **kw).sample(4, seed=0, x0=x0)
    _assert_close(got, _reference(_lin_score, x0, 4, 0, sigmas=sig, **kw), tol)
    # vanilla Langevin at model level 2: one sigma, paper convention (alpha = eps)
    vanilla = GraphSampler(_lin_score, 4, sigmas=[0.3], model_levels=[2], eps=0.05, steps_per_level=6,
                           step_convention="paper", data_shape=(5,), use_graphs=False)
    at_level_2 = lambda x, y: _lin_score(x, torch.full_like(y, 2))  # noqa: E731
    _assert_close(vanilla.sample(4, seed=9, x0=x0),
                  _reference(at_level_2, x0, 4, 9, sigmas=[0.3], eps=0.05, steps_per_level=6,
                             step_convention="paper"), tol)
    # EXPERIMENTAL HMC: two leapfrog steps per iteration, momentum from the same stream (eps 1e-5: leapfrog
    # step h = 0.32 at sigma_1; eps 0.01 made h = 10 and the chain blew up past the divergence bound)
    kw = dict(eps=1e-5, steps_per_level=3, step_convention="paper", leapfrog_steps=2)
    hmc = GraphSampler(_lin_score, 4, sigmas=sig, data_shape=(5,), use_graphs=False, method="hmc", **kw)
    _assert_close(hmc.sample(4, seed=1, x0=x0), _reference(_lin_score, x0, 4, 1, hmc_annealed, sigmas=sig, **kw), tol)


def test_triton_backend_under_interpreter_matches_reference(tol):
    pytest.importorskip("triton")
    from fastncsn.ops import triton as triton_backend
    if not triton_backend.available("cpu")[0]:
        pytest.skip(triton_backend.available("cpu")[1])
    model = _model(channels=1, levels=2)
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    kw = dict(eps=2e-5, steps_per_level=1, step_convention="reference")
    gs = GraphSampler(model, 2, precision="fp32", backend="triton", use_graphs=False, **kw)
    assert gs.step_backend == "triton"
    got = gs.sample(2, seed=3, x0=x0)
    model.set_backend("torch")
    _assert_close(got, _reference(model, x0, 2, 3, sigmas=model.sigmas, **kw), tol)


def test_same_seed_same_samples_different_seed_differs():
    model = _model(channels=1)
    gs = GraphSampler(model, 3, steps_per_level=2, use_graphs=False)
    a, b, c = gs.sample(3, seed=1), gs.sample(3, seed=1), gs.sample(3, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all()
    # the starting points come from the seed too: U[0, 1) like the reference sampler
    x0 = gs._initial(3, 1, None)
    assert 0 <= float(x0.min()) and float(x0.max()) < 1 and torch.equal(x0, gs._initial(3, 1, None))


def test_bf16_statistics_close_to_fp32():
    model = _model(channels=1, size=8, levels=3)
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    kw = dict(eps=2e-5, steps_per_level=2, snapshot_every=2, use_graphs=False, backend="torch")
    _, s32 = GraphSampler(model, 16, precision="fp32", **kw).sample(16, seed=0, x0=x0)
    _, s16 = GraphSampler(model, 16, precision="bf16", **kw).sample(16, seed=0, x0=x0)
    assert s16.dtype == F32 and not torch.equal(s16, s32)  # the network did run in bf16
    dims = tuple(range(1, s32.dim()))
    torch.testing.assert_close(s16.mean(dims), s32.mean(dims), rtol=0, atol=0.02)
    torch.testing.assert_close(s16.std(dims), s32.std(dims), rtol=0.05, atol=0.0)


def test_cache_reuses_sampler_and_program():
    clear_graph_cache()
    model = _model(channels=1, levels=2)
    kw = dict(steps_per_level=1, precision="fp32", use_graphs=False)
    s1 = get_graph_sampler(model, 2, **kw)
    s1.sample(2, seed=0)
    s2 = get_graph_sampler(model, 2, **kw)
    s2.sample(2, seed=1)
    assert s2 is s1 and s1.programs_built == 1 and s1.captures == 0
    s1.sample(2, seed=0, mask=torch.ones(1, 8, 8), known=torch.zeros(1, 8, 8))
    assert s1.programs_built == 2                      # inpainting is its own program
    assert get_graph_sampler(model, 3, **kw) is not s1  # another shape
    assert get_graph_sampler(model, 2, **dict(kw, steps_per_level=2)) is not s1
    model.set_backend("triton")                          # graphs captured with other norm backends: rebuilt
    assert get_graph_sampler(model, 2, **kw) is not s1
    model.set_backend("torch")
    assert get_graph_sampler(model, 2, **kw) is s1
    clear_graph_cache()
    assert get_graph_sampler(model, 2, **kw) is not s1


def test_api_fast_path_on_cpu():
    clear_graph_cache()
    model = _model(channels=1, levels=2)
    a = fastncsn.sample(model, n=3, steps_per_level=1, seed=5, fast=True, precision="fp32", batch_size=2)
    b = fastncsn.sample(model, n=3, steps_per_level=1, seed=5, fast=True, precision="fp32", batch_size=2)
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8)
    # fast=True is GraphSampler with per-sample noise (its own starting points: the same as the api's)
    gs = GraphSampler(model, 2, steps_per_level=1, precision="fp32", use_graphs=False, noise="per_sample")
    assert torch.equal(a, gs.sample(3, seed=5))
    # noise="batch": GraphSampler's batch-wide stream with the api's starting points (the seed's generator)
    a = fastncsn.sample(model, n=3, steps_per_level=1, seed=5, fast=True, precision="fp32", batch_size=2,
                        noise="batch")
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    gs = GraphSampler(model, 2, steps_per_level=1, precision="fp32", use_graphs=False)
    assert torch.equal(a, gs.sample(3, seed=5, x0=x0))
    # auto on the CPU is the reference sampler
    ref = fastncsn.sample(model, n=3, steps_per_level=1, seed=5, progress=False)
    assert torch.equal(ref, fastncsn.sample(model, n=3, steps_per_level=1, seed=5, progress=False, fast=False))
    x, snaps = fastncsn.sample(model, n=2, steps_per_level=2, seed=0, fast=True, snapshot_every=2)
    assert snaps.shape == (2, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="precision"):
        fastncsn.sample(model, n=2, steps_per_level=1, fast=False, precision="bf16", progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(precision="fp16"), "precision"),
    (dict(capture="all"), "capture"),
    (dict(method="ddim"), "method"),
    (dict(use_graphs=True), "use_graphs"),
    (dict(snapshot_every=-1), "snapshot_every"),
    (dict(clamp=(0.0,)), "clamp"),
    (dict(model_levels=[0]), "model_levels"),
    (dict(eps=0.0), "eps"),
    (dict(steps_per_level=0), "steps_per_level"),
    (dict(step_convention="ddpm"), "step_convention"),
    (dict(method="hmc", clamp=(0, 1)), "clamp"),
])
def test_bad_arguments(kwargs, match):
    args = dict(batch_size=2, use_graphs=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GraphSampler(_lin_score, sigmas=[1.0, 0.5], data_shape=(3,), **args)


def test_bad_sample_arguments():
    gs = GraphSampler(_lin_score, 2, sigmas=[1.0, 0.5], data_shape=(3,), steps_per_level=1)
    with pytest.raises(ValueError, match="n:"):
        gs.sample(0)
    with pytest.raises(ValueError, match="seed"):
        gs.sample(2, seed=-1)
    with pytest.raises(ValueError, match="x0"):
        gs.sample(2, x0=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="known"):
        gs.sample(2, mask=torch.ones(3))
    with pytest.raises(ValueError, match="data_shape"):
        GraphSampler(_lin_score, 2, sigmas=[1.0])
    with pytest.raises(ValueError, match="mask"):
        GraphSampler(_lin_score, 2, sigmas=[1.0], data_shape=(3,), method="hmc").sample(
            2, mask=torch.ones(3), known=torch.zeros(3))


# ---------------------------------------------------------------------------------------------- multi-process

def _shard_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = ToyScoreNet(num_levels=3, hidden=16)
        x = sample_distributed(model, 5, seed=3, steps_per_level=2, fast=True)
        if rank == 0:
            torch.save(x, out_file)
        else:
            assert x is None
    finally:
        dist.destroy_process_group()


def test_shards_and_seeds():
    assert shard_sizes(5, 2) == [3, 2] and shard_sizes(1, 3) == [1, 0, 0]
    seeds = {shard_seed(3, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2 ** 63 for s in seeds)
    assert shard_seed(3, 0) == shard_seed(3, 0) and shard_seed(3, 0) != shard_seed(4, 0)
    with pytest.raises(ValueError, match="n"):
        shard_sizes(0, 2)


def test_two_process_gloo_gathers_seeded_shards(tmp_path):
    import torch.multiprocessing as mp
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed not available")
    out = str(tmp_path / "samples.pt")
    mp.spawn(_shard_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    got = torch.load(out)
    torch.manual_seed(0)
    model = ToyScoreNet(num_levels=3, hidden=16)
    # per-sample streams: the two processes' gathered shards are the one-process run (the same noise; the
    # MLP's matmuls round differently at batch 3 and 5 -- 6e-8 measured -- hence fp32 tolerances)
    one = fastncsn.sample(model, n=5, seed=3, steps_per_level=2, fast=True)
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.smoke
@pytest.mark.parametrize("backend,method", [("torch", "annealed"), ("auto", "annealed"), ("torch", "hmc")])
def test_gpu_fp32_graph_equals_reference(tol, backend, method):
    clear_graph_cache()
    model = _model(channels=1, size=28, levels=4, device="cuda")
    model.set_backend(backend)
    x0 = torch.rand(6, 1, 28, 28, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    kw = dict(eps=2e-5, steps_per_level=3, step_convention="reference")
    extra = dict(snapshot_every=2, denoise=True) if method == "annealed" else dict(leapfrog_steps=2)
    gs = GraphSampler(model, 4, precision="fp32", backend=backend, channels_last=False, method=method,
                      **kw, **extra)
    if method == "annealed":
        known = torch.rand(1, 1, 28, 28, device="cuda")
        mask = torch.zeros(1, 1, 28, 28, device="cuda")
        mask[..., :10] = 1
        got = gs.sample(6, seed=7, x0=x0, mask=mask, known=known)
        model.set_backend("torch")
        want = _reference(model, x0, 4, 7, sigmas=model.sigmas, mask=mask, known=known, **kw, **extra)
    else:
        got = gs.sample(6, seed=7, x0=x0)
        want = _reference(model, x0, 4, 7, hmc_annealed, sigmas=model.sigmas, **kw, **extra)
    assert gs.captures >= 1 and gs.use_graphs
    _assert_close(got, want, tol)


@pytest.mark.gpu
def test_gpu_bf16_level_statistics_close_to_fp32():
    """Statistics only (a wrong level or a swapped sample can pass this): the element-by-element check of
    the bf16 graph step is tests/test_graph_bf16.py."""
    model = CondRefineNetDilated(image_size=28, channels=1, ngf=32, num_levels=10).cuda().eval()
    x0 = torch.rand(256, 1, 28, 28, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    kw = dict(steps_per_level=5, snapshot_every=5)  # one snapshot at the end of every level
    _, s32 = GraphSampler(model, 256, precision="fp32", **kw).sample(256, seed=1, x0=x0)
    _, s16 = GraphSampler(model, 256, precision="bf16", **kw).sample(256, seed=1, x0=x0)
    assert s16.shape == (10, 256, 1, 28, 28) and torch.isfinite(s16).all()
    dims = (1, 2, 3, 4)
    torch.testing.assert_close(s16.mean(dims), s32.mean(dims), rtol=0, atol=0.02)
    torch.testing.assert_close(s16.std(dims), s32.std(dims), rtol=0.05, atol=0.0)


@pytest.mark.gpu
def test_gpu_second_call_reuses_graph():
    clear_graph_cache()
    model = _model(channels=1, size=28, levels=2, device="cuda")
    a = fastncsn.sample(model, n=8, steps_per_level=2, seed=0)          # fast by default on CUDA
    (sampler,) = list(graphs._CACHE.values())
    captures = sampler.captures
    assert captures >= 1 and sampler.use_graphs and sampler.precision == "bf16"
    b = fastncsn.sample(model, n=8, steps_per_level=2, seed=0)
    assert sampler.captures == captures and sampler.programs_built == 1
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_peak_memory_not_above_reference(record_property, precision):
    """Like for like: the fp32 graph sampler against the fp32 reference loop, the bf16 graph sampler against
    the reference loop with the network under bf16 autocast (the state fp32 in both)."""
    clear_graph_cache()
    model = CondRefineNetDilated(image_size=28, channels=1, ngf=64, num_levels=10).cuda().eval()
    batch = 256
    x0 = torch.rand(batch, 1, 28, 28, device="cuda")

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    model.set_backend("torch")
    with torch.no_grad(), autocast:  # as the reference sampling loop runs, in the same precision
        # (the model's first two levels: a plain score function, as a model checks it is given all its levels)
        ref = peak(lambda: annealed_langevin(lambda x, i: model(x, i), x0, model.sigmas[:2], steps_per_level=2,
                                             seed=0))
    model.set_backend("auto")
    gs = GraphSampler(model, batch, sigmas=model.sigmas[:2], model_levels=[0, 1], steps_per_level=2,
                      precision=precision)
    fast = peak(lambda: gs.sample(batch, seed=0, x0=x0))
    record_property(f"graph_peak_mb_{precision}", fast / 2 ** 20)
    record_property(f"reference_peak_mb_{precision}", ref / 2 ** 20)
    assert gs.captures >= 1 and gs.precision == precision
    assert fast <= ref, f"{precision}: graph sampler peak {fast / 2 ** 20:.1f} MB > reference {ref / 2 ** 20:.1f} MB"
