"""Throughput of the CIN++ op on every backend, against the PyTorch reference and torch.compile of it.

Shapes are those of the NCSN v1 networks (every CIN++ layer shape of the MNIST
ngf-64 and CIFAR-10 ngf-128 models) at batch 128 (training) and 1000 (sampling),
bf16 channels-last (the fast network layout) and fp32 NCHW (the reference layout).
Records (``extra_info``): op, backend, shape, dtype, gb_per_s of the bytes the op must
move (forward: read x + write out; backward: read x, dy + write dx),
bandwidth_fraction of the device copy bandwidth measured in the same run, reference_ms (the
reference timed the same way: graph replays over rotated input sets, ``conftest.record``).
Every op is given ``input_sets`` independent inputs so the working set exceeds the L2.

Glue fusion (issue 15 item 3; ``op`` ``cin_glue_fwd``): ``test_cin_glue_fwd`` times the fused bias fold
(``cond_instance_norm_plus(..., bias=)``) and the fused residual add (``add_cond_instance_norm_plus``)
on Triton (``triton-glue``) against the unfused composition on Triton (``triton-unfused``: the
add, then the norm) and the reference composition (``reference_ms``, graphed); ``bytes_moved`` is the
fused op's minimum traffic (bias: read x, write out; residual: read x and r, write s and out).
The prediction it tests is in benchmarks/NOTES.md.

Backends: ``triton`` (the backend's function, its own plan), ``cuda`` (the op, automatic plan), ``triton-fused``,
``triton-split``, ``cuda-fused``, ``cuda-split`` (launch plans forced, to tune the
plan choice), ``reference`` (eager ``fastncsn.ops.cond_instance_norm_plus_ref``) and
``compile`` (``torch.compile`` of the reference; the largest layer of each config only,
to bound compile time; deselect with ``-k "not compile"``).  A backend that is not
available (triton missing, ``fastncsn._C`` not built) skips.  Commands: benchmarks/README.md.
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import BATCHES, input_sets, need_backend, record, reference_ms
from fastncsn.ops import cond_instance_norm_plus_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: (config, C, H) of every CIN++ layer shape; the first per config is the largest
LAYERS = [("mnist", 64, 28), ("mnist", 128, 14), ("mnist", 128, 7),
          ("cifar10", 128, 32), ("cifar10", 256, 16), ("cifar10", 256, 8)]
LARGEST = {("mnist", 64, 28), ("cifar10", 128, 32)}
#: (dtype, channels_last): the fast bf16 network layout and the fp32 reference layout
FORMATS = [(torch.bfloat16, True), (torch.float32, False)]
NUM_LEVELS = 10
BACKENDS = ("cuda", "cuda-fused", "cuda-split", "triton", "triton-fused", "triton-split", "reference", "compile")
#: plan per backend name: None the backend's choice, False one fused launch, True the split plan
SPLIT = {"": None, "fused": False, "split": True}


def _cin_cases():
    cases = []
    for config, c, h in LAYERS:
        for n in BATCHES:
            for dtype, cl in FORMATS:
                for backend in BACKENDS:
                    if backend == "compile" and (config, c, h) not in LARGEST:
                        continue
                    layout = "cl" if cl else "nchw"
                    cases.append(pytest.param(backend, (n, c, h, h), dtype, cl,
                                              id=f"{backend}-{config}-{n}x{c}x{h}x{h}-{str(dtype)[6:]}-{layout}"))
    return cases


def _cin_inputs(shape, dtype, channels_last, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(NUM_LEVELS, 3 * shape[1], device="cuda", generator=g)
    y = torch.randint(0, NUM_LEVELS, (shape[0],), device="cuda", generator=g)
    dy = torch.randn_like(x)
    return x, y, w, dy


def _cin_sets(shape, dtype, channels_last, passes):
    """Rotated input sets (``conftest.input_sets``) of an op that moves ``passes`` tensors of ``shape``."""
    k = input_sets(passes * math.prod(shape) * dtype.itemsize)
    return [_cin_inputs(shape, dtype, channels_last, seed=i) for i in range(k)]


def _launches(backend):
    """(forward, backward) launch functions of a fast backend name with its plan bound."""
    base, _, plan = backend.partition("-")
    if base == "cuda":
        code = {None: -1, False: 0, True: 1}[SPLIT[plan]]
        return (lambda x, y, w: torch.ops.fastncsn_cuda.cin_plus_fwd(x, y, w, 1e-5, "elu", code),
                lambda dy, x, y, w, mu, rstd: torch.ops.fastncsn_cuda.cin_plus_bwd(dy, x, y, w, mu, rstd, 1e-5,
                                                                                  "elu", code))
    from fastncsn.ops.triton.cond_instance_norm import launch_cin_bwd, launch_cin_fwd
    split = SPLIT[plan]
    return (lambda x, y, w: launch_cin_fwd(x, y, w, 1e-5, "elu", split=split),
            lambda dy, x, y, w, mu, rstd: launch_cin_bwd(dy, x, y, w, mu, rstd, 1e-5, "elu", split=split))


def _cin_fwd_fn(backend, x, y, w):
    if backend == "triton":                      # the backend's public function (checks + op), its own plan
        from fastncsn.ops.dispatch import backend_module
        mod, _ = backend_module("triton")
        return lambda: mod.cond_instance_norm_plus(x, y, w, activation="elu")
    if backend == "reference":
        return lambda: cond_instance_norm_plus_ref(x, y, w, activation="elu")
    if backend == "compile":
        compiled = torch.compile(cond_instance_norm_plus_ref, dynamic=False)
        return lambda: compiled(x, y, w, activation="elu")
    fwd, _ = _launches(backend)
    return lambda: fwd(x, y, w)


@pytest.mark.parametrize("backend,shape,dtype,channels_last", _cin_cases())
def test_cin_fwd(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    need_backend(backend)
    sets = _cin_sets(shape, dtype, channels_last, 2)
    with torch.no_grad():
        ref = reference_ms(reference_ms_cache, ("cin_fwd", shape, dtype, channels_last),
                           [_cin_fwd_fn("reference", x, y, w) for x, y, w, _ in sets])
        record(benchmark, [_cin_fwd_fn(backend, x, y, w) for x, y, w, _ in sets], op="cin_fwd", backend=backend,
               shape=shape, dtype=dtype, bytes_moved=2 * math.prod(shape) * dtype.itemsize, copy_gbps=copy_gbps,
               reference=ref,
               layout="channels_last" if channels_last else "nchw")


def _cin_bwd_fn(backend, x, y, w, dy):
    """A function running the backward only (statistics / autograd graph made once, outside the timing)."""
    if backend in ("reference", "compile"):
        xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
        fwd = cond_instance_norm_plus_ref if backend == "reference" else \
            torch.compile(cond_instance_norm_plus_ref, dynamic=False)
        out = fwd(xr, y, wr, activation="elu")
        return lambda: torch.autograd.grad(out, (xr, wr), dy, retain_graph=True)
    fwd, bwd = _launches(backend)
    _, mu, rstd = fwd(x, y, w)
    return lambda: bwd(dy, x, y, w, mu, rstd)


@pytest.mark.parametrize("backend,shape,dtype,channels_last", _cin_cases())
def test_cin_bwd(benchmark, copy_gbps, reference_ms_cache, backend, shape, dtype, channels_last):
    need_backend(backend)
    sets = _cin_sets(shape, dtype, channels_last, 3)
    ref = reference_ms(reference_ms_cache, ("cin_bwd", shape, dtype, channels_last),
                       [_cin_bwd_fn("reference", *inputs) for inputs in sets])
    record(benchmark, [_cin_bwd_fn(backend, *inputs) for inputs in sets], op="cin_bwd", backend=backend,
           shape=shape, dtype=dtype, bytes_moved=3 * math.prod(shape) * dtype.itemsize, copy_gbps=copy_gbps,
           reference=ref, layout="channels_last" if channels_last else "nchw")


@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("config,n", [("cifar10", 1000), ("mnist", 1000), ("cifar10", 128)])
def test_network_forward(benchmark, copy_gbps, reference_ms_cache, config, n, backend):
    """Whole NCSN v1 network forward, bf16 channels-last (acceptance: CIFAR-10, batch 1000, Triton <= 60 ms)."""
    need_backend(backend)
    from fastncsn.models import CondRefineNetDilated
    c, size, ngf = (3, 32, 128) if config == "cifar10" else (1, 28, 64)
    torch.manual_seed(0)
    net = CondRefineNetDilated(image_size=size, channels=c, ngf=ngf, num_levels=NUM_LEVELS).cuda().eval()
    net = net.to(torch.bfloat16, memory_format=torch.channels_last)
    x = torch.rand(n, c, size, size, device="cuda").to(torch.bfloat16, memory_format=torch.channels_last)
    y = torch.randint(0, NUM_LEVELS, (n,), device="cuda")
    with torch.no_grad():
        net.set_backend("torch")
        ref = reference_ms(reference_ms_cache, ("network", config, n), lambda: net(x, y))
        net.set_backend(backend)
        ms = record(benchmark, lambda: net(x, y), op="network_forward", backend=backend, shape=x.shape,
                    dtype=torch.bfloat16, bytes_moved=None, copy_gbps=copy_gbps,
                    reference=ref, rounds=10, layout="channels_last")
    benchmark.extra_info["images_per_s"] = n / (ms * 1e-3)


# --------------------------------------------------------------------------- glue fusion (issue 15 item 3)

GLUE_FORMS = ("bias", "residual")


def _glue_fn(backend, form, x, r, b, y, w):
    """One forward of the fused glue form: fused Triton op, unfused Triton composition, or eager reference."""
    from fastncsn.ops import add_cond_instance_norm_plus, add_cond_instance_norm_plus_ref, cond_instance_norm_plus
    if backend == "triton-glue":
        if form == "bias":
            return lambda: cond_instance_norm_plus(x, y, w, activation="elu", bias=b, backend="triton")
        return lambda: add_cond_instance_norm_plus(x, r, y, w, activation="elu", backend="triton")
    if backend == "triton-unfused":
        if form == "bias":
            return lambda: cond_instance_norm_plus(x + b[None, :, None, None], y, w, activation="elu",
                                                   backend="triton")
        return lambda: cond_instance_norm_plus(x + r, y, w, activation="elu", backend="triton")
    if form == "bias":
        return lambda: cond_instance_norm_plus_ref(x, y, w, activation="elu", bias=b)
    return lambda: add_cond_instance_norm_plus_ref(x, r, y, w, activation="elu")


@pytest.mark.parametrize("backend", ["triton-glue", "triton-unfused"])
@pytest.mark.parametrize("form", GLUE_FORMS)
@pytest.mark.parametrize("dtype,channels_last", FORMATS, ids=["bf16-cl", "fp32-nchw"])
@pytest.mark.parametrize("config,c,h", [layer for layer in LAYERS if layer[0] == "mnist"],
                         ids=lambda v: v if isinstance(v, str) else str(v))
def test_cin_glue_fwd(benchmark, copy_gbps, reference_ms_cache, config, c, h, dtype, channels_last, form, backend):
    need_backend(backend)
    shape = (1000, c, h, h)
    passes = 2 if form == "bias" else 4                   # bias: read x, write out; residual: read x, r, write s, out
    sets = [(x, y, w, r, torch.randn(c, device="cuda")) for x, y, w, r in _cin_sets(shape, dtype, channels_last, passes)]
    with torch.no_grad():
        ref = reference_ms(reference_ms_cache, ("cin_glue_fwd", form, shape, dtype, channels_last),
                           [_glue_fn("reference", form, x, r, b, y, w) for x, y, w, r, b in sets])
        record(benchmark, [_glue_fn(backend, form, x, r, b, y, w) for x, y, w, r, b in sets], op="cin_glue_fwd",
               backend=backend, shape=shape, dtype=dtype, bytes_moved=passes * math.prod(shape) * dtype.itemsize,
               copy_gbps=copy_gbps, reference=ref, form=form, layout="channels_last" if channels_last else "nchw")
