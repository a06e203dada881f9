"""Throughput of the 5x5 stride-1 average pool (``fastncsn.ops.avg_pool5x5``, issue 15 item 3) against
``F.avg_pool2d(x, 5, stride=1, padding=2)`` in the same run.

Shapes: every chained-residual-pooling (``CRPBlock``) shape of the NCSN v1 networks at the sampling
batch 1000 -- MNIST ngf 64: 128x14x14 (refine1, refine2), 64x14x14 (refine3), 64x28x28 (refine4);
CIFAR-10 ngf 128: 256x16x16, 128x16x16, 128x32x32 (each block pools twice per forward) -- in bf16
channels-last (the fast network layout) and fp32 NCHW (the reference layout).

Timing: back-to-back pools captured in one CUDA graph over rotated input sets (``conftest.record``;
no launch overhead, no L2-resident replays in the numbers).  Records (``extra_info``): op,
backend (``triton``: the Triton backend's function; ``reference``: ``F.avg_pool2d``), shape, dtype,
layout, gb_per_s of the bytes the op must move (read x + write out), bandwidth_fraction of the copy
bandwidth measured in the same run, reference_ms (``F.avg_pool2d``, timed the same way, same run).
Prediction and outcome: benchmarks/NOTES.md, "5x5 average pool (issue 15 item 3)".
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import input_sets, need_backend, record, reference_ms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: (config, C, H) of every CRP pool shape of the NCSN v1 networks
POOLS = [("mnist", 128, 14), ("mnist", 64, 14), ("mnist", 64, 28),
         ("cifar10", 256, 16), ("cifar10", 128, 16), ("cifar10", 128, 32)]
#: (dtype, channels_last): the fast bf16 network layout and the fp32 reference layout
FORMATS = [(torch.bfloat16, True), (torch.float32, False)]
BATCH = 1000


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


@pytest.mark.parametrize("backend,shape,dtype,channels_last", _cases())
def test_avg_pool5x5(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    need_backend(backend)
    bytes_moved = 2 * math.prod(shape) * dtype.itemsize            # read x, write out
    sets = []
    for i in range(input_sets(bytes_moved)):
        x = torch.randn(shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(i)).to(dtype)
        sets.append(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    with torch.no_grad():
        ref = reference_ms(reference_ms_cache, ("avg_pool5x5", shape, dtype, channels_last),
                           [_pool_fn("reference", x) for x in sets])
        record(benchmark, [_pool_fn(backend, x) for x in sets], op="avg_pool5x5", backend=backend, shape=shape,
               dtype=dtype, bytes_moved=bytes_moved, copy_gbps=copy_gbps, reference=ref,
               layout="channels_last" if channels_last else "nchw")
