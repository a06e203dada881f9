"""Throughput of the Langevin step op on every backend, against the PyTorch reference and torch.compile of it.

The Langevin state of MNIST and CIFAR-10 (fp32) at batch 128 and 1000 with bf16 and fp32
scores, one step size per sample, Philox noise drawn in the kernel.  Records
(``extra_info``): op, backend, shape, dtype (of the score), gb_per_s of the bytes the
step must move (read x, score + write x), bandwidth_fraction, reference_ms (graphed like the
backends, rotated input sets: ``conftest.record``).  Backends:
``cuda``, ``triton`` (skipped when unavailable), ``reference`` (eager
``fastncsn.ops.langevin_step_ref`` with ``torch.randn`` noise) and ``compile``
(``torch.compile`` of it).  Commands: benchmarks/README.md.
"""
from __future__ import annotations

import pytest
import torch

from conftest import BATCHES, input_sets, need_backend, record, reference_ms
from fastncsn.ops import langevin_step_ref
from fastncsn.ops.dispatch import backend_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: image shape of the Langevin state per config
IMAGES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _langevin_fn(backend, x, score, a, seed, offset):
    if backend in ("cuda", "triton"):                # the backend's function (checks + op)
        mod, _ = backend_module(backend)
        return lambda: mod.langevin_step_(x, score, a, seed, offset)

    def eager():
        x.copy_(langevin_step_ref(x, score, a, torch.randn_like(x)))
    return eager if backend == "reference" else torch.compile(eager, dynamic=False)


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference", "compile"])
@pytest.mark.parametrize("score_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("config", sorted(IMAGES))
def test_langevin_step(benchmark, copy_gbps, reference_ms_cache, config, n, score_dtype, backend):
    need_backend(backend)
    shape = (n, *IMAGES[config])
    numel = n * IMAGES[config][0] * IMAGES[config][1] * IMAGES[config][2]
    bytes_moved = numel * (2 * 4 + score_dtype.itemsize)         # read x (fp32), score; write x
    seed = torch.tensor(0, device="cuda")
    offset = torch.tensor(0, device="cuda")
    sets = [(torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda").to(score_dtype),
             torch.full((n,), 1e-4, device="cuda")) for _ in range(input_sets(bytes_moved))]
    ref = reference_ms(reference_ms_cache, ("langevin", shape, score_dtype),
                       [_langevin_fn("reference", x, score, a, seed, offset) for x, score, a in sets])
    record(benchmark, [_langevin_fn(backend, x, score, a, seed, offset) for x, score, a in sets],
           op="langevin_step", backend=backend, shape=shape, dtype=score_dtype, bytes_moved=bytes_moved,
           copy_gbps=copy_gbps, reference=ref, layout="nchw", state_dtype="float32")
