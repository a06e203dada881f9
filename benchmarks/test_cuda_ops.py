"""The CUDA C++ extension against the Triton kernels and the PyTorch reference, in one run.

Same shapes and records as ``test_kernels.py`` (every CIN++ layer shape of the
NCSN v1 networks at batch 128 and 1000, bf16 channels-last and fp32 NCHW; the
Langevin state of MNIST and CIFAR-10 with bf16/fp32 scores): ``extra_info`` has
op, backend, shape, dtype, gb_per_s, bandwidth_fraction, reference_ms.  Backends:
``cuda`` (automatic plan), ``cuda-fused`` / ``cuda-split`` (the CIN++ launch
plans forced), ``triton`` (skipped without triton) and ``reference`` (eager
``fastncsn.reference``).  Needs the built extension
(``pip install --no-build-isolation -e .``); skips cleanly without CUDA or
without it.  Command and summary: benchmarks/README.md, "CUDA extension".
"""
from __future__ import annotations

import pytest
import torch

from conftest import record
from fastncsn import cuda_ops, kernels
from fastncsn.reference import cond_instance_norm_plus_ref, langevin_step_ref
from test_kernels import BATCHES, FORMATS, IMAGES, LAYERS, _cin_inputs, _reference_ms

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_ops.available("cuda")[0]),
                                reason=f"needs CUDA and the built extension ({cuda_ops.available('cuda')[1]})")

CIN_BACKENDS = ("cuda", "cuda-fused", "cuda-split", "triton", "reference")
PLANS = {"cuda": -1, "cuda-fused": 0, "cuda-split": 1}


def _need(backend: str) -> None:
    if backend.startswith("triton") and not kernels.available("cuda")[0]:
        pytest.skip(f"triton unavailable: {kernels.available('cuda')[1]}")


def _cin_cases():
    return [pytest.param(backend, (n, c, h, h), dtype, cl,
                         id=f"{backend}-{config}-{n}x{c}x{h}x{h}-{str(dtype)[6:]}-{'cl' if cl else 'nchw'}")
            for config, c, h in LAYERS for n in BATCHES for dtype, cl in FORMATS for backend in CIN_BACKENDS]


def _cin_fwd_fn(backend, x, y, w):
    if backend in PLANS:
        plan = PLANS[backend]
        return lambda: torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "elu", plan)
    if backend == "triton":
        return lambda: kernels.cond_instance_norm_plus(x, y, w, activation="elu")
    return lambda: cond_instance_norm_plus_ref(x, y, w, activation="elu")


@pytest.mark.parametrize("backend,shape,dtype,channels_last", _cin_cases())
def test_cin_fwd(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    _need(backend)
    x, y, w, _ = _cin_inputs(shape, dtype, channels_last)
    with torch.no_grad():
        ref_ms = _reference_ms(reference_ms_cache, ("cin_fwd", shape, dtype, channels_last),
                               _cin_fwd_fn("reference", x, y, w))
        record(benchmark, _cin_fwd_fn(backend, x, y, w), op="cin_fwd", backend=backend, shape=shape, dtype=dtype,
               bytes_moved=2 * x.numel() * x.element_size(), copy_gbps=copy_gbps, reference_ms=ref_ms,
               layout="channels_last" if channels_last else "nchw")


def _cin_bwd_fn(backend, x, y, w, dy):
    """A function running the backward only (statistics / autograd graph made once, outside the timing)."""
    if backend in PLANS:
        plan = PLANS[backend]
        _, mu, rstd = torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "elu", plan)
        return lambda: torch.ops.fastncsn_cuda.cin_plus_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu", plan)
    if backend == "triton":
        from fastncsn.kernels.cond_instance_norm import launch_cin_bwd, launch_cin_fwd
        _, mu, rstd = launch_cin_fwd(x, y, w, 1e-5, "elu")
        return lambda: launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu")
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    out = cond_instance_norm_plus_ref(xr, y, wr, activation="elu")
    return lambda: torch.autograd.grad(out, (xr, wr), dy, retain_graph=True)


@pytest.mark.parametrize("backend,shape,dtype,channels_last", _cin_cases())
def test_cin_bwd(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    _need(backend)
    x, y, w, dy = _cin_inputs(shape, dtype, channels_last)
    ref_ms = _reference_ms(reference_ms_cache, ("cin_bwd", shape, dtype, channels_last),
                           _cin_bwd_fn("reference", x, y, w, dy))
    record(benchmark, _cin_bwd_fn(backend, x, y, w, dy), op="cin_bwd", backend=backend, shape=shape, dtype=dtype,
           bytes_moved=3 * x.numel() * x.element_size(), copy_gbps=copy_gbps, reference_ms=ref_ms,
           layout="channels_last" if channels_last else "nchw")


def _langevin_fn(backend, x, score, a, seed, offset):
    if backend == "cuda":
        return lambda: cuda_ops.langevin_step_(x, score, a, seed, offset)
    if backend == "triton":
        return lambda: kernels.langevin_step_(x, score, a, seed, offset)

    def eager():
        x.copy_(langevin_step_ref(x, score, a, torch.randn_like(x)))
    return eager


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("score_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("config", sorted(IMAGES))
def test_langevin_step(benchmark, copy_gbps, reference_ms_cache, config, n, score_dtype, backend):
    _need(backend)
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
