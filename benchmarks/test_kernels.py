"""Throughput of the Triton kernels against the PyTorch reference and torch.compile of it.

Shapes are those of the NCSN v1 networks (every CIN++ layer shape of the MNIST
ngf-64 and CIFAR-10 ngf-128 models; the Langevin state of both datasets) at
batch 128 (training) and 1000 (sampling).  Records: GB/s of the bytes an op
must move (CIN++ forward: read x + write out; backward: read x, dy + write dx;
Langevin: read x, score + write x) and their fraction of the device copy
bandwidth measured in the same run.  See benchmarks/README.md for the command
that writes ``benchmarks/results/<gpu>-<date>-kernels.json``.

Backends: ``triton`` (the default plan), ``triton-fused`` / ``triton-split``
(CIN++ launch plans forced, to tune ``cin_plan``), ``reference`` (eager
``fastncsn.reference``) and ``compile`` (``torch.compile`` of the reference;
compiled for the largest layer of each config only, to bound compile time;
deselect with ``-k "not compile"``).
"""
from __future__ import annotations

import pytest
import torch

from conftest import cuda_ms, record
from fastncsn import kernels
from fastncsn.reference import cond_instance_norm_plus_ref, langevin_step_ref

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.available("cuda")[0]),
                                reason="needs CUDA and triton")

#: (config, C, H) of every CIN++ layer shape; the first per config is the largest
LAYERS = [("mnist", 64, 28), ("mnist", 128, 14), ("mnist", 128, 7),
          ("cifar10", 128, 32), ("cifar10", 256, 16), ("cifar10", 256, 8)]
LARGEST = {("mnist", 64, 28), ("cifar10", 128, 32)}
BATCHES = (128, 1000)
#: (dtype, channels_last): the fast bf16 network layout and the fp32 reference layout
FORMATS = [(torch.bfloat16, True), (torch.float32, False)]
#: image shape of the Langevin state per config
IMAGES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NUM_LEVELS = 10


def _cin_cases(backends):
    cases = []
    for config, c, h in LAYERS:
        for n in BATCHES:
            for dtype, cl in FORMATS:
                for backend in backends:
                    if backend == "compile" and (config, c, h) not in LARGEST:
                        continue
                    layout = "cl" if cl else "nchw"
                    cases.append(pytest.param(backend, (n, c, h, h), dtype, cl,
                                              id=f"{backend}-{config}-{n}x{c}x{h}x{h}-{str(dtype)[6:]}-{layout}"))
    return cases


def _cin_inputs(shape, dtype, channels_last):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(NUM_LEVELS, 3 * shape[1], device="cuda", generator=g)
    y = torch.randint(0, NUM_LEVELS, (shape[0],), device="cuda", generator=g)
    dy = torch.randn_like(x)
    return x, y, w, dy


def _reference_ms(cache, key, fn):
    if key not in cache:
        cache[key] = cuda_ms(fn)
    return cache[key]


def _cin_fwd_fn(backend, x, y, w):
    from fastncsn.kernels.cond_instance_norm import launch_cin_fwd
    if backend == "triton":
        return lambda: kernels.cond_instance_norm_plus(x, y, w, activation="elu")
    if backend in ("triton-fused", "triton-split"):
        split = backend == "triton-split"
        return lambda: launch_cin_fwd(x, y, w, 1e-5, "elu", split=split)
    if backend == "reference":
        return lambda: cond_instance_norm_plus_ref(x, y, w, activation="elu")
    compiled = torch.compile(cond_instance_norm_plus_ref, dynamic=False)
    return lambda: compiled(x, y, w, activation="elu")


@pytest.mark.parametrize("backend,shape,dtype,channels_last",
                         _cin_cases(("triton", "triton-fused", "triton-split", "reference", "compile")))
def test_cin_fwd(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    x, y, w, _ = _cin_inputs(shape, dtype, channels_last)
    ref_fn = _cin_fwd_fn("reference", x, y, w)
    fn = _cin_fwd_fn(backend, x, y, w)
    with torch.no_grad():
        ref_ms = _reference_ms(reference_ms_cache, ("cin_fwd", shape, dtype, channels_last), ref_fn)
        record(benchmark, fn, op="cin_fwd", backend=backend, shape=shape, dtype=dtype,
               bytes_moved=2 * x.numel() * x.element_size(), copy_gbps=copy_gbps, reference_ms=ref_ms,
               layout="channels_last" if channels_last else "nchw")


def _cin_bwd_fn(backend, x, y, w, dy):
    """A function running the backward only (the forward graph is built once, outside the timing)."""
    from fastncsn.kernels.cond_instance_norm import launch_cin_bwd, launch_cin_fwd
    if backend in ("triton", "triton-fused", "triton-split"):
        split = {"triton": None, "triton-fused": False, "triton-split": True}[backend]
        _, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, "elu")
        return lambda: launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu", split=split)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    fwd = cond_instance_norm_plus_ref if backend == "reference" else \
        torch.compile(cond_instance_norm_plus_ref, dynamic=False)
    out = fwd(xr, y, wr, activation="elu")
    return lambda: torch.autograd.grad(out, (xr, wr), dy, retain_graph=True)


@pytest.mark.parametrize("backend,shape,dtype,channels_last",
                         _cin_cases(("triton", "triton-fused", "triton-split", "reference", "compile")))
def test_cin_bwd(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    x, y, w, dy = _cin_inputs(shape, dtype, channels_last)
    ref_ms = _reference_ms(reference_ms_cache, ("cin_bwd", shape, dtype, channels_last),
                           _cin_bwd_fn("reference", x, y, w, dy))
    record(benchmark, _cin_bwd_fn(backend, x, y, w, dy), op="cin_bwd", backend=backend, shape=shape, dtype=dtype,
           bytes_moved=3 * x.numel() * x.element_size(), copy_gbps=copy_gbps, reference_ms=ref_ms,
           layout="channels_last" if channels_last else "nchw")


def _langevin_fn(backend, x, score, a, seed, offset):
    if backend == "triton":
        return lambda: kernels.langevin_step_(x, score, a, seed, offset)

    def eager():
        x.copy_(langevin_step_ref(x, score, a, torch.randn_like(x)))
    return eager if backend == "reference" else torch.compile(eager, dynamic=False)


@pytest.mark.parametrize("backend", ["triton", "reference", "compile"])
@pytest.mark.parametrize("score_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("config", sorted(IMAGES))
def test_langevin_step(benchmark, copy_gbps, reference_ms_cache, config, n, score_dtype, backend):
    shape = (n, *IMAGES[config])
    x = torch.randn(shape, device="cuda")
    score = torch.randn(shape, device="cuda").to(score_dtype)
    a = torch.full((n,), 1e-4, device="cuda")
    seed = torch.tensor(0, device="cuda")
    offset = torch.tensor(0, device="cuda")
    ref_ms = _reference_ms(reference_ms_cache, ("langevin", shape, score_dtype),
                           _langevin_fn("reference", x, score, a, seed, offset))
    record(benchmark, _langevin_fn(backend, x, score, a, seed, offset), op="langevin_step", backend=backend,
           shape=shape, dtype=score_dtype, bytes_moved=x.numel() * (2 * x.element_size() + score.element_size()),
           copy_gbps=copy_gbps, reference_ms=ref_ms, state_dtype="float32")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("config,n", [("cifar10", 1000), ("mnist", 1000), ("cifar10", 128)])
def test_network_forward(benchmark, copy_gbps, reference_ms_cache, config, n, backend):
    """Whole NCSN v1 network forward, bf16 channels-last (acceptance: CIFAR-10, batch 1000, Triton <= 60 ms)."""
    from fastncsn.models import CondRefineNetDilated
    c, size, ngf = (3, 32, 128) if config == "cifar10" else (1, 28, 64)
    torch.manual_seed(0)
    net = CondRefineNetDilated(image_size=size, channels=c, ngf=ngf, num_levels=NUM_LEVELS).cuda().eval()
    net = net.to(torch.bfloat16, memory_format=torch.channels_last)
    x = torch.rand(n, c, size, size, device="cuda").to(torch.bfloat16, memory_format=torch.channels_last)
    y = torch.randint(0, NUM_LEVELS, (n,), device="cuda")
    with torch.no_grad():
        net.set_backend("torch")
        ref_ms = _reference_ms(reference_ms_cache, ("network", config, n), lambda: net(x, y))
        net.set_backend(backend)
        ms = record(benchmark, lambda: net(x, y), op="network_forward", backend=backend, shape=x.shape,
                    dtype=torch.bfloat16, bytes_moved=None, copy_gbps=copy_gbps, reference_ms=ref_ms, rounds=10)
    benchmark.extra_info["images_per_s"] = n / (ms * 1e-3)
