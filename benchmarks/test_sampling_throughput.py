"""Sampling throughput: the reference annealed-Langevin loop against the CUDA-graph sampler (issue 6).

One step of annealed Langevin dynamics (seed 003, Algorithm 1) is one network
evaluation plus ``x <- x + alpha_i/2 s(x, i) + sqrt(alpha_i) z``.  Networks: NCSN v1
``CondRefineNetDilated`` with L = 10 levels and random weights, configs ``mnist``
(28x28x1, ngf 64) and ``cifar10`` (32x32x3, ngf 128), at batch 100 and 1000.  Paths:

* ``reference`` -- :func:`fastncsn.sampling.annealed_langevin`, fp32, NCHW, CIN++ by
  the PyTorch reference (backend "torch"), eager; timed one step at a time (host sync
  after each) over ``REF_STEPS`` steps after ``REF_WARMUP`` warm-up steps;
* ``graph-bf16`` / ``graph-fp32`` -- :func:`fastncsn.sampling.get_graph_sampler`
  (what ``fastncsn.sample`` runs on CUDA): static buffers, fused CIN++ and Langevin
  step (backend "auto"), one CUDA graph per level; timed as whole ``sample()`` calls
  of L x ``GRAPH_T[batch]`` steps (all levels, one sync per call) divided by the step count;
* ``graph-bf16-strict`` / ``graph-bf16-once`` / ``graph-bf16-strict-once`` -- the graph
  sampler's network-format switches (issue 15 item 2, :mod:`fastncsn.sampling.network_format`):
  ``layout="channels_last_strict"`` (NHWC for one channel too, weights converted once),
  ``weights="bf16_once"`` (bf16 weights made once, no autocast), and both; timed like
  ``graph-bf16`` in the same run, so the old and new formats are compared side by side
  (prediction: benchmarks/NOTES.md, "Layout and precision (issue 15 item 2)");
* ``graph-bf16-pool`` / ``graph-bf16-glue`` -- ``graph-bf16`` with one fusion switch on
  (``fastncsn.nn.set_fused_pool`` / ``set_fused_glue``, issue 15 item 3), and ``graph-bf16-all``:
  the strict layout, bf16-once weights and both fusions (every pending switch at once).

Every record's ``extra_info``: ``config``, ``batch``, ``path``, ``precision``,
``ms_per_step``, ``images_per_s`` (of a full NCSN run, L*T = 10*100 steps),
``layout``, ``weights``, ``fused_pool``, ``fused_glue`` (the variant; graph paths), ``timed_in_graph``
(graph paths: the timed calls replayed captured graphs), ``steps_per_call``,
``reference_ms_per_step`` and ``reference_peak_mem_gb`` (the reference path at the
same config and batch, measured once per module run), ``speedup``, ``gflop_per_image``
and ``tflops`` (FLOP count of one network forward, see :func:`_gflop_per_image`),
``peak_tflops`` and ``peak_fraction`` (of the device's dense bf16 peak, ``None`` for
an unknown device), ``peak_mem_gb``, ``startup_s`` (graph paths), ``first_call_s``,
``build_s``, ``device``.  The fp32 graph sampler's agreement with the reference
sampler is tested in tests/test_graph_sampler.py (``test_gpu_fp32_graph_equals_reference``).
Skips without CUDA; nothing touches CUDA at import.  Command: benchmarks/README.md.
"""
from __future__ import annotations

import gc
import statistics
import time

import pytest
import torch

from fastncsn import ops
from fastncsn.models import CondRefineNetDilated
from variants import PATH_PREFIX, VARIANTS, apply_switches, settings
from fastncsn.sampling import annealed_langevin, clear_graph_cache, get_graph_sampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONFIGS = {"mnist": dict(image_size=28, channels=1, ngf=64), "cifar10": dict(image_size=32, channels=3, ngf=128)}
BATCHES = (100, 1000)
NUM_LEVELS = 10
#: NCSN's sampler: T = 100 steps per level, step_lr 2e-5 in the reference convention
FULL_T, EPS, CONVENTION = 100, 2e-5, "reference"
#: steps per level of the timed graph sampler, per batch: one timed call = NUM_LEVELS * GRAPH_T steps, long
#: enough that one host sync per call is noise (H100 2026-11-22: b1000 69-134 ms/step -> 0.7-1.3 s per call;
#: b100 7-16 ms/step -> 0.3-0.7 s) and short enough that every variant fits the perf lab's stage limits
GRAPH_T = {100: 4, 1000: 1}
#: timed sample() calls per graph record (the first, untimed call builds and captures)
ROUNDS = 3
#: reference loop: warm-up steps, then timed steps (short: 365 ms/step at CIFAR-10 batch 1000)
REF_WARMUP, REF_STEPS = 1, 3
DEVICE = "cuda"
#: path -> the settings of a graph path (benchmarks/variants.py: GraphSampler layout / weights, model switches)
_GRAPH = {"graph-bf16": settings(None), "graph-fp32": settings(None),
          **{PATH_PREFIX + v: settings(v) for v in VARIANTS}}
#: path -> precision, in run order (a stage cut at its limit keeps the first): the reference, the old bf16
#: path, the candidates with the most switches on, the fp32 path, then one switch at a time
PATHS = {"reference": "fp32", "graph-bf16": "bf16", "graph-bf16-all": "bf16", "graph-bf16-strict-once": "bf16",
         "graph-fp32": "fp32", **{PATH_PREFIX + v: "bf16" for v in VARIANTS}}
#: dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendor data sheets; matched in order
#: against the lower-case device name (first match wins)
BF16_PEAK_TFLOPS = [
    (("h200",), 989.4),
    (("h100", "pcie"), 756.5),
    (("h100", "nvl"), 835.5),
    (("h100",), 989.4),          # SXM5 ("NVIDIA H100 80GB HBM3")
    (("a100",), 312.0),          # SXM4 and PCIe alike
]

_GFLOP: dict = {}


def bf16_peak_tflops(name: str):
    """Dense bf16 peak of the device called ``name`` (``torch.cuda.get_device_name()``), or None."""
    low = name.lower()
    for keys, peak in BF16_PEAK_TFLOPS:
        if all(k in low for k in keys):
            return peak
    return None


@pytest.fixture(scope="module")
def reference_cache() -> dict:
    """(config, batch) -> (ms per reference step, peak memory GB), measured once per module run."""
    return {}


@pytest.fixture(autouse=True)
def _fresh_memory():
    """Every record starts with no cached samplers (their graph pools) and empty allocator caches."""
    clear_graph_cache()
    gc.collect()
    torch.cuda.empty_cache()
    yield
    clear_graph_cache()
    gc.collect()
    torch.cuda.empty_cache()


def _model(config: str) -> CondRefineNetDilated:
    torch.manual_seed(0)
    return CondRefineNetDilated(num_levels=NUM_LEVELS, backend="torch", **CONFIGS[config]).to(DEVICE).eval()


def _x0(config: str, batch: int) -> torch.Tensor:
    cfg = CONFIGS[config]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    return torch.rand(batch, cfg["channels"], cfg["image_size"], cfg["image_size"], device=DEVICE, generator=g)


def _gflop_per_image(model, config: str) -> float:
    """FLOPs of one network forward per image, counted once per config by
    ``torch.utils.flop_counter.FlopCounterMode`` on a batch of 1 (2 per multiply-add of the
    convolutions -- the only ops it counts here; the norms and activations are not matrix work).
    FLOPs are linear in the batch, so a step at batch B is B times this.  MNIST: 3.79, CIFAR-10: 19.8."""
    if config not in _GFLOP:
        from torch.utils.flop_counter import FlopCounterMode
        x = _x0(config, 1)
        y = torch.zeros(1, dtype=torch.long, device=DEVICE)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, y)
        _GFLOP[config] = counter.get_total_flops() / 1e9
    return _GFLOP[config]


def _reset_peak() -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _reference_step(model, x0):
    """One eager reference step per call (level 1), fp32, the CIN++ reference; synchronises."""
    model.set_backend("torch")
    state = {"x": x0}
    sigmas = model.sigmas[:1]

    def step():
        with torch.no_grad():
            # (level 1 of the model: a plain score function, as a model checks it is given all its levels)
            state["x"] = annealed_langevin(lambda x, i: model(x, i), state["x"], sigmas, eps=EPS, steps_per_level=1,
                                           step_convention=CONVENTION, seed=0)
        torch.cuda.synchronize()
    return step


def _reference(cache: dict, model, config: str, batch: int):
    """(ms per reference step, peak GB) at (config, batch), from the cache or measured now."""
    key = (config, batch)
    if key not in cache:
        step = _reference_step(model, _x0(config, batch))
        _reset_peak()
        for _ in range(REF_WARMUP):
            step()
        times = []
        for _ in range(REF_STEPS):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        cache[key] = (statistics.median(times), torch.cuda.max_memory_allocated() / 1e9)
        del step
        gc.collect()
    return cache[key]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_sampling_step(benchmark, reference_cache, config, batch, path):
    model = _model(config)
    gflop = _gflop_per_image(model, config)
    precision = PATHS[path]
    opts = _GRAPH.get(path, settings(None))
    layout, weights, fused_pool, fused_glue = (opts[k] for k in ("layout", "weights", "fused_pool", "fused_glue"))
    startup = first_call = build = None
    graphed = False
    if path == "reference":
        step = _reference_step(model, _x0(config, batch))
        _reset_peak()
        benchmark.pedantic(step, rounds=REF_STEPS, warmup_rounds=REF_WARMUP, iterations=1)
        ms = benchmark.stats.stats.median * 1e3
        peak = torch.cuda.max_memory_allocated() / 1e9
        reference_cache.setdefault((config, batch), (ms, peak))
        del step
    else:
        _reference(reference_cache, model, config, batch)  # measured before this path's peak is reset
        # what a default-built model gives fastncsn.sample(): fused CIN++ by backend "auto" (the reference
        # step above left the norms on "torch"; the first H100 run, 2026-11-22, timed the graph paths
        # with those unfused norms -- see benchmarks/results/README.md)
        model.set_backend("auto")
        apply_switches(model, fused_pool, fused_glue)
        x0 = _x0(config, batch)
        steps = NUM_LEVELS * GRAPH_T[batch]
        _reset_peak()
        t0 = time.perf_counter()
        sampler = get_graph_sampler(model, batch, eps=EPS, steps_per_level=GRAPH_T[batch],
                                    step_convention=CONVENTION, precision=precision, layout=layout, weights=weights)
        sampler.sample(batch, seed=0, x0=x0)
        torch.cuda.synchronize()
        first_call = time.perf_counter() - t0
        build = sampler.build_seconds
        assert sampler.use_graphs and sampler.captures >= 1 and sampler.precision == precision
        assert (sampler.layout, sampler.weights) == (layout, weights)
        graphed = sampler.use_graphs

        def run():
            sampler.sample(batch, seed=0, x0=x0)
            torch.cuda.synchronize()

        benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=0, iterations=1)
        ms = benchmark.stats.stats.median * 1e3 / steps
        peak = torch.cuda.max_memory_allocated() / 1e9
        # start-up = the first call (sampler construction, warm-up steps that compile the kernels,
        # graph capture, then `steps` replayed steps) up to the end of its first step: its wall time
        # less the steady-state time of its other steps - 1 steps
        startup = first_call - (steps - 1) * ms / 1e3
    ref_ms, ref_peak = _reference(reference_cache, model, config, batch)
    # a full NCSN sample is L*T = 10*100 steps: images/s = batch / (ms_per_step * L * T / 1000)
    images_per_s = batch / (ms * NUM_LEVELS * FULL_T / 1e3)
    # one step = one forward of the batch: batch * gflop_per_image GFLOP in ms_per_step
    tflops = batch * gflop * 1e9 / (ms * 1e-3) / 1e12
    name = torch.cuda.get_device_name()
    peak_tflops = bf16_peak_tflops(name)
    benchmark.extra_info.update(
        config=config, batch=batch, path=path, precision=precision,
        layout=None if path == "reference" else layout, weights=None if path == "reference" else weights,
        fused_pool=fused_pool, fused_glue=fused_glue, timed_in_graph=graphed,
        steps_per_call=1 if path == "reference" else NUM_LEVELS * GRAPH_T[batch],
        ms_per_step=ms, images_per_s=images_per_s,
        reference_ms_per_step=ref_ms, speedup=ref_ms / ms, gflop_per_image=gflop, tflops=tflops,
        peak_tflops=peak_tflops, peak_fraction=None if peak_tflops is None else tflops / peak_tflops,
        peak_mem_gb=peak, reference_peak_mem_gb=ref_peak, startup_s=startup, first_call_s=first_call,
        build_s=build, num_levels=NUM_LEVELS, full_steps_per_level=FULL_T, device=name,
        cin_backend=ops.resolve_backend("torch" if path == "reference" else "auto", torch.device(DEVICE),
                                        "cond_instance_norm_plus"))
    assert ms > 0


def test_second_call_reuses_captured_graph(record_property):
    """A second ``get_graph_sampler`` with the same model and settings returns the cached sampler and
    replays its graphs: no new program or capture, the same samples, and no start-up cost."""
    model = _model("mnist")
    batch = 100
    x0 = _x0("mnist", batch)

    def call():
        torch.cuda.synchronize()
        t = time.perf_counter()
        sampler = get_graph_sampler(model, batch, eps=EPS, steps_per_level=1, step_convention=CONVENTION,
                                    precision="bf16")
        out = sampler.sample(batch, seed=0, x0=x0)
        torch.cuda.synchronize()
        return sampler, out, time.perf_counter() - t

    first, a, first_s = call()
    captures = first.captures
    second, b, second_s = call()
    record_property("first_call_s", first_s)
    record_property("second_call_s", second_s)
    assert second is first
    assert first.use_graphs and captures >= 1
    assert second.captures == captures and second.programs_built == 1
    assert torch.equal(a, b)
    # the first call warms up (compiles) and captures; the second only replays its 10 steps
    assert second_s < 0.5 * first_s, (first_s, second_s)
