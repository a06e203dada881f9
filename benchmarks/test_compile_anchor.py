"""The compile anchor of the sampling figures: what PyTorch alone gives (issue 15 item 6).

The reference network (``CondRefineNetDilated``, CIN++ by the PyTorch reference, backend
"torch") under ``torch.compile`` (default mode), bf16 autocast, channels-last, and the whole
Langevin step -- forward, ``x <- x + a/2 s + sqrt(a) z`` with ``torch.randn`` noise -- captured in
one CUDA graph and replayed: the "torch.compile bf16 + CUDA graph, whole step" column of
``shared/reference/anchor-figures-h100.md`` (H100: MNIST batch 1000 37.5 ms/step, compile 103 s).
Only MNIST at batch 1000 (the compile takes ~100 s); the reference loop (fp32 eager, as in
``test_sampling_throughput.py``) is measured in the same run so the record is self-contained.

``extra_info``: ``config``, ``batch``, ``path`` ("compile-anchor"), ``precision``, ``layout``,
``ms_per_step`` and ``compile_anchor_ms_per_step`` (the same number, the name the summary joins
on), ``reference_ms_per_step``, ``speedup`` (reference / anchor), ``compile_s`` (warm-up calls
that compile, then the capture), ``peak_mem_gb``, ``device``.  The perf lab runs this file as its
own stage (``anchor``) with its own time limit; a fresh ``TORCHINDUCTOR_CACHE_DIR`` makes
``compile_s`` a cold figure.  Skips without CUDA.
"""
from __future__ import annotations

import time

import pytest
import torch

from fastncsn.sampling.core import step_sizes
from fastncsn.sampling.graphs import capture_graph
from test_sampling_throughput import CONVENTION, EPS, NUM_LEVELS, _model, _reference, _x0

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: (config, batch) of the anchor
ANCHORS = [("mnist", 1000)]
#: timed graph replays (one step each) after capture
REPLAYS = 20


@pytest.mark.parametrize("config,batch", ANCHORS)
def test_compile_anchor(benchmark, config, batch):
    model = _model(config)                                   # reference norms (backend "torch"), fp32 weights
    ref_ms, _ = _reference({}, model, config, batch)
    model.set_backend("torch")
    net = model.to(memory_format=torch.channels_last)
    x = _x0(config, batch).contiguous(memory_format=torch.channels_last)
    levels = torch.full((batch,), NUM_LEVELS - 1, dtype=torch.long, device="cuda")
    # alpha of the last level (Algorithm 1, the benchmark's convention): a device tensor, as every
    # per-step value inside a captured region
    alpha = step_sizes(model.sigmas, EPS, CONVENTION)[-1].to("cuda", torch.float32)
    compiled = torch.compile(net)

    def step():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            s = compiled(x, levels)
        x.add_(alpha / 2 * s.float() + alpha.sqrt() * torch.randn_like(x))

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    graph, _ = capture_graph(step, warmup=3)                 # the first warm-up call compiles
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0

    def replay():
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(replay, rounds=5, warmup_rounds=1, iterations=1)
    ms = benchmark.stats.stats.median * 1e3 / REPLAYS
    assert torch.isfinite(x).all()
    benchmark.extra_info.update(
        config=config, batch=batch, path="compile-anchor", precision="bf16", layout="channels_last",
        ms_per_step=ms, compile_anchor_ms_per_step=ms, reference_ms_per_step=ref_ms, speedup=ref_ms / ms,
        compile_s=compile_s, peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9, step_convention=CONVENTION,
        device=torch.cuda.get_device_name())
