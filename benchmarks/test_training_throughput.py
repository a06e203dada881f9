"""Training-step throughput: the reference eager step against the fast step (issue 7).

One step = draw levels and noise on the device, DSM loss (seed 003 eq. 5-6,
lambda = sigma^2), backward, Adam -- what ``fastncsn.train`` does per step, on a
fixed random batch (no data loading).  Configs at batch 128, L = 10 levels:
MNIST (28x28x1, ngf 64) and CIFAR-10 (32x32x3, ngf 128), NCSN v1
(``CondRefineNetDilated``).  Paths:

* ``reference`` -- fp32, NCHW, CIN++ by the PyTorch reference (backend "torch"),
  eager, Adam (foreach): the baseline of the issue (133.4 ms CIFAR-10, 117.3 ms
  MNIST on an H100);
* ``fast`` -- ``fastncsn.training.fast``: bf16 autocast with the loss in fp32,
  channels-last, fused CIN++ (backend "auto"), regional ``torch.compile`` of the
  residual and RefineNet blocks, fused Adam;
* ``fast-eager`` -- the same without the compile (what the compile buys);
* ``fast-graph`` -- the fast path with the whole step (draws, forward, backward,
  capturable fused Adam, loss accumulators) replayed from one CUDA graph
  (``fastncsn.training.GraphTrainStep``, issue 16; prediction in benchmarks/NOTES.md);
* ``fast-graph-eager`` -- the same graph without the regional compile (what the graph
  buys on its own, at a few seconds of start-up instead of the compile's ~90 s).

Order: ``fast-graph`` runs before ``fast``, so where a stage gives the process a fresh
Inductor cache (the perf lab does) the candidate default's ``startup_s`` is the cold one;
``compile_index`` (0, 1, ... among the compiled records of the process) says which
records compiled into a warm cache.

``test_train_startup`` times ``fastncsn.train`` itself (digits, MNIST config, 3 steps)
on the fast path with and without the graph: ``startup_s`` from the run's log (model
preparation to the end of the first step) and ``train_call_s`` (the whole call:
data, model, 2 warm-up steps, capture and the first replay for the graph).

Every record's ``extra_info``: ``config``, ``batch``, ``path``, ``precision``,
``backend`` (the CIN++ backend "auto" resolved to), ``compile``, ``compile_index``, ``ms_per_step``,
``images_per_s``, ``graph`` (the step replayed from a CUDA graph), ``ready_s`` (to the end of the 4th step: the graph
path's first replay), ``reference_ms_per_step`` (the reference path, same run, measured
once per config in a module-scoped cache), ``speedup``, ``startup_s`` (from model
preparation to the end of the first step, compilation included), ``peak_mem_gb``
(``torch.cuda.max_memory_allocated`` over build and timing), ``params``, ``device``.
Skips without CUDA; nothing touches CUDA at import.  Command: benchmarks/README.md.
"""
from __future__ import annotations

import json
import statistics
import time

import pytest
import torch
import torch._dynamo

from fastncsn import ops
from fastncsn.training import GraphTrainStep, dsm_step, make_optimizer, prepare_fast_model, train
from fastncsn.models import CondRefineNetDilated

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CONFIGS = {"mnist": dict(image_size=28, channels=1, ngf=64), "cifar10": dict(image_size=32, channels=3, ngf=128)}
NUM_LEVELS = 10
BATCH = 128
LR = 1e-3
#: steps per timed call (one host sync per call) and timed calls per record
INNER, ROUNDS = 5, 10
DEVICE = "cuda"
#: path -> (precision, fused backend, compile)
PATHS = {"reference": ("fp32", "torch", False), "fast-graph": ("bf16", "auto", True), "fast": ("bf16", "auto", True),
         "fast-graph-eager": ("bf16", "auto", False), "fast-eager": ("bf16", "auto", False)}
#: the paths whose whole step is replayed from a CUDA graph (2 eager warm-up steps, then capture)
GRAPH_PATHS = ("fast-graph", "fast-graph-eager")
#: compiled records so far in this process (``compile_index``)
_COMPILED = []


@pytest.fixture(scope="module")
def reference_ms_per_step() -> dict:
    """config -> ms per reference step, measured once per module run."""
    return {}


def _build(config: str, path: str):
    """(step function, startup seconds, ready seconds, parameter count) of a fresh model on ``path``."""
    precision, backend, compile = PATHS[path]
    fast = path != "reference"
    if fast:
        torch._dynamo.reset()  # every fast record compiles from scratch in this process
    torch.manual_seed(0)
    model = CondRefineNetDilated(num_levels=NUM_LEVELS, backend=backend, **CONFIGS[config]).to(DEVICE).train()
    cfg = CONFIGS[config]
    x = torch.rand(BATCH, cfg["channels"], cfg["image_size"], cfg["image_size"], device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if fast:
        prepare_fast_model(model, DEVICE, precision, compile=compile, backend=backend)
    opt = make_optimizer(model, LR, fast, capturable=path in GRAPH_PATHS)

    if path in GRAPH_PATHS:
        graph_step = GraphTrainStep(model, opt, model.sigmas, generator=gen, precision=precision, channels_last=True,
                                    use_graphs=True)

        def step():
            graph_step(x)
    else:
        def step():
            levels = torch.randint(0, NUM_LEVELS, (BATCH,), generator=gen, device=DEVICE)
            z = torch.randn(x.shape, generator=gen, device=DEVICE)
            dsm_step(model, x, model.sigmas, levels, z, precision=precision, channels_last=fast, optimizer=opt)

    step()
    torch.cuda.synchronize()
    startup = time.perf_counter() - t0
    for _ in range(3):  # cudnn.benchmark and Triton autotuning settle; the graph path captures at step 3
        step()
    torch.cuda.synchronize()
    ready = time.perf_counter() - t0
    if path in GRAPH_PATHS:
        assert graph_step.captures == 1, "the training step was not captured (see the warning)"
    return step, startup, ready, sum(p.numel() for p in model.parameters())


def _timed(step):
    def run():
        for _ in range(INNER):
            step()
        torch.cuda.synchronize()
    return run


def _reference(cache: dict, config: str) -> float:
    if config not in cache:
        step, _, _, _ = _build(config, "reference")
        run = _timed(step)
        times = []
        for _ in range(ROUNDS):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3 / INNER)
        cache[config] = statistics.median(times)
        torch.cuda.empty_cache()
    return cache[config]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_training_step(benchmark, reference_ms_per_step, config, path):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    precision, backend, compile = PATHS[path]
    compile_index = len(_COMPILED) if compile else None
    if compile:
        _COMPILED.append(path)
    step, startup, ready, params = _build(config, path)
    benchmark.pedantic(_timed(step), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    ms = benchmark.stats.stats.median * 1e3 / INNER
    peak = torch.cuda.max_memory_allocated() / 1e9
    del step
    if path == "reference":
        reference_ms_per_step.setdefault(config, ms)
    ref_ms = _reference(reference_ms_per_step, config)
    benchmark.extra_info.update(
        config=config, batch=BATCH, path=path, precision=precision,
        backend=ops.resolve_backend(backend, DEVICE), compile=compile, ms_per_step=ms,
        images_per_s=BATCH / (ms * 1e-3), graph=path in GRAPH_PATHS, reference_ms_per_step=ref_ms,
        speedup=ref_ms / ms, startup_s=startup, ready_s=ready, compile_index=compile_index,
        peak_mem_gb=peak, params=params, num_levels=NUM_LEVELS, device=torch.cuda.get_device_name())
    assert ms > 0


@pytest.mark.parametrize("graph", [False, True], ids=["fast", "fast-graph"])
def test_train_startup(benchmark, tmp_path, graph):
    """``fastncsn.train`` on the default fast path (digits, MNIST config, batch 128): start-up to the first
    finished step (the run's log) and the whole 3-step call (issue 16 item 3: first step within 60 s)."""
    torch._dynamo.reset()  # compile from scratch, as a fresh process would
    out = tmp_path / ("graph" if graph else "fast")

    def call():
        train(data="digits", steps=3, ngf=CONFIGS["mnist"]["ngf"], num_levels=NUM_LEVELS, batch_size=BATCH, lr=LR,
              device=DEVICE, progress=False, log_every=1, checkpoint_every=1000, out_dir=str(out), resume=False,
              graph=graph)
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=1, iterations=1)
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    benchmark.extra_info.update(config="mnist", batch=BATCH, path="fast-graph" if graph else "fast", graph=graph,
                                startup_s=log[0]["startup_s"], train_call_s=benchmark.stats.stats.max,
                                device=torch.cuda.get_device_name())
    assert log[0]["startup_s"] > 0
