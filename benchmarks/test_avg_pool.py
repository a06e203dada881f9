"""Throughput of the 5x5 stride-1 average pool (``fastncsn.ops.avg_pool5x5``, issue 15 item 3) against
``F.avg_pool2d(x, 5, stride=1, padding=2)`` in the same run.

Shapes: every chained-residual-pooling (``CRPBlock``) shape of the NCSN v1 networks at the sampling
batch 1000 -- MNIST ngf 64: 128x14x14 (refine1, refine2), 64x14x14 (refine3), 64x28x28 (refine4);
CIFAR-10 ngf 128: 256x16x16, 128x16x16, 128x32x32 (each block pools twice per forward) -- in bf16
channels-last (the fast network layout) and fp32 NCHW (the reference layout).

Timing: ``calls`` back-to-back pools captured in one CUDA graph (``conftest.cuda_graph``; no launch
overhead in the numbers), ``calls`` chosen so a replay lasts ~1 ms.  Records (``extra_info``): op,
backend (``triton``: the Triton backend's function; ``reference``: ``F.avg_pool2d``), shape, dtype,
layout, gb_per_s of the bytes the op must move (read x + write out), bandwidth_fraction of the copy
bandwidth measured in the same run, reference_ms (``F.avg_pool2d``, graphed the same way, same run).
Prediction and outcome: benchmarks/NOTES.md, "5x5 average pool (issue 15 item 3)".
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import cuda_graph, cuda_ms, need_backend, record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: (config, C, H) of every CRP pool shape of the NCSN v1 networks
POOLS = [("mnist", 128, 14), ("mnist", 64, 14), ("mnist", 64, 28),
         ("cifar10", 256, 16), ("cifar10", 128, 16), ("cifar10", 128, 32)]
#: (dtype, channels_last): the fast bf16 network layout and the fp32 reference layout
FORMATS = [(torch.bfloat16, True), (torch.float32, False)]
BATCH = 1000
#: wall time one graph replay should last (ms)
REPLAY_MS = 1.0


def _cases():
    return [pytest.param(backend, (BATCH, c, h, h), dtype, cl,
                         id=f"{backend}-{config}-{BATCH}x{c}x{h}x{h}-{str(dtype)[6:]}-{'cl' if cl else 'nchw'}")
            for config, c, h in POOLS for dtype, cl in FORMATS for backend in ("triton", "reference")]


def _pool_fn(backend, x):
    if backend == "reference":
        return lambda: F.avg_pool2d(x, 5, stride=1, padding=2)
    from fastncsn.ops.dispatch import backend_module
    mod, _ = backend_module("triton")
    return lambda: mod.avg_pool5x5(x)


def _graphed(fn):
    """(replay, calls): ``calls`` runs of ``fn`` in one CUDA graph, about ``REPLAY_MS`` per replay."""
    calls = max(1, min(100, int(REPLAY_MS / max(cuda_ms(fn, reps=5, warmup=2), 1e-3))))
    return cuda_graph(fn, calls), calls


@pytest.mark.parametrize("backend,shape,dtype,channels_last", _cases())
def test_avg_pool5x5(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    need_backend(backend)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        key = ("avg_pool5x5", shape, dtype, channels_last)
        if key not in reference_ms_cache:
            replay, calls = _graphed(_pool_fn("reference", x))
            reference_ms_cache[key] = cuda_ms(replay) / calls
        replay, calls = _graphed(_pool_fn(backend, x))
        record(benchmark, replay, op="avg_pool5x5", backend=backend, shape=shape, dtype=dtype,
               bytes_moved=2 * x.numel() * x.element_size(), copy_gbps=copy_gbps,
               reference_ms=reference_ms_cache[key], calls=calls,
               layout="channels_last" if channels_last else "nchw")
