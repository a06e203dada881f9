"""The Langevin step op (``fastncsn/ops/langevin.py``): the reference, the Philox noise stream, and
every fast backend against them.

The fast backends (``backend`` = ``triton``, ``cuda``; see ``conftest.FAST_BACKENDS``) run on CPU
tensors under the Triton interpreter (triton) or on the GPU with the built extension (cuda,
marked ``gpu``).  The CUDA kernels' logic is also checked without a GPU by ``test_csrc_emulated.py``.
"""
import math

import pytest
import torch

from conftest import DEV, FAST_BACKENDS, HAS_CUDA, OPCHECK_CASES, TOL, fast_backend, opcheck_all
from fastncsn import ops
from fastncsn.ops import langevin_noise_counters, langevin_noise_ref, langevin_step_ref


def _state(shape=(3, 2, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def _langevin_inputs(shape=(3, 4, 5, 7), channels_last=False, score_dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    score = torch.randn(*shape, generator=g).to(score_dtype)
    return x.to(DEV), score.to(DEV)


# --------------------------------------------------------------------------- the reference and the torch backend


def test_ref_formula_and_blend():
    x = torch.randn(4, 3, 2, 2)
    s = torch.randn_like(x)
    z = torch.randn_like(x)
    a = torch.tensor([0.1, 0.2, 0.3, 0.4])
    out = langevin_step_ref(x, s, a, z)
    torch.testing.assert_close(out, x + a.view(-1, 1, 1, 1) / 2 * s + a.view(-1, 1, 1, 1).sqrt() * z)
    mask = torch.zeros(1, 3, 2, 2)
    mask[..., 0] = 1
    known = torch.full_like(x, 7.0)
    out = langevin_step_ref(x, s, 0.1, z, mask=mask, known=known, clamp=(-1.0, 1.0))
    assert (out[..., 0] == 1.0).all() and out.abs().max() <= 1.0


def test_torch_backend_noise_sources():
    x, s = _state()
    a = torch.tensor([0.1, 0.2, 0.3])
    # seed/offset: the Philox stream of the fused kernels
    got = ops.langevin_step_(x.clone(), s, a, torch.tensor(5), torch.tensor(8), backend="torch")
    torch.testing.assert_close(got, langevin_step_ref(x, s, a, langevin_noise_ref(5, 8, x)), **TOL[torch.float32])
    # explicit noise
    z = torch.randn_like(x)
    got = ops.langevin_step_(x.clone(), s, a, noise=z, mask=torch.ones(2, 4, 4), known=torch.zeros_like(x),
                             backend="torch")
    assert torch.equal(got, torch.zeros_like(x))
    # generator: reproducible, and the same draw as torch.randn with that generator
    got1 = ops.langevin_step_(x.clone(), s, 0.1, generator=torch.Generator().manual_seed(3), backend="torch")
    got2 = ops.langevin_step_(x.clone(), s, 0.1, generator=torch.Generator().manual_seed(3), backend="torch")
    assert torch.equal(got1, got2)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got1, langevin_step_ref(x, s, 0.1, z), **TOL[torch.float32])


def test_torch_backend_in_place_and_offset_advance():
    x, s = _state()
    x0 = x.clone()
    out = ops.langevin_step_(x, s, 0.05, 1, 0, clamp=(-0.5, 0.5), backend="torch")
    assert out is x and not torch.equal(x, x0) and x.abs().max() <= 0.5
    z0 = langevin_noise_ref(1, 0, x)
    z1 = langevin_noise_ref(1, langevin_noise_counters(x.numel()), x)
    assert not torch.allclose(z0, z1)


def test_noise_source_errors():
    x, s = _state()
    with pytest.raises(ValueError, match="noise source"):
        ops.langevin_step_(x, s, 0.1)
    with pytest.raises(ValueError, match="noise source"):
        ops.langevin_step_(x, s, 0.1, 0, 0, noise=torch.zeros_like(x))
    with pytest.raises(ValueError, match="seed, offset"):
        ops.langevin_step_(x, s, 0.1, seed=0)
    with pytest.raises(ValueError, match="step_size"):
        ops.langevin_step_(x, s, -0.1, 0, 0)


# --------------------------------------------------------------------------- the fast backends


def _step_cases():
    """(backend, shape, channels_last, score_dtype, per_sample, blend); the large shapes on the GPU only."""
    small = [((3, 4, 5, 7), False, torch.float32, False, None),
             ((3, 4, 5, 7), True, torch.bfloat16, True, "sample"),
             ((3, 4, 5, 7), False, torch.bfloat16, True, "full"),
             ((3, 4, 5, 7), True, torch.float32, False, "full"),
             ((3, 4, 5, 7), True, torch.float16, False, "full"),
             ((3, 5, 4001), False, torch.float32, True, "sample"),     # samples larger than a kernel block
             ((4, 3), False, torch.bfloat16, True, "sample")]
    large = [((1000, 3, 32, 32), False, torch.bfloat16, True, None),
             ((1000, 1, 28, 28), True, torch.float32, True, "sample")]
    cases = []
    for bp in FAST_BACKENDS:
        backend = bp.values[0]
        for case in small + large:
            marks = list(bp.marks) + ([pytest.mark.gpu] if case in large else [])
            cases.append(pytest.param(backend, *case, marks=marks, id=f"{backend}-{case[0]}-{case[4]}-{case[2]}"))
    return cases


@pytest.mark.parametrize("backend,shape,channels_last,score_dtype,per_sample,blend", _step_cases())
def test_step_matches_reference(backend, shape, channels_last, score_dtype, per_sample, blend):
    mod = fast_backend(backend)
    x, score = _langevin_inputs(shape, channels_last=channels_last, score_dtype=score_dtype)
    n = x.shape[0]
    a = torch.linspace(0.05, 0.3, n, device=DEV) if per_sample else torch.tensor(0.2, device=DEV)
    seed = torch.tensor(1234, dtype=torch.int64, device=DEV)
    offset = torch.tensor(2 ** 32 + 17, dtype=torch.int64, device=DEV)    # counter crosses 32 bits
    mask = known = clamp = None
    if blend is not None:
        g = torch.Generator().manual_seed(2)
        mshape = x.shape[1:] if blend == "sample" else x.shape
        mask = (torch.rand(mshape, generator=g) > 0.5).to(DEV)
        known = torch.randn(mshape, generator=g).to(DEV)
        clamp = (-1.5, 1.0)
    # the kernel's own noise (Triton; its match with the reference stream is tested below) or the reference's
    z = (langevin_noise_ref if backend == "cuda" else mod.langevin_noise)(seed, offset, x)
    expected = langevin_step_ref(x, score, a, z, mask=mask, known=known, clamp=clamp)
    out = mod.langevin_step_(x.clone(memory_format=torch.preserve_format), score, a, seed, offset,
                             mask=mask, known=known, clamp=clamp)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    assert out.stride() == x.stride()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_explicit_noise_one_sided_clamp_and_same_seed(backend):
    mod = fast_backend(backend)
    x, score = _langevin_inputs((4, 33) if backend == "triton" else (64, 3, 32, 32), score_dtype=torch.bfloat16)
    z = torch.randn_like(x)
    out = mod.langevin_step_(x.clone(), score, 0.1, None, None, noise=z, clamp=(None, 0.5))
    torch.testing.assert_close(out, langevin_step_ref(x, score, 0.1, z).clamp(max=0.5), **TOL[torch.float32])
    a = torch.full((x.shape[0],), 1e-3, device=DEV)
    first = mod.langevin_step_(x.clone(), score, a, 5, 100)
    again = mod.langevin_step_(x.clone(), score, a, 5, 100)
    other = mod.langevin_step_(x.clone(), score, a, 6, 100)
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_noise_is_the_reference_stream(backend):
    mod = fast_backend(backend)
    like = torch.empty(5, 3, 9, 7, device=DEV).to(memory_format=torch.channels_last)
    for seed, offset in [(0, 0), (-3, 12345), (2 ** 40 + 7, 2 ** 33 - 2)]:
        z = mod.langevin_noise(seed, offset, like)
        assert z.stride() == like.stride()
        torch.testing.assert_close(z, langevin_noise_ref(seed, offset, like), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_noise_statistics(backend):
    mod = fast_backend(backend)
    n = 1 << (24 if HAS_CUDA else 18)
    like = torch.empty(n, device=DEV)
    seed = torch.tensor(7, device=DEV)
    offset = torch.tensor(3 * 2 ** 31, device=DEV)
    z = mod.langevin_noise(seed, offset, like).double()
    z_next = mod.langevin_noise(seed, offset + langevin_noise_counters(n), like).double()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    # Kolmogorov-Smirnov distance to N(0, 1) (5 sigma bound ~ 1.9/sqrt(n))
    cdf = torch.special.ndtr(z.sort().values)
    ecdf = torch.arange(1, n + 1, dtype=torch.float64, device=DEV) / n
    assert (cdf - ecdf).abs().max().item() < 1.9 / math.sqrt(n)
    for lag in (1, 2, 3, 4, 5):                                 # within and across Philox groups of 4
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5 / math.sqrt(n)
    assert abs((z * z_next).mean().item()) < 5 / math.sqrt(n)   # the next step's noise is independent
    assert torch.equal(mod.langevin_noise(seed, offset, like).double(), z)      # same seed/offset, same noise
    assert not torch.equal(mod.langevin_noise(seed + 1, offset, like).double(), z)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_offset_advance_continues_the_stream(backend):
    mod = fast_backend(backend)
    like = torch.empty(2, 3, 8, device=DEV)
    both = mod.langevin_noise(11, 5, torch.empty(2 * like.numel(), device=DEV))
    first = mod.langevin_noise(11, 5, like)
    second = mod.langevin_noise(11, 5 + langevin_noise_counters(like.numel()), like)
    assert torch.equal(torch.cat([first.reshape(-1), second.reshape(-1)]), both)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_step_reads_step_and_offset_tensors(backend):
    mod = fast_backend(backend)
    x, score = _langevin_inputs((2, 64))
    a = torch.tensor([0.1, 0.4], device=DEV)
    seed = torch.tensor(5, device=DEV)
    offset = torch.tensor(0, device=DEV)
    first = mod.langevin_step_(x.clone(), score, a, seed, offset)
    offset += langevin_noise_counters(x.numel())
    a.copy_(torch.tensor([0.2, 0.3]))
    second = mod.langevin_step_(x.clone(), score, a, seed, offset)
    z = mod.langevin_noise(seed, offset, x)
    torch.testing.assert_close(second, langevin_step_ref(x, score, a, z), **TOL[torch.float32])
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bad_args(backend):
    mod = fast_backend(backend)
    x, score = _langevin_inputs((2, 4, 3, 3))
    with pytest.raises(ValueError, match="x"):
        mod.langevin_step_(x.transpose(2, 3), score.transpose(2, 3), 0.1, 0, 0)
    with pytest.raises(ValueError, match="score"):
        mod.langevin_step_(x, score[:1], 0.1, 0, 0)
    with pytest.raises(ValueError, match="step_size"):
        mod.langevin_step_(x, score, torch.ones(3, device=DEV), 0, 0)
    with pytest.raises(ValueError, match="mask"):
        mod.langevin_step_(x, score, 0.1, 0, 0, mask=torch.ones_like(x))
    with pytest.raises(TypeError, match="seed"):
        mod.langevin_step_(x, score, 0.1, torch.tensor(1.0, device=DEV), 0)


def test_cuda_wrapper_checks_x_before_the_device():
    from fastncsn.ops import cuda
    with pytest.raises(TypeError, match="x"):
        cuda.langevin_step_(torch.zeros(2, 3, dtype=torch.long), torch.randn(2, 3), 0.1, 0, 0)


# --------------------------------------------------------------------------- registration, compile, dispatch


def _opcheck_samples(backend):
    ns = torch.ops.fastncsn_cuda if backend == "cuda" else torch.ops.fastncsn
    xl, score = _langevin_inputs((2, 3, 4, 5), channels_last=True, score_dtype=torch.bfloat16)
    i64 = dict(dtype=torch.int64, device=DEV)
    samples = [
        (ns.langevin_step_, (xl, score, torch.tensor([0.1, 0.2], device=DEV),
                             torch.tensor(3, **i64), torch.tensor(9, **i64), None,
                             torch.ones(3, 4, 5, device=DEV) > 0.5, torch.zeros_like(xl), None, 2.0)),
        (ns.langevin_step_, (xl.clone(), score, torch.tensor(0.1, device=DEV),
                             torch.tensor(0, **i64), torch.tensor(0, **i64), torch.randn_like(xl), None, None,
                             -1.0, 1.0)),
    ]
    if backend == "cuda":
        samples.append((ns.langevin_noise, (torch.tensor(3, **i64), torch.tensor(9, **i64), xl)))
    return samples


@pytest.mark.parametrize("backend,impl", OPCHECK_CASES)
def test_opcheck(backend, impl):
    opcheck_all(backend, impl, _opcheck_samples)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_torch_compile_fullgraph(backend):
    mod = fast_backend(backend)

    def step(x, score, a, seed, offset):
        mod.langevin_step_(x, score, a, seed, offset, clamp=(-1.0, 1.0))
        return x * 2

    xs, score = _langevin_inputs((2, 3, 4, 5))
    args = (score, torch.tensor([0.1, 0.2], device=DEV), torch.tensor(3, device=DEV), torch.tensor(4, device=DEV))
    x1, x2 = xs.clone(), xs.clone()
    torch.testing.assert_close(torch.compile(step, fullgraph=True, backend="aot_eager")(x1, *args), step(x2, *args))
    torch.testing.assert_close(x1, x2)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_dispatch_matches_torch(backend):
    fast_backend(backend)
    xs, score = _langevin_inputs()
    seed, offset = torch.tensor(1, device=DEV), torch.tensor(2, device=DEV)
    got = ops.langevin_step_(xs.clone(), score, 0.1, seed, offset, backend=backend)
    want = ops.langevin_step_(xs.clone(), score, 0.1, seed, offset, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gen = [torch.Generator(device=DEV).manual_seed(4) for _ in range(2)]
    got = ops.langevin_step_(xs.clone(), score, 0.1, generator=gen[0], clamp=(-1, 1), backend=backend)
    want = ops.langevin_step_(xs.clone(), score, 0.1, generator=gen[1], clamp=(-1, 1), backend="torch")
    torch.testing.assert_close(got, want, **TOL[torch.float32])


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gpu_step_in_cuda_graph(backend):
    """A captured step draws new noise on each replay when the offset tensor is advanced on the device,
    and reads a step size changed between replays."""
    mod = fast_backend(backend)
    x0, score = _langevin_inputs((64, 3, 32, 32))
    x = x0.clone()
    a = torch.tensor(0.01, device="cuda")
    seed = torch.tensor(1, device="cuda")
    offset = torch.tensor(0, device="cuda")
    inc = langevin_noise_counters(x.numel())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mod.langevin_step_(x, score, a, seed, offset)           # warm-up (compiles / caches the SM count)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mod.langevin_step_(x, score, a, seed, offset)
        offset.add_(inc)
    x.copy_(x0)
    offset.zero_()
    expected = x0.clone()
    states = []
    for step in range(3):
        a.fill_(0.01 * (step + 1))
        graph.replay()
        states.append(x.clone())
        z = langevin_noise_ref(1, step * inc, expected)
        expected = langevin_step_ref(expected, score, 0.01 * (step + 1), z)
    torch.cuda.synchronize()
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    increments = [states[0] - x0] + [b - a_ for a_, b in zip(states, states[1:])]
    assert not torch.allclose(increments[1], increments[2])           # new noise per replay


@pytest.mark.gpu
def test_gpu_backends_draw_the_same_noise_and_step():
    cuda, triton = fast_backend("cuda"), fast_backend("triton")
    like = torch.empty(5, 3, 9, 7, device="cuda").to(memory_format=torch.channels_last)
    torch.testing.assert_close(cuda.langevin_noise(9, 3, like), triton.langevin_noise(9, 3, like),
                               rtol=1e-6, atol=1e-6)
    x, score = _langevin_inputs((64, 3, 32, 32), score_dtype=torch.bfloat16)
    a = torch.full((64,), 1e-3, device="cuda")
    torch.testing.assert_close(cuda.langevin_step_(x.clone(), score, a, 5, 100),
                               triton.langevin_step_(x.clone(), score, a, 5, 100), rtol=1e-6, atol=1e-6)
