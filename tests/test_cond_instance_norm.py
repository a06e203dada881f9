"""The CIN++ op (``fastncsn/ops/cond_instance_norm.py``): the reference, and every fast backend against it.

The reference is checked against the reference NCSN code's module.  The fast backends
(``backend`` = ``triton``, ``cuda``; see ``conftest.FAST_BACKENDS``) run on small CPU tensors
under the Triton interpreter (triton) or on the GPU with the built extension (cuda, marked
``gpu``); the ``gpu`` tests repeat the checks at the NCSN networks' real layer shapes in fp32,
bf16 (and fp16) with the rule "kernel error <= 2 x the error of a same-precision PyTorch run +
atol" (``cin_truth.assert_within_2x``, errors against float64).  The kernels' logic is also
checked without a GPU by ``test_csrc_emulated.py`` (CUDA) and ``test_triton_compile.py``.
"""
import pytest
import torch
import torch.nn.functional as F

from cin_truth import assert_within_2x, cin_fp64_grads, ref_grads
from conftest import DEV, FAST_BACKENDS, OPCHECK_CASES, TOL, fast_backend, opcheck_all
from fastncsn import ops
from fastncsn.ops import cond_instance_norm_plus_ref
from fastncsn.ops.cond_instance_norm import cin_plus_bwd_ref

#: (config, C, H) of every CIN++ layer shape of the NCSN v1 networks
NETWORK_LAYERS = [("mnist", 64, 28), ("mnist", 128, 14), ("mnist", 128, 7),
                  ("cifar10", 128, 32), ("cifar10", 256, 16), ("cifar10", 256, 8)]
#: launch plans: the backend's own choice, one fused launch, the split two-launch plan
PLANS = ("auto", "fused", "split")


def _cin_inputs(shape, k=3, levels=4, channels_last=False, dtype=torch.float32, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(dtype)
    w = torch.randn(levels, k * shape[1], generator=g)
    y = torch.randint(0, levels, (shape[0],), generator=g)
    dy = torch.randn(*shape, generator=g).to(dtype)
    if channels_last:
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    return x.to(device), y.to(device), w.to(device), dy.to(device)


def _cin_op(backend, x, y, w, dy, act, plan, tile=None):
    """(out, grad x, grad weight, mu, rstd) of the backend's forward and backward launches with ``plan``."""
    if backend == "cuda":
        code = PLANS.index(plan) - 1                        # -1 auto, 0 fused, 1 split
        out, mu, rstd = torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, act or "none", code)
        gx, gw = torch.ops.fastncsn_cuda.cin_plus_bwd(dy, x, y, w, mu, rstd, 1e-5, act or "none", code)
        return out, gx, gw, mu, rstd
    from fastncsn.ops.triton.cond_instance_norm import launch_cin_bwd, launch_cin_fwd
    split = {"auto": None, "fused": False, "split": True}[plan]
    out, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, act or "none", split=split, tile=tile)
    gx, gw = launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, act or "none", split=split, tile=tile)
    return out, gx, gw, mu, rstd


# --------------------------------------------------------------------------- the reference


def _cin_literal(x, y, weight):
    """CIN++ written as the reference code's module does it (InstanceNorm2d + embed)."""
    c = x.shape[1]
    means = torch.mean(x, dim=(2, 3))
    m = torch.mean(means, dim=-1, keepdim=True)
    v = torch.var(means, dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = F.instance_norm(x, eps=1e-5)
    gamma, alpha, beta = weight[y].chunk(3, dim=-1)
    h = h + means[..., None, None] * alpha[..., None, None]
    return gamma.view(-1, c, 1, 1) * h + beta.view(-1, c, 1, 1)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 16, 4, 4), (1, 2, 28, 28)])
def test_ref_matches_reference_code(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 3 + 1
    w = torch.randn(4, 3 * shape[1], generator=g)
    y = torch.randint(0, 4, (shape[0],), generator=g)
    torch.testing.assert_close(cond_instance_norm_plus_ref(x, y, w), _cin_literal(x, y, w), **TOL[torch.float32])
    torch.testing.assert_close(cond_instance_norm_plus_ref(x, y, w, activation="elu"),
                               F.elu(_cin_literal(x, y, w)), **TOL[torch.float32])


def test_ref_single_channel_is_finite():
    x = torch.randn(2, 1, 5, 5)
    w = torch.randn(3, 3)
    out = cond_instance_norm_plus_ref(x, torch.tensor([0, 2]), w)
    assert torch.isfinite(out).all()


def test_ref_bad_args():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="weight"):
        cond_instance_norm_plus_ref(x, torch.tensor([0, 1]), torch.randn(3, 5))
    with pytest.raises(ValueError, match="level"):
        cond_instance_norm_plus_ref(x, torch.tensor([0, 1, 2]), torch.randn(3, 12))
    with pytest.raises(ValueError, match="activation"):
        cond_instance_norm_plus_ref(x, torch.tensor([0, 1]), torch.randn(3, 12), activation="relu6")


@pytest.mark.parametrize("k,act,channels_last", [(3, "elu", False), (2, None, True)])
def test_closed_form_backward_matches_autograd(k, act, channels_last):
    """``cin_plus_bwd_ref`` (the CPU kernel of fastncsn::cin_plus_bwd without triton) against autograd."""
    x, y, w, dy = _cin_inputs((3, 5, 4, 6), k=k, channels_last=channels_last, device="cpu")
    var, mu = torch.var_mean(x, dim=(2, 3), unbiased=False)
    gx, gw = cin_plus_bwd_ref(dy, x, y, w, mu, torch.rsqrt(var + 1e-5), 1e-5, act or "none")
    _, ref_gx, ref_gw = ref_grads(x, y, w, dy, act)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    torch.testing.assert_close(gw, ref_gw, **TOL[torch.float32])


# --------------------------------------------------------------------------- launch plans, small shapes

TRITON_CASES = [
    # shape, weight columns per channel, activation, channels_last, plan, tile
    pytest.param((3, 5, 7, 9), 3, None, False, "auto", None, id="nchw-onetile"),
    pytest.param((3, 5, 7, 9), 3, "elu", True, "auto", None, id="cl-onetile-elu"),
    pytest.param((3, 5, 7, 9), 2, "elu", False, "fused", 32, id="nchw-fused-chunks-2C"),
    pytest.param((3, 5, 7, 9), 3, "elu", False, "split", 32, id="nchw-split"),
    pytest.param((2, 6, 3, 4), 3, None, True, "split", 4, id="cl-split"),
    pytest.param((2, 6, 5, 5), 2, "elu", True, "fused", 16, id="cl-fused-chunks-2C"),
    pytest.param((2, 1, 4, 4), 3, "elu", False, "auto", None, id="C1"),
    pytest.param((2, 1, 5, 3), 2, None, False, "split", 4, id="C1-split"),
    pytest.param((5, 16, 4, 4), 3, "elu", True, "auto", None, id="cl-shared-levels"),
]


@pytest.mark.parametrize("shape,k,act,channels_last,plan,tile", TRITON_CASES)
def test_triton_launch_matches_reference(shape, k, act, channels_last, plan, tile):
    """Every plan of the Triton launches (tiny tiles exercise the chunk loops), and the saved statistics."""
    fast_backend("triton")
    x, y, w, dy = _cin_inputs(shape, k=k, levels=3, channels_last=channels_last)
    ref_out, ref_gx, ref_gw = ref_grads(x, y, w, dy, act)
    out, gx, gw, mu, rstd = _cin_op("triton", x, y, w, dy, act, plan, tile)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    torch.testing.assert_close(gw, ref_gw, **TOL[torch.float32])
    assert out.stride() == x.stride() and gx.stride() == x.stride()
    var, mean = torch.var_mean(x.float(), dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mu, mean, **TOL[torch.float32])
    torch.testing.assert_close(rstd, torch.rsqrt(var + 1e-5), **TOL[torch.float32])


def test_triton_plans_cover_the_paths():
    fast_backend("triton")
    from fastncsn.ops.triton.cond_instance_norm import cin_plan
    x, *_ = _cin_inputs((3, 5, 7, 9))
    assert cin_plan(x).one_tile
    multi = cin_plan(x, split=False, tile=32)
    assert not multi.one_tile and multi.block_p < 63 and multi.groups == 1
    split = cin_plan(x, split=True, tile=32)
    assert split.split and split.groups > 1
    xc, *_ = _cin_inputs((2, 6, 3, 4), channels_last=True)
    assert cin_plan(xc, split=True, tile=4).groups > 1


@pytest.mark.gpu
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("shape,k,act,channels_last", [
    ((3, 5, 7, 9), 3, None, False), ((3, 5, 7, 9), 3, "elu", True), ((3, 6, 5, 5), 2, "elu", True),
    ((2, 37, 3, 4), 3, "elu", True), ((2, 3, 45, 41), 2, None, False), ((2, 1, 4, 4), 3, "elu", False),
    ((3, 4, 1, 1), 3, "elu", False), ((6, 16, 4, 4), 3, "elu", True),
])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gpu_small_shapes(backend, shape, k, act, channels_last, plan):
    fast_backend(backend)
    x, y, w, dy = _cin_inputs(shape, k=k, levels=3, channels_last=channels_last)
    _check_within_2x(backend, x, y, w, dy, act, plan, torch.float32)


def _check_within_2x(backend, x, y, w, dy, act, plan, dtype):
    truth = cin_fp64_grads(x, y, w, dy, act)
    ref = ref_grads(x, y, w, dy, act)
    got = _cin_op(backend, x, y, w, dy, act, plan)
    assert got[0].stride() == x.stride() and got[1].stride() == x.stride() and got[0].dtype == x.dtype
    for g, r, t, what in zip(got, ref, truth, ("out", "grad x", "grad weight")):
        assert_within_2x(g, r, t, dtype, f"{what} ({backend}, {plan})")


# --------------------------------------------------------------------------- the backends' public functions


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_public_function_autograd_layouts_and_levels(backend):
    mod = fast_backend(backend)
    # the CUDA backend's case has more pixels per weight entry: its grad weight sums in another order
    shape, wtol = ((2, 4, 6, 5), TOL[torch.float32]) if backend == "triton" else ((4, 6, 5, 7), dict(rtol=1e-4, atol=1e-4))
    x, y, w, _ = _cin_inputs(shape)
    for inp in (x, x.to(memory_format=torch.channels_last), x[:, :, ::2]):       # NCHW, CL, strided (copied)
        for lvl in (y, y.int()):
            xk, wk = inp.clone().requires_grad_(), w.clone().requires_grad_()
            out = mod.cond_instance_norm_plus(xk, lvl, wk)
            out.sum().backward()                                      # grad_out arrives expanded (stride 0)
            ref_out, ref_gx, ref_gw = ref_grads(inp, y, w, torch.ones_like(inp), None)
            torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
            torch.testing.assert_close(xk.grad, ref_gx, **TOL[torch.float32])
            torch.testing.assert_close(wk.grad, ref_gw, **wtol)
    zero = mod.cond_instance_norm_plus(x[:0], y[:0], w)                         # empty batch
    assert zero.shape == (0, *shape[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_inputs(dtype):
    mod = fast_backend("triton")
    x, y, w, dy = _cin_inputs((3, 5, 7, 9), dtype=dtype)
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = mod.cond_instance_norm_plus(xk, y, wk, activation="elu")
    out.backward(dy)
    ref_out, ref_gx, ref_gw = ref_grads(x, y, w, dy, "elu")
    assert out.dtype == dtype and xk.grad.dtype == dtype
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(xk.grad, ref_gx, **TOL[dtype])
    torch.testing.assert_close(wk.grad, ref_gw, **TOL[dtype])


@pytest.mark.parametrize("k,act", [(3, "elu"), (2, None)])
def test_triton_gradcheck_fp64(k, act):
    mod = fast_backend("triton")
    x, y, w, _ = _cin_inputs((2, 3, 3, 4), k=k, levels=2, dtype=torch.float64)
    x = x.requires_grad_()
    w = w.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mod.cond_instance_norm_plus(a, y, b, activation=act),
                                    (x, w), fast_mode=True)


def test_triton_backward_deterministic():
    fast_backend("triton")
    x, _, w, dy = _cin_inputs((8, 4, 5, 5))
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1], device=x.device)
    first = _cin_op("triton", x, y, w, dy, "elu", "auto")
    second = _cin_op("triton", x, y, w, dy, "elu", "auto")
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    assert torch.equal(first[2][2:], torch.zeros_like(first[2][2:]))    # levels 2, 3 unused


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_wrappers_check_arguments_before_the_device(backend):
    """Bad arguments raise before the device is looked at (on a CPU machine too); then the device."""
    from fastncsn.ops.dispatch import backend_module
    mod, reason = backend_module(backend)
    if mod is None:
        pytest.skip(reason)
    x, y, w, _ = _cin_inputs((2, 4, 5, 5), device="cpu")
    with pytest.raises(ValueError, match="weight"):
        mod.cond_instance_norm_plus(x, y, w[:, :5])
    with pytest.raises(ValueError, match="activation"):
        mod.cond_instance_norm_plus(x, y, w, activation="relu")
    if not mod.available("cpu")[0]:
        with pytest.raises(RuntimeError, match="unavailable for cpu"):
            mod.cond_instance_norm_plus(x, y, w)
    else:
        with pytest.raises(TypeError, match="x"):
            mod.cond_instance_norm_plus(x.long(), y, w)


@pytest.mark.gpu
def test_gpu_cuda_bad_args():
    mod = fast_backend("cuda")
    x, y, w, _ = _cin_inputs((2, 4, 5, 5))
    with pytest.raises(TypeError, match="x"):
        mod.cond_instance_norm_plus(x.double(), y, w)
    with pytest.raises(ValueError, match="level_index"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y[:1], w, 1e-5, "none")
    with pytest.raises(ValueError, match="activation"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "relu")
    with pytest.raises(ValueError, match="plan"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "none", 7)
    with pytest.raises(ValueError, match="weight"):
        torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w.cpu(), 1e-5, "none")


# --------------------------------------------------------------------------- registration, compile, dispatch


def _opcheck_samples(backend):
    ns = torch.ops.fastncsn_cuda if backend == "cuda" else torch.ops.fastncsn
    x, y, w, dy = _cin_inputs((2, 3, 4, 5), levels=3)
    out, mu, rstd = ns.cin_plus_fwd(x, y, w, 1e-5, "elu")
    plan = (1,) if backend == "cuda" else ()
    return [
        (ns.cin_plus_fwd, (x.clone().requires_grad_(), y, w.clone().requires_grad_(), 1e-5, "elu")),
        (ns.cin_plus_fwd, (x.to(memory_format=torch.channels_last).requires_grad_(), y,
                           w[:, :6].clone().requires_grad_(), 1e-5, "none", *plan)),
        (ns.cin_plus_bwd, (dy, x, y, w, mu, rstd, 1e-5, "elu")),
    ]


@pytest.mark.parametrize("backend,impl", OPCHECK_CASES)
def test_opcheck(backend, impl):
    opcheck_all(backend, impl, _opcheck_samples)


def _compiled_matches_eager(backend, compiler):
    mod = fast_backend(backend)

    def cin_loss(x, y, w):
        return mod.cond_instance_norm_plus(x, y, w, activation="elu").square().sum()

    x, y, w, _ = _cin_inputs((2, 3, 4, 5))
    grads = []
    for fn in (cin_loss, torch.compile(cin_loss, fullgraph=True, backend=compiler)):
        xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(xk, y, wk)
        loss.backward()
        grads.append((loss.detach(), xk.grad, wk.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_torch_compile_fullgraph(backend):
    _compiled_matches_eager(backend, "aot_eager")


@pytest.mark.slow
def test_triton_torch_compile_fullgraph_inductor():
    _compiled_matches_eager("triton", "inductor")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_dispatch_matches_torch(backend):
    fast_backend(backend)
    assert backend in ops.available_backends(DEV)
    x, y, w, _ = _cin_inputs((2, 3, 4, 5))
    torch.testing.assert_close(ops.cond_instance_norm_plus(x, y, w, activation="elu", backend=backend),
                               ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="torch"),
                               **TOL[torch.float32])


def test_torch_backend_is_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=g)
    y = torch.tensor([0, 1])
    w = torch.randn(2, 9)
    torch.testing.assert_close(ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="torch"),
                               cond_instance_norm_plus_ref(x, y, w, activation="elu"))


# --------------------------------------------------------------------------- GPU: real shapes

#: (backend, dtype, channels_last) at the network shapes (fp16 is a CUDA-backend case)
GPU_DTYPES = [pytest.param(b, dt, cl, id=f"{b}-{str(dt)[6:]}-{'cl' if cl else 'nchw'}")
              for b in ("triton", "cuda")
              for dt, cl in [(torch.float32, False), (torch.bfloat16, True), (torch.bfloat16, False),
                             (torch.float16, True)] if b == "cuda" or dt != torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("config,c,h", NETWORK_LAYERS)
@pytest.mark.parametrize("backend,dtype,channels_last", GPU_DTYPES)
def test_gpu_network_shapes(backend, config, c, h, dtype, channels_last):
    mod = fast_backend(backend)
    x, y, w, dy = _cin_inputs((128, c, h, h), levels=10, channels_last=channels_last, dtype=dtype)
    for plan in PLANS:
        _check_within_2x(backend, x, y, w, dy, "elu", plan, dtype)
    # the public function with autograd
    xk, wk = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = mod.cond_instance_norm_plus(xk, y, wk, activation="elu")
    out.backward(dy)
    got = _cin_op(backend, x, y, w, dy, "elu", "auto")
    assert torch.equal(out, got[0]) and torch.equal(xk.grad, got[1]) and torch.equal(wk.grad, got[2])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gpu_deterministic(backend):
    fast_backend(backend)
    x, y, w, dy = _cin_inputs((1000, 128, 32, 32), levels=10, dtype=torch.bfloat16, channels_last=True)
    for plan in ("auto", "split"):
        runs = [_cin_op(backend, x, y, w, dy, "elu", plan) for _ in range(3)]
        for other in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gpu_network_forward_bf16_matches_reference(backend):
    fast_backend(backend)
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
        fast_bf16 = bf.set_backend(backend)(xb, y)
    assert_within_2x(fast_bf16, torch_bf16, truth, torch.bfloat16, "network output")
