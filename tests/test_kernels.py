"""Triton kernels (``fastncsn.kernels``) against the reference (``fastncsn.reference``).

Without a GPU these run under the Triton interpreter (conftest sets
``TRITON_INTERPRET=1``) on small CPU tensors; the tests marked ``gpu`` repeat the
checks at the NCSN networks' real layer shapes in fp32 and bf16, with the rule
"kernel error <= 2 x the error of a same-precision PyTorch run + atol" (errors
measured against an fp64 evaluation).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL
from fastncsn import kernels, ops
from fastncsn.reference import (cond_instance_norm_plus_ref, langevin_noise_counters, langevin_noise_ref,
                                langevin_step_ref)

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not kernels.available("cuda" if torch.cuda.is_available() else "cpu")[0],
                                reason="Triton kernels unavailable here")

from fastncsn.kernels import library  # noqa: E402  (needs triton)
from fastncsn.kernels.cond_instance_norm import cin_plan, launch_cin_bwd, launch_cin_fwd  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _cin_inputs(shape, k=3, levels=4, channels_last=False, dtype=torch.float32, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(levels, k * shape[1], generator=g)
    y = torch.randint(0, levels, (shape[0],), generator=g)
    dy = torch.randn(*shape, generator=g).to(dtype)
    return x.to(device), y.to(device), w.to(device), dy.to(device)


def _ref_grads(x, y, w, dy, act):
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out = cond_instance_norm_plus_ref(xr, y, wr, activation=act)
    out.backward(dy)
    return out.detach(), xr.grad, wr.grad


# --------------------------------------------------------------------------- CIN++ forward/backward (CPU)

CIN_CASES = [
    # shape, weight columns per channel, activation, channels_last, split, tile
    pytest.param((3, 5, 7, 9), 3, None, False, None, None, id="nchw-onetile"),
    pytest.param((3, 5, 7, 9), 3, "elu", True, None, None, id="cl-onetile-elu"),
    pytest.param((3, 5, 7, 9), 2, "elu", False, False, 32, id="nchw-fused-chunks-2C"),
    pytest.param((3, 5, 7, 9), 3, "elu", False, True, 32, id="nchw-split"),
    pytest.param((2, 6, 3, 4), 3, None, True, True, 4, id="cl-split"),
    pytest.param((2, 6, 5, 5), 2, "elu", True, False, 16, id="cl-fused-chunks-2C"),
    pytest.param((2, 1, 4, 4), 3, "elu", False, None, None, id="C1"),
    pytest.param((2, 1, 5, 3), 2, None, False, True, 4, id="C1-split"),
    pytest.param((5, 16, 4, 4), 3, "elu", True, None, None, id="cl-shared-levels"),
]


@pytest.mark.parametrize("shape,k,act,channels_last,split,tile", CIN_CASES)
def test_cin_launch_matches_reference(shape, k, act, channels_last, split, tile):
    x, y, w, dy = _cin_inputs(shape, k=k, levels=3, channels_last=channels_last)
    out, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, act or "none", split=split, tile=tile)
    ref_out, ref_gx, ref_gw = _ref_grads(x, y, w, dy, act)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
    assert out.stride() == x.stride()
    var, mean = torch.var_mean(x.float(), dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mu, mean, **TOL[torch.float32])
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5), **TOL[torch.float32])
    gx, gw = launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, act or "none", split=split, tile=tile)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    torch.testing.assert_close(gw, ref_gw, **TOL[torch.float32])
    assert gx.stride() == x.stride()


def test_cin_plans_cover_the_paths():
    x, *_ = _cin_inputs((3, 5, 7, 9))
    assert cin_plan(x).one_tile
    multi = cin_plan(x, split=False, tile=32)
    assert not multi.one_tile and multi.block_p < 63 and multi.groups == 1
    split = cin_plan(x, split=True, tile=32)
    assert split.split and split.groups > 1
    xc, *_ = _cin_inputs((2, 6, 3, 4), channels_last=True)
    assert cin_plan(xc, split=True, tile=4).groups > 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cin_half_inputs(dtype):
    x, y, w, dy = _cin_inputs((3, 5, 7, 9), dtype=dtype)
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = kernels.cond_instance_norm_plus(xk, y, wk, activation="elu")
    out.backward(dy)
    ref_out, ref_gx, ref_gw = _ref_grads(x, y, w, dy, "elu")
    assert out.dtype == dtype and xk.grad.dtype == dtype
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(xk.grad, ref_gx, **TOL[dtype])
    torch.testing.assert_close(wk.grad, ref_gw, **TOL[dtype])


def test_cin_public_function_autograd_and_layouts():
    x, y, w, _ = _cin_inputs((2, 4, 6, 5))
    xs = x[:, :, ::2]                                        # not dense: copied to NCHW inside
    for inp in (x, x.to(memory_format=torch.channels_last), xs):
        xk, wk = inp.clone().requires_grad_(), w.clone().requires_grad_()
        out = kernels.cond_instance_norm_plus(xk, y.int(), wk)
        out.sum().backward()                                  # grad_out arrives expanded (stride 0)
        ref_out, ref_gx, ref_gw = _ref_grads(inp, y, w, torch.ones_like(inp), None)
        torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
        torch.testing.assert_close(xk.grad, ref_gx, **TOL[torch.float32])
        torch.testing.assert_close(wk.grad, ref_gw, **TOL[torch.float32])


@pytest.mark.parametrize("k,act", [(3, "elu"), (2, None)])
def test_cin_gradcheck_fp64(k, act):
    x, y, w, _ = _cin_inputs((2, 3, 3, 4), k=k, levels=2, dtype=torch.float64)
    x = x.requires_grad_()
    w = w.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: kernels.cond_instance_norm_plus(a, y, b, activation=act),
                                    (x, w), fast_mode=True)


def test_cin_backward_deterministic():
    x, _, w, dy = _cin_inputs((8, 4, 5, 5))
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1], device=x.device)
    out, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, "elu")
    first = launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu")
    second = launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu")
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[1][2:], torch.zeros_like(first[1][2:]))    # levels 2, 3 unused


@pytest.mark.parametrize("k,act,channels_last", [(3, "elu", False), (2, None, True)])
def test_cin_closed_form_backward_matches_autograd(k, act, channels_last):
    """The PyTorch CPU kernel of fastncsn::cin_plus_bwd (reference math) against autograd."""
    x, y, w, dy = _cin_inputs((3, 5, 4, 6), k=k, channels_last=channels_last)
    var, mu = torch.var_mean(x, dim=(2, 3), unbiased=False)
    gx, gw = library.cin_plus_bwd_torch(dy, x, y, w, mu, torch.rsqrt(var + 1e-5), 1e-5, act or "none")
    _, ref_gx, ref_gw = _ref_grads(x, y, w, dy, act)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    torch.testing.assert_close(gw, ref_gw, **TOL[torch.float32])


def test_cin_bad_args():
    x, y, w, _ = _cin_inputs((2, 4, 5, 5))
    with pytest.raises(ValueError, match="weight"):
        kernels.cond_instance_norm_plus(x, y, w[:, :5])
    with pytest.raises(ValueError, match="activation"):
        kernels.cond_instance_norm_plus(x, y, w, activation="relu")
    with pytest.raises(TypeError, match="x"):
        kernels.cond_instance_norm_plus(x.long(), y, w)


# --------------------------------------------------------------------------- Langevin step (CPU)


def _langevin_inputs(shape=(3, 4, 5, 7), channels_last=False, score_dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    score = torch.randn(*shape, generator=g).to(score_dtype)
    return x.to(DEV), score.to(DEV)


@pytest.mark.parametrize("shape,channels_last,score_dtype,per_sample,blend", [
    ((3, 4, 5, 7), False, torch.float32, False, None),
    ((3, 4, 5, 7), True, torch.bfloat16, True, "sample"),
    ((3, 4, 5, 7), False, torch.bfloat16, True, "full"),
    ((3, 4, 5, 7), True, torch.float32, False, "full"),
    ((3, 5, 4001), False, torch.float32, True, "sample"),     # samples larger than a kernel block
])
def test_langevin_step_matches_reference(shape, channels_last, score_dtype, per_sample, blend):
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
    z = kernels.langevin_noise(seed, offset, x)
    expected = langevin_step_ref(x, score, a, z, mask=mask, known=known, clamp=clamp)
    out = kernels.langevin_step_(x.clone(memory_format=torch.preserve_format), score, a, seed, offset,
                                 mask=mask, known=known, clamp=clamp)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    assert out.stride() == x.stride()


def test_langevin_explicit_noise_and_one_sided_clamp():
    x, score = _langevin_inputs((4, 33))
    z = torch.randn_like(x)
    out = kernels.langevin_step_(x.clone(), score, 0.1, None, None, noise=z, clamp=(None, 0.5))
    torch.testing.assert_close(out, langevin_step_ref(x, score, 0.1, z).clamp(max=0.5), **TOL[torch.float32])


def test_langevin_noise_kernel_matches_torch_philox():
    x = torch.empty(5, 3, 9, 7, device=DEV).to(memory_format=torch.channels_last)
    for seed, offset in [(0, 0), (-3, 12345), (2 ** 40 + 7, 2 ** 33 - 2)]:
        torch.testing.assert_close(kernels.langevin_noise(seed, offset, x), langevin_noise_ref(seed, offset, x),
                                   rtol=1e-5, atol=1e-5)


def test_langevin_noise_statistics():
    n = 1 << 18
    like = torch.empty(n, device=DEV)
    z = kernels.langevin_noise(7, 0, like).double()
    z_next = kernels.langevin_noise(7, langevin_noise_counters(n), like).double()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    # Kolmogorov-Smirnov distance to N(0, 1) (5 sigma bound ~ 1.9/sqrt(n))
    cdf = torch.special.ndtr(z.sort().values)
    ecdf = torch.arange(1, n + 1, dtype=torch.float64, device=DEV) / n
    assert (cdf - ecdf).abs().max().item() < 1.9 / math.sqrt(n)
    for lag in (1, 2, 3, 4, 5):                                 # within and across Philox groups of 4
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5 / math.sqrt(n)
    assert abs((z * z_next).mean().item()) < 5 / math.sqrt(n)   # the next step's noise is independent
    assert torch.equal(kernels.langevin_noise(7, 0, like).double(), z)      # same seed/offset, same noise
    assert not torch.equal(kernels.langevin_noise(8, 0, like).double(), z)


def test_langevin_offset_advance_continues_the_stream():
    like = torch.empty(2, 3, 8, device=DEV)
    both = kernels.langevin_noise(11, 5, torch.empty(2 * like.numel(), device=DEV))
    first = kernels.langevin_noise(11, 5, like)
    second = kernels.langevin_noise(11, 5 + langevin_noise_counters(like.numel()), like)
    assert torch.equal(torch.cat([first.reshape(-1), second.reshape(-1)]), both)


def test_langevin_step_reads_step_and_offset_tensors():
    x, score = _langevin_inputs((2, 64))
    a = torch.tensor([0.1, 0.4], device=DEV)
    seed = torch.tensor(5, device=DEV)
    offset = torch.tensor(0, device=DEV)
    first = kernels.langevin_step_(x.clone(), score, a, seed, offset)
    offset += langevin_noise_counters(x.numel())
    a.copy_(torch.tensor([0.2, 0.3]))
    second = kernels.langevin_step_(x.clone(), score, a, seed, offset)
    z = kernels.langevin_noise(seed, offset, x)
    torch.testing.assert_close(second, langevin_step_ref(x, score, a, z), **TOL[torch.float32])
    assert not torch.allclose(first, second)


def test_langevin_bad_args():
    x, score = _langevin_inputs((2, 4, 3, 3))
    with pytest.raises(ValueError, match="x"):
        kernels.langevin_step_(x.transpose(2, 3), score, 0.1, 0, 0)
    with pytest.raises(ValueError, match="score"):
        kernels.langevin_step_(x, score[:1], 0.1, 0, 0)
    with pytest.raises(ValueError, match="step_size"):
        kernels.langevin_step_(x, score, torch.ones(3, device=DEV), 0, 0)
    with pytest.raises(ValueError, match="mask"):
        kernels.langevin_step_(x, score, 0.1, 0, 0, mask=torch.ones_like(x))
    with pytest.raises(TypeError, match="seed"):
        kernels.langevin_step_(x, score, 0.1, torch.tensor(1.0, device=DEV), 0)


# --------------------------------------------------------------------------- registration


def _opcheck_samples():
    x, y, w, dy = _cin_inputs((2, 3, 4, 5), levels=3)
    xl, score = _langevin_inputs((2, 3, 4, 5), channels_last=True, score_dtype=torch.bfloat16)
    out, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, "elu")
    i64 = dict(dtype=torch.int64, device=DEV)
    return [
        (torch.ops.fastncsn.cin_plus_fwd, (x.requires_grad_(), y, w.requires_grad_(), 1e-5, "elu")),
        (torch.ops.fastncsn.cin_plus_fwd, (x.detach().to(memory_format=torch.channels_last).requires_grad_(),
                                           y, w[:, :6].detach().requires_grad_(), 1e-5, "none")),
        (torch.ops.fastncsn.cin_plus_bwd, (dy, x.detach(), y, w.detach(), mu, rstd, 1e-5, "elu")),
        (torch.ops.fastncsn.langevin_step_, (xl, score, torch.tensor([0.1, 0.2], device=DEV),
                                             torch.tensor(3, **i64), torch.tensor(9, **i64), None,
                                             torch.ones(3, 4, 5, device=DEV) > 0.5, torch.zeros_like(xl),
                                             None, 2.0)),
        (torch.ops.fastncsn.langevin_step_, (xl.clone(), score, torch.tensor(0.1, device=DEV),
                                             torch.tensor(0, **i64), torch.tensor(0, **i64), torch.randn_like(xl),
                                             None, None, -1.0, 1.0)),
    ]


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_opcheck(impl):
    with library.cpu_impl(impl):
        for op, args in _opcheck_samples():
            torch.library.opcheck(op, args)


def _compiled_cases(backend):
    def cin_loss(x, y, w):
        return kernels.cond_instance_norm_plus(x, y, w, activation="elu").square().sum()

    def step(x, score, a, seed, offset):
        kernels.langevin_step_(x, score, a, seed, offset, clamp=(-1.0, 1.0))
        return x * 2

    x, y, w, _ = _cin_inputs((2, 3, 4, 5))
    grads = []
    for fn in (cin_loss, torch.compile(cin_loss, fullgraph=True, backend=backend)):
        xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xk, y, wk)
        loss.backward()
        grads.append((loss.detach(), xk.grad, wk.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    xs, score = _langevin_inputs((2, 3, 4, 5))
    args = (score, torch.tensor([0.1, 0.2], device=DEV), torch.tensor(3, device=DEV), torch.tensor(4, device=DEV))
    x1, x2 = xs.clone(), xs.clone()
    torch.testing.assert_close(torch.compile(step, fullgraph=True, backend=backend)(x1, *args), step(x2, *args))
    torch.testing.assert_close(x1, x2)


def test_torch_compile_fullgraph():
    _compiled_cases("aot_eager")


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor():
    _compiled_cases("inductor")


def test_available():
    ok, reason = kernels.available(DEV)
    assert ok and reason == ""
    ok, reason = kernels.available("meta")
    assert not ok and "meta" in reason


def test_ops_dispatch_to_triton_matches_torch():
    x, y, w, _ = _cin_inputs((2, 3, 4, 5))
    torch.testing.assert_close(ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="triton"),
                               ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="torch"),
                               **TOL[torch.float32])
    xs, score = _langevin_inputs()
    seed, offset = torch.tensor(1, device=DEV), torch.tensor(2, device=DEV)
    got = ops.langevin_step_(xs.clone(), score, 0.1, seed, offset, backend="triton")
    want = ops.langevin_step_(xs.clone(), score, 0.1, seed, offset, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gen = [torch.Generator(device=DEV).manual_seed(4) for _ in range(2)]
    got = ops.langevin_step_(xs.clone(), score, 0.1, generator=gen[0], clamp=(-1, 1), backend="triton")
    want = ops.langevin_step_(xs.clone(), score, 0.1, generator=gen[1], clamp=(-1, 1), backend="torch")
    torch.testing.assert_close(got, want, **TOL[torch.float32])


# --------------------------------------------------------------------------- GPU: real shapes


#: (config, C, H) of every CIN++ layer shape of the NCSN v1 networks
NETWORK_LAYERS = [("mnist", 64, 28), ("mnist", 128, 14), ("mnist", 128, 7),
                  ("cifar10", 128, 32), ("cifar10", 256, 16), ("cifar10", 256, 8)]


def _cin_fp64(x, y, w, act):
    """CIN++ in float64 (the reference formula without its float32 cast): the error yardstick."""
    c = x.shape[1]
    xd = x.double()
    mu = xd.mean(dim=(2, 3))
    h = (xd - mu[..., None, None]) * torch.rsqrt(xd.var(dim=(2, 3), unbiased=False) + 1e-5)[..., None, None]
    t = (mu - mu.mean(1, keepdim=True)) / torch.sqrt(mu.var(1, keepdim=True) + 1e-5) if c > 1 else torch.zeros_like(mu)
    rows = w.double()[y]
    out = rows[:, :c, None, None] * (h + (rows[:, c:2 * c] * t)[..., None, None]) + rows[:, 2 * c:, None, None]
    return F.elu(out) if act == "elu" else out


def _assert_2x(kernel, torch_run, truth, dtype, what):
    err_k = (kernel.double() - truth).abs().max().item()
    err_t = (torch_run.double() - truth).abs().max().item()
    assert err_k <= 2 * err_t + TOL[dtype]["atol"], f"{what}: kernel error {err_k:.3g} vs torch {err_t:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True),
                                                 (torch.bfloat16, False)])
@pytest.mark.parametrize("config,c,h", NETWORK_LAYERS)
def test_gpu_cin_network_shapes(config, c, h, dtype, channels_last):
    x, y, w, dy = _cin_inputs((128, c, h, h), levels=10, channels_last=channels_last, dtype=dtype, device="cuda")
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    truth = _cin_fp64(xd, y, wd, "elu")
    truth.backward(dy.double())
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = kernels.cond_instance_norm_plus(xk, y, wk, activation="elu")
    out.backward(dy)
    ref_out, ref_gx, ref_gw = _ref_grads(x, y, w, dy, "elu")
    _assert_2x(out, ref_out, truth.detach(), dtype, "out")
    _assert_2x(xk.grad, ref_gx, xd.grad, dtype, "grad x")
    _assert_2x(wk.grad, ref_gw, wd.grad, dtype, "grad weight")
    for plan_split in (False, True):                        # both launch plans at this shape
        o, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, "elu", split=plan_split)
        _assert_2x(o, ref_out, truth.detach(), dtype, f"out split={plan_split}")
        gx, gw = launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu", split=plan_split)
        _assert_2x(gx, ref_gx, xd.grad, dtype, f"grad x split={plan_split}")
        _assert_2x(gw, ref_gw, wd.grad, dtype, f"grad weight split={plan_split}")


@pytest.mark.gpu
def test_gpu_cin_backward_deterministic():
    x, y, w, dy = _cin_inputs((1000, 128, 32, 32), levels=10, dtype=torch.bfloat16, channels_last=True,
                              device="cuda")
    out, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, "elu")
    runs = [launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu") for _ in range(3)]
    for gx, gw in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(gw, runs[0][1])


@pytest.mark.gpu
def test_gpu_langevin_step_and_noise():
    x, score = (t.cuda() for t in _langevin_inputs((1000, 3, 32, 32), score_dtype=torch.bfloat16))
    a = torch.rand(1000, device="cuda") * 1e-3
    seed = torch.tensor(2024, device="cuda")
    offset = torch.tensor(3 * 2 ** 31, device="cuda")
    z = kernels.langevin_noise(seed, offset, x)
    torch.testing.assert_close(z, langevin_noise_ref(seed, offset, x), rtol=1e-5, atol=1e-5)
    out = kernels.langevin_step_(x.clone(), score, a, seed, offset)
    torch.testing.assert_close(out, langevin_step_ref(x, score, a, z), **TOL[torch.float32])
    n = 1 << 24
    big = kernels.langevin_noise(seed, offset, torch.empty(n, device="cuda")).double()
    nxt = kernels.langevin_noise(seed, offset + langevin_noise_counters(n), torch.empty(n, device="cuda")).double()
    assert abs(big.mean().item()) < 5 / math.sqrt(n)
    assert abs(big.var().item() - 1) < 5 * math.sqrt(2 / n)
    for lag in (1, 2, 3, 4, 5):
        assert abs((big[:-lag] * big[lag:]).mean().item()) < 5 / math.sqrt(n)
    assert abs((big * nxt).mean().item()) < 5 / math.sqrt(n)


@pytest.mark.gpu
def test_gpu_langevin_step_in_cuda_graph():
    """A captured step draws new noise per replay when the offset tensor is advanced on the device."""
    x0, score = (t.cuda() for t in _langevin_inputs((64, 3, 32, 32)))
    x = x0.clone()
    a = torch.tensor(0.01, device="cuda")
    seed = torch.tensor(1, device="cuda")
    offset = torch.tensor(0, device="cuda")
    inc = langevin_noise_counters(x.numel())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kernels.langevin_step_(x, score, a, seed, offset)         # warm-up (compiles the kernel)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        kernels.langevin_step_(x, score, a, seed, offset)
        offset.add_(inc)
    x.copy_(x0)
    offset.zero_()
    expected = x0.clone()
    for step in range(3):
        a.fill_(0.01 * (step + 1))
        graph.replay()
        z = langevin_noise_ref(1, step * inc, expected)
        expected = langevin_step_ref(expected, score, 0.01 * (step + 1), z)
    torch.cuda.synchronize()
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_network_forward_bf16_matches_reference():
    from fastncsn.models import CondRefineNetDilated
    torch.manual_seed(0)
    net = CondRefineNetDilated(image_size=32, channels=3, ngf=128, num_levels=10).cuda().eval()
    x = torch.rand(16, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    with torch.no_grad():
        truth = net.set_backend("torch")(x, y).double()
        bf = net.to(torch.bfloat16, memory_format=torch.channels_last)
        xb = x.to(torch.bfloat16, memory_format=torch.channels_last)
        torch_bf16 = bf.set_backend("torch")(xb, y)
        triton_bf16 = bf.set_backend("triton")(xb, y)
    _assert_2x(triton_bf16, torch_bf16, truth, torch.bfloat16, "network output")


# --------------------------------------------------------------------------- compile for the GPU without one

_AOT_SCRIPT = r'''
import inspect, sys
import triton, triton.language as tl
from fastncsn.kernels import cond_instance_norm as cin, langevin as lg
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:
    sys.exit(3)                     # another ahead-of-time compile API

def compile_sm90(kernel, types, consts, num_warps):
    names = list(inspect.signature(kernel.fn).parameters)
    types = {k: t for k, t in types.items() if k in names}
    sig = {k: types.get(k, "constexpr") for k in names}
    # what the JIT assumes at run time for 16-byte aligned pointers and ints divisible by 16
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, t in types.items() if t != "fp32"}
    try:
        src = ASTSource(kernel, signature=sig, constexprs=consts, attrs=attrs)
    except TypeError:
        sys.exit(3)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    assert "cubin" in out.asm

ints = dict.fromkeys(["C", "HW", "stride_n", "stride_c", "w_stride", "chans_per_prog", "dw_stride",
                      "numel", "per_sample"], "i32")
flow = dict(HAS_BETA=True, ELU=True, ONE_TILE=False, BLOCK_M=256, ACC=tl.float32)
compile_sm90(cin._cin_fwd_kernel,
             dict(ints, x_ptr="*bf16", out_ptr="*bf16", level_ptr="*i64", w_ptr="*fp32", mu_ptr="*fp32",
                  rstd_ptr="*fp32", eps="fp32"),
             dict(flow, stride_p=1, STATS=True, APPLY=True, BLOCK_C=8, BLOCK_P=1024), 8)
compile_sm90(cin._cin_bwd_kernel,
             dict(ints, x_ptr="*bf16", dy_ptr="*bf16", dx_ptr="*bf16", level_ptr="*i64", w_ptr="*fp32",
                  mu_ptr="*fp32", rstd_ptr="*fp32", s_ptr="*fp32", p_ptr="*fp32", dw_ptr="*fp32",
                  stride_p="i32", eps="fp32"),
             dict(flow, stride_c=1, REDUCE=True, APPLY=True, BLOCK_C=64, BLOCK_P=64), 8)
compile_sm90(lg._langevin_step_kernel,
             dict(ints, x_ptr="*fp32", score_ptr="*bf16", noise_ptr="*fp32", step_ptr="*fp32", seed_ptr="*i64",
                  offset_ptr="*i64", mask_ptr="*u8", known_ptr="*fp32", clamp_lo="fp32", clamp_hi="fp32"),
             dict(PER_SAMPLE_STEP=True, HAS_NOISE=False, HAS_MASK=True, MASK_BCAST=True, KNOWN_BCAST=False,
                  CLAMP_LO=True, CLAMP_HI=True, ACC=tl.float32, BLOCK=2048), 8)
'''


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The kernels go through the real Triton compiler (not the interpreter) to an sm_90 cubin."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip("this Triton has another ahead-of-time compile API")
    assert proc.returncode == 0, proc.stderr[-3000:]
