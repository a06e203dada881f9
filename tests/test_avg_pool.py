"""The 5x5 stride-1 average pool op (``fastncsn/ops/avg_pool.py``): the reference, the Triton kernel
against it (on small CPU tensors under the interpreter), the custom op's registration, and the
``CRPBlock`` switch (``fastncsn.nn.set_fused_pool``).

Precision rule: "kernel error <= 2 x the error of a same-precision PyTorch run + atol"
(``cin_truth.assert_within_2x``; errors against a float64 ``F.avg_pool2d``).  The ``gpu`` test
repeats the checks at the chained-residual-pooling shapes of the NCSN v1 networks.
"""
import pytest
import torch
import torch.nn.functional as F

from cin_truth import assert_within_2x
from conftest import DEV, OPCHECK_CASES, TOL, fast_backend, opcheck_all
from fastncsn import ops
from fastncsn.ops import BackendUnavailableError, avg_pool5x5, avg_pool5x5_ref
from fastncsn.ops.common import dense_format, is_dense

#: (N, C, H, W): H, W over 1, 2, 3, 5, 7, 13 (square and not), C 1 and 3, batch 1 and 3
SHAPES = [(1, 1, 1, 1), (3, 3, 2, 5), (1, 3, 13, 7), (3, 1, 7, 3)]
#: (config, C, H) of every CRP pool shape of the NCSN v1 networks (MNIST ngf 64, CIFAR-10 ngf 128)
NETWORK_POOLS = [("mnist", 128, 14), ("mnist", 64, 14), ("mnist", 64, 28),
                 ("cifar10", 256, 16), ("cifar10", 128, 16), ("cifar10", 128, 32)]


def _inputs(shape, dtype, channels_last, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g) * 2 + 0.5).to(dtype)
    dy = torch.randn(*shape, generator=g).to(dtype)
    if channels_last:
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    return x.to(device), dy.to(device)


def _check_fwd_bwd(x, dy, backend, **launch):
    """Forward and backward of ``avg_pool5x5(x, backend)`` (or, with tile/rows overrides, of the
    launcher, whose backward is the same launch on ``dy``) against float64 truth by the 2x rule."""
    if launch:
        from fastncsn.ops.triton.avg_pool import launch_avg_pool5x5
        out, grad = launch_avg_pool5x5(x, **launch), launch_avg_pool5x5(dy, **launch)
    else:
        xr = x.detach().clone().requires_grad_()
        out = avg_pool5x5(xr, backend=backend)
        out.backward(dy)
        out, grad = out.detach(), xr.grad
    assert out.dtype == x.dtype and out.shape == x.shape
    assert dense_format(out) == dense_format(x) and is_dense(out)            # the layout is kept
    truth = F.avg_pool2d(x.double(), 5, stride=1, padding=2)
    assert_within_2x(out, F.avg_pool2d(x, 5, stride=1, padding=2), truth, x.dtype, "forward")
    xt = x.detach().clone().requires_grad_()
    F.avg_pool2d(xt, 5, stride=1, padding=2).backward(dy)          # same-precision PyTorch run
    xd = x.detach().double().requires_grad_()
    F.avg_pool2d(xd, 5, stride=1, padding=2).backward(dy.double())
    assert_within_2x(grad, xt.grad, xd.grad, x.dtype, "grad x")


# --------------------------------------------------------------------------- the reference


def test_reference_is_avg_pool2d_and_its_backward_is_the_same_pool():
    x, dy = _inputs((2, 3, 6, 9), torch.float64, channels_last=True, device="cpu")
    xr = x.clone().requires_grad_()
    out = avg_pool5x5_ref(xr)
    torch.testing.assert_close(out, torch.nn.AvgPool2d(5, 1, 2)(x), rtol=0, atol=1e-15)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.backward(dy)
    # the adjoint of the zero-padded symmetric box is the box (the op's backward relies on it)
    torch.testing.assert_close(xr.grad, avg_pool5x5_ref(dy), rtol=0, atol=1e-15)
    xb = x.to(torch.bfloat16)
    assert avg_pool5x5_ref(xb).dtype == torch.bfloat16
    torch.testing.assert_close(avg_pool5x5_ref(xb), F.avg_pool2d(xb.double(), 5, 1, 2).to(torch.bfloat16),
                               **TOL[torch.bfloat16])


# --------------------------------------------------------------------------- the Triton kernel


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("shape,dtype", [(s, torch.float32) for s in SHAPES] +
                         [(s, torch.bfloat16) for s in SHAPES[1:3]], ids=lambda v: str(v).replace("torch.", ""))
def test_triton_matches_reference(shape, dtype, channels_last):
    fast_backend("triton")
    x, dy = _inputs(shape, dtype, channels_last)
    _check_fwd_bwd(x, dy, "triton")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_triton_strip_and_row_chunk_edges(channels_last):
    """Several column strips, channel blocks and row chunks per sample (tiny tiles): the halos."""
    fast_backend("triton")
    x, dy = _inputs((1, 2, 5, 11), torch.float32, channels_last)
    _check_fwd_bwd(x, dy, "triton", tile=8, rows=2)


def test_triton_non_dense_input():
    fast_backend("triton")
    x, _ = _inputs((2, 3, 5, 8), torch.float32, False)
    xs = x[:, :, :, ::2]                                   # strided: copied to NCHW by the launcher
    torch.testing.assert_close(avg_pool5x5(xs, backend="triton"), F.avg_pool2d(xs, 5, 1, 2), **TOL[torch.float32])


@pytest.mark.parametrize("backend,impl", [OPCHECK_CASES[1]])
def test_opcheck(backend, impl):
    """Schema, fake kernel (tracing on fake tensors, torch.compile) and autograd registration
    (with the CPU kernel's reference math: the Triton CPU kernel is what the other tests run)."""
    def samples(_backend):
        x, _ = _inputs((1, 2, 3, 4), torch.float32, True)
        yield torch.ops.fastncsn.avg_pool5x5.default, (x.requires_grad_(),)
    opcheck_all(backend, impl, samples)


def test_torch_compile_fullgraph():
    """The op traces on fake tensors under ``torch.compile(fullgraph=True)``; forward and gradient
    match eager."""
    mod = fast_backend("triton")
    x, dy = _inputs((1, 2, 3, 4), torch.float32, True)
    results = []
    for fn in (mod.avg_pool5x5, torch.compile(mod.avg_pool5x5, fullgraph=True, backend="aot_eager")):
        xk = x.clone().requires_grad_()
        out = fn(xk)
        out.backward(dy)
        results.append((out.detach(), xk.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


# --------------------------------------------------------------------------- arguments and dispatch


def test_bad_arguments_name_x():
    for bad in (torch.zeros(2, 3, 4), torch.zeros(1, 1, 3, 3, dtype=torch.int64), [[1.0]]):
        with pytest.raises((ValueError, TypeError), match="x: expected"):
            avg_pool5x5(bad)
    with pytest.raises(ValueError, match="backend"):
        avg_pool5x5(torch.zeros(1, 1, 3, 3), backend="bogus")


def test_cuda_backend_raises_with_reason():
    with pytest.raises(BackendUnavailableError, match="no 'cuda' implementation"):
        avg_pool5x5(torch.zeros(1, 1, 3, 3, device=DEV), backend="cuda")
    assert ops.AUTO_PREFERENCE["avg_pool5x5"] == ("triton", "torch")


# --------------------------------------------------------------------------- the model switch


def test_refinenet_fused_pool_switch(one_thread):
    from fastncsn.models import CondRefineNetDilated
    from fastncsn.nn import CRPBlock, set_fused_pool
    fast_backend("triton")
    torch.manual_seed(0)
    net = CondRefineNetDilated(image_size=8, channels=1, ngf=4, num_levels=3, backend="torch").eval()
    keys, config = list(net.state_dict()), dict(net.config)
    x, y = torch.rand(1, 1, 8, 8), torch.tensor([2])
    with torch.no_grad():
        ref = net(x, y)
        assert set_fused_pool(net, True, backend="triton") is net
        crps = [m for m in net.modules() if isinstance(m, CRPBlock)]
        assert crps and all(m.fused_pool and m.pool_backend == "triton" for m in crps)
        fused = net(x, y)
    assert list(net.state_dict()) == keys and net.config == config
    torch.testing.assert_close(fused, ref, **TOL[torch.float32])
    set_fused_pool(net, False)
    assert not any(m.fused_pool for m in crps)
    with pytest.raises(ValueError, match="backend"):
        set_fused_pool(net, True, backend="cuda")


# --------------------------------------------------------------------------- GPU: network shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,channels_last", [(torch.bfloat16, True), (torch.float32, False),
                                                 (torch.float16, True)], ids=["bf16-cl", "fp32-nchw", "fp16-cl"])
@pytest.mark.parametrize("config,c,h", NETWORK_POOLS, ids=[f"{a}-{c}x{h}" for a, c, h in NETWORK_POOLS])
def test_gpu_network_shapes(config, c, h, dtype, channels_last):
    fast_backend("triton")
    x, dy = _inputs((64, c, h, h), dtype, channels_last, device="cuda")
    _check_fwd_bwd(x, dy, "triton")
