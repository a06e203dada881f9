"""The bf16 graph path checked element by element (issue 15 item 7).

The score that one step of the bf16 graph sampler computes (``GraphSampler``, captured CUDA graph,
channels-last, bf16 autocast, fused ops by backend ``auto``; read from its ``score`` buffer) is
compared with the fp32 reference network (backend "torch", NCHW, TF32 off) on the same input, and
its error with the error of a plain bf16 PyTorch forward (the reference network under autocast):
per sample, the 50/90/99/100 % quantiles of the per-element error ``|got - ref|`` must be at most
2x those of the plain bf16 forward plus ``atol`` (``TOL[bf16]['atol']`` times the RMS of the
sample's reference score) -- the 2x rule of ``cin_truth.assert_within_2x`` taken per sample, so
that one wrong sample cannot hide behind the others.

Each check also proves it would catch the two indexing faults that statistics-only tests miss:
the same comparison against the reference at another level, and with the samples rolled by one
(another sample's score), must fail.  On the bundled trained model (``fastncsn.load`` of
``fastncsn/assets/digits_ncsn.pt``) and at the benchmark configs (random init, the CIN++ rows
spread so that levels differ).  A second GPU test runs the captured bf16 network on a batch whose
samples have different levels, against per-sample fp32 forwards.  The CPU test checks the same
indexing in fp32 with ``use_graphs=False`` (what CI sees).  Peak memory like for like is in
``test_graph_sampler.py`` (``test_gpu_peak_memory_not_above_reference``).
"""
import contextlib
import os

import pytest
import torch

import fastncsn
from benchmarks.variants import VARIANTS, apply_switches, settings
from conftest import TOL
from fastncsn.models.refinenet import CondRefineNetDilated
from fastncsn.nn.norms import ConditionalInstanceNorm2dPlus
from fastncsn.ops import langevin_noise_ref
from fastncsn.sampling import GraphSampler, clear_graph_cache
from fastncsn.sampling.graphs import capture_graph

BF16 = torch.bfloat16
#: quantiles of the per-element error compared per sample
QUANTILES = (0.5, 0.9, 0.99, 1.0)
#: seed of the step's Philox noise
SEED = 3


def failing_samples(got, ref, plain, plain_ref=None, dtype=BF16):
    """[N] bool: samples where some quantile_q |got - ref| > 2 quantile_q |plain - plain_ref| + atol (q in
    QUANTILES; atol = TOL[dtype]['atol'] * RMS of the sample's ``ref``; ``plain_ref`` defaults to ``ref``),
    and the per-sample quantiles (error, plain error, atol) for the message."""
    assert got.shape == ref.shape == plain.shape, (got.shape, ref.shape, plain.shape)
    base_ref = (ref if plain_ref is None else plain_ref).double().flatten(1)
    ref = ref.double().flatten(1)
    err = (got.double().flatten(1) - ref).abs().sort(dim=1).values
    base = (plain.double().flatten(1) - base_ref).abs().sort(dim=1).values
    n = ref.shape[1]
    idx = torch.tensor([min(n - 1, int(q * n)) for q in QUANTILES], device=ref.device)
    qe, qb = err[:, idx], base[:, idx]                                    # [N, len(QUANTILES)]
    atol = TOL[dtype]["atol"] * ref.pow(2).mean(1, keepdim=True).sqrt()
    bad = (qe > 2 * qb + atol) | ~torch.isfinite(qe)
    return bad.any(1), (bad, qe, qb, atol)


def assert_within_2x_per_sample(got, ref, plain, what: str) -> None:
    """Every sample within the per-sample 2x rule (``failing_samples``); ``got`` finite."""
    assert torch.isfinite(got).all(), f"{what}: non-finite scores"
    fails, (bad, qe, qb, atol) = failing_samples(got, ref, plain)
    if fails.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{what}: sample {i} of {ref.shape[0]}, {100 * QUANTILES[j]:g}% quantile of the error "
                             f"{qe[i, j].item():.3g} > 2 x {qb[i, j].item():.3g} (plain bf16) + {atol[i, 0].item():.3g}; "
                             f"{int(fails.sum())} samples fail")


def assert_catches_wrong_level_and_swap(got, ref, plain, ref_other_level, what: str) -> None:
    """``got`` passes against ``ref``; against another level's reference, and with the samples rolled by one
    (another sample's score), EVERY sample fails -- so the check catches either fault in any one sample."""
    assert_within_2x_per_sample(got, ref, plain, what)
    wrong_level, _ = failing_samples(got, ref_other_level, plain, plain_ref=ref)
    assert wrong_level.all(), f"{what}: {int((~wrong_level).sum())} samples pass against another level"
    swapped, _ = failing_samples(got.roll(1, 0), ref, plain)
    assert swapped.all(), f"{what}: {int((~swapped).sum())} samples pass with another sample's score"


@contextlib.contextmanager
def _no_tf32():
    """fp32 convolutions as fp32 (cuDNN allows TF32 by default)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _spread_levels(model, seed=0):
    """Random CIN++ rows (gamma, alpha ~ N(1, 0.3), beta ~ N(0, 0.3)) so that a random-init network's
    levels give clearly different scores (the default init puts every level near the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ConditionalInstanceNorm2dPlus):
                w = m.embed.weight
                c2 = 2 * m.num_features
                w[:, :c2].copy_(1 + 0.3 * torch.randn(w[:, :c2].shape, generator=g))
                w[:, c2:].copy_(0.3 * torch.randn(w[:, c2:].shape, generator=g))
    return model


def _references(model, x, y):
    """(fp32 reference score, plain bf16 autocast score) of the reference network at (x, y)."""
    model.set_backend("torch")
    with torch.no_grad():
        with _no_tf32():
            ref = model(x, y).float()
        with torch.autocast(x.device.type, dtype=BF16):
            plain = model(x, y).float()
    return ref, plain


def _graph_step(model, x0, level, precision, use_graphs=None, **options):
    """One step of the graph sampler at model level ``level`` from ``x0``: (sampler, score buffer, x1).
    The step is x1 = x0 + alpha/2 score + sqrt(alpha) z with z the Philox stream at offset 0.
    ``options``: more ``GraphSampler`` arguments (``layout=``, ``weights=``)."""
    n = x0.shape[0]
    sampler = GraphSampler(model, n, sigmas=model.sigmas[level:level + 1], model_levels=[level],
                           steps_per_level=1, eps=0.5, step_convention="paper", precision=precision,
                           capture="step", use_graphs=use_graphs, **options)
    x1 = sampler.sample(n, seed=SEED, x0=x0)
    score = sampler.score[:n].clone()
    alpha = sampler.alpha_table[0]
    z = langevin_noise_ref(SEED, 0, x0)
    torch.testing.assert_close(x1, x0 + alpha / 2 * score + alpha.sqrt() * z, **TOL[torch.float32])
    return sampler, score, x1


def _bench_model(config):
    size, channels, ngf = (28, 1, 64) if config == "mnist" else (32, 3, 128)
    torch.manual_seed(0)
    model = CondRefineNetDilated(image_size=size, channels=channels, ngf=ngf, num_levels=10)
    return _spread_levels(model).cuda().eval()


def _x(n, shape, device, seed=0):
    return torch.rand(n, *shape, device=device, generator=torch.Generator(device).manual_seed(seed))


# ---------------------------------------------------------------------------------------------- CPU


def test_checker_passes_bf16_like_noise_and_fails_swaps_and_levels():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(8, 1, 6, 6, generator=g)
    plain = ref + 0.01 * torch.randn(ref.shape, generator=g) * ref.abs()
    got = ref + 0.012 * torch.randn(ref.shape, generator=g) * ref.abs()
    other = ref * 1.5 + 0.2
    assert_catches_wrong_level_and_swap(got, ref, plain, other, "synthetic")
    broken = got.clone()
    broken[5] = ref[2]                                   # one sample gets another sample's score
    with pytest.raises(AssertionError, match="sample 5"):
        assert_within_2x_per_sample(broken, ref, plain, "one swapped sample")


def test_cpu_fp32_step_score_per_sample(one_thread):
    """use_graphs=False, fp32: the score buffer of one step equals, sample by sample, the reference network
    at the sampler's level (not at another level, not another sample's); the state moved by that score."""
    torch.manual_seed(0)
    model = _spread_levels(CondRefineNetDilated(image_size=8, channels=1, ngf=4, num_levels=4, backend="torch")).eval()
    x0 = _x(5, (1, 8, 8), "cpu")
    level = 2
    _, score, _ = _graph_step(model, x0, level, "fp32", use_graphs=False)
    with torch.no_grad():
        per_sample = torch.cat([model(x0[i:i + 1], torch.tensor([level])) for i in range(5)])
        other = torch.cat([model(x0[i:i + 1], torch.tensor([0])) for i in range(5)])
    torch.testing.assert_close(score, per_sample, **TOL[torch.float32])
    for i in range(5):
        assert not torch.allclose(score[i], other[i], atol=1e-3), f"sample {i}: level {level} looks like level 0"
        assert not torch.allclose(score[i], per_sample[(i + 1) % 5], atol=1e-3), f"sample {i}: another's score"


# ---------------------------------------------------------------------------------------------- GPU

def _check_graph_step(model, x0, level, what, fused_pool=False, fused_glue=False, **options):
    """The bf16 graph step's score against the fp32 reference (the 2x rule per sample, catching a wrong level
    or sample); ``fused_pool`` / ``fused_glue`` switch the model's fusions on for the sampler only (the
    references run the unfused reference network), ``options`` go to ``GraphSampler``."""
    clear_graph_cache()
    model.set_backend("auto")
    apply_switches(model, fused_pool, fused_glue)
    try:
        sampler, score, _ = _graph_step(model, x0, level, "bf16", **options)
    finally:
        apply_switches(model, False, False)
    assert sampler.use_graphs and sampler.captures >= 1 and sampler.precision == "bf16"
    assert all(getattr(sampler, k) == v for k, v in options.items()), options
    y = torch.full((x0.shape[0],), level, dtype=torch.long, device=x0.device)
    ref, plain = _references(model, x0, y)
    num_levels = len(model.sigmas)
    far = (level + num_levels // 2) % num_levels
    ref_far, _ = _references(model, x0, torch.full_like(y, far))
    assert_catches_wrong_level_and_swap(score, ref, plain, ref_far, what)


@pytest.mark.gpu
@pytest.mark.parametrize("level", [0, 9])
def test_gpu_bf16_graph_step_bundled_model(level):
    model = fastncsn.load(_bundled_path(), map_location="cuda").eval()
    _check_graph_step(model, _x(256, (1, 28, 28), "cuda"), level, f"bundled digits model, level {level}")


def _bundled_path():
    return os.path.join(os.path.dirname(fastncsn.__file__), "assets", "digits_ncsn.pt")


@pytest.mark.gpu
@pytest.mark.parametrize("config,batch", [("mnist", 100), ("mnist", 1000), ("cifar10", 100)])
def test_gpu_bf16_graph_step_benchmark_configs(config, batch):
    model = _bench_model(config)
    shape = (1, 28, 28) if config == "mnist" else (3, 32, 32)
    _check_graph_step(model, _x(batch, shape, "cuda"), 3, f"{config} b{batch}")


@pytest.mark.gpu
@pytest.mark.smoke
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("source", ["bundled", "mnist"])
def test_gpu_smoke_variant_step(source, variant):
    """The perf lab's correctness smoke (its ``smoke`` stage, before any timing): one captured bf16 step of
    each pending variant, score element by element against the fp32 reference (the per-sample 2x rule
    above), on the bundled model (level 9) and the MNIST benchmark config (batch 100, level 3).  Variants:
    ``benchmarks/variants.py`` (the sampling benchmark times variant ``v`` as ``graph-bf16-<v>``)."""
    if source == "bundled":
        model = fastncsn.load(_bundled_path(), map_location="cuda").eval()
        x0, level = _x(128, (1, 28, 28), "cuda"), 9
    else:
        model, x0, level = _bench_model("mnist"), _x(100, (1, 28, 28), "cuda"), 3
    _check_graph_step(model, x0, level, f"{variant} ({source})", **settings(variant))


@pytest.mark.gpu
@pytest.mark.parametrize("source", ["bundled", "mnist"])
def test_gpu_bf16_captured_network_per_sample_levels(source):
    """The sampler's network call (channels-last, bf16 autocast, backend auto) captured in a CUDA graph, on a
    batch whose samples have different levels, against per-sample fp32 forwards."""
    model = (fastncsn.load(_bundled_path(), map_location="cuda").eval() if source == "bundled"
             else _bench_model("mnist"))
    n, levels = 40, 10
    x = _x(n, (1, 28, 28), "cuda", seed=1)
    y = torch.randperm(n, generator=torch.Generator().manual_seed(0)).remainder(levels).cuda()
    xs, ys = x.contiguous(memory_format=torch.channels_last), y.clone()
    model.set_backend("auto")

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=BF16, cache_enabled=False):
            return model(xs, ys)

    graph, out = capture_graph(forward, warmup=2)
    graph.replay()
    torch.cuda.synchronize()
    got = out.float().clone()
    refs, plains, others = [], [], []
    for i in range(n):                                   # one sample at a time: no batch can mix them up
        r, p = _references(model, x[i:i + 1], y[i:i + 1])
        o, _ = _references(model, x[i:i + 1], (y[i:i + 1] + levels // 2) % levels)
        refs.append(r), plains.append(p), others.append(o)
    assert_catches_wrong_level_and_swap(got, torch.cat(refs), torch.cat(plains), torch.cat(others),
                                        f"captured bf16 network ({source}), per-sample levels")
