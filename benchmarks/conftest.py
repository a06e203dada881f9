"""Shared helpers of the GPU benchmarks (pytest-benchmark; not part of the default test run).

* Every benchmark skips cleanly without CUDA; nothing touches CUDA at import.
* ``copy_gbps`` measures the device copy bandwidth once per session (a large
  tensor ``.copy_``, read + write bytes per second) so every record can state
  the fraction of it that a kernel reaches in the same run.
* ``record`` times one op with pytest-benchmark -- the timed function runs the
  op ``inner`` times and synchronises, ``inner`` chosen so one call lasts about
  ``TARGET_CALL_MS`` (a lone sync would dominate microsecond kernels) -- and
  writes the ``extra_info`` keys: op, backend, shape, dtype, layout, gb_per_s,
  bandwidth_fraction, reference_ms (plus per_op_ms, inner, device, timed_in_graph).
* Op timings are taken inside a CUDA graph: ``inner`` calls of the op are captured once and
  the graph is replayed (no launch overhead in the numbers; what the samplers and the
  ``auto`` table see).  ``timed_in_graph`` says whether that worked: an op that cannot be
  captured is timed eagerly and recorded with ``timed_in_graph=False`` (scripts/auto_table.py
  ignores such records).  ``FASTNCSN_BENCH_GRAPH=0`` times every op eagerly (the old path).
* Every record of every benchmark file gets ``commit`` (``git rev-parse HEAD``) and
  ``tree_clean`` (``git status --porcelain`` empty) in its ``extra_info``; where the checkout
  has no ``.git`` (a copied tree) they come from ``FASTNCSN_COMMIT`` / ``FASTNCSN_TREE_CLEAN``
  (set by the caller), else ``None``.
"""
from __future__ import annotations

import os
import statistics
import subprocess

import pytest
import torch

#: wall time one timed call should take (ms); calls repeat the op ``inner`` times
TARGET_CALL_MS = 2.0
#: bytes of each of the two buffers of the copy-bandwidth measurement
COPY_BYTES = 1 << 30


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="benchmarks need a CUDA GPU")
    for item in items:
        item.add_marker(skip)


def _git(*args: str):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def git_info() -> dict:
    """``commit`` and ``tree_clean`` of the checkout the benchmarks run from (see module docstring)."""
    head = _git("rev-parse", "HEAD")
    if head is not None:
        status = _git("status", "--porcelain")
        return dict(commit=head.strip(), tree_clean=None if status is None else status.strip() == "")
    clean = os.environ.get("FASTNCSN_TREE_CLEAN")
    return dict(commit=os.environ.get("FASTNCSN_COMMIT"),
                tree_clean=None if clean is None else clean.lower() in ("1", "true", "yes"))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Stamp every record with the commit and whether the tree was clean."""
    info = git_info()
    for bench in output_json.get("benchmarks", []):
        bench.setdefault("extra_info", {}).update(info)
    output_json["fastncsn_git"] = info


def pytest_configure(config):
    # the compiled reference recompiles once per shape; keep dynamo from falling back to eager
    try:
        import torch._dynamo
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096)
    except (ImportError, AttributeError):
        pass


def cuda_ms(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` by CUDA events (one event pair per call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@pytest.fixture(scope="session")
def copy_gbps() -> float:
    """Device copy bandwidth of this run in GB/s (bytes read + bytes written per second)."""
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), reps=30, warmup=5)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * COPY_BYTES / (ms * 1e-3) / 1e9


@pytest.fixture(scope="session")
def reference_ms_cache() -> dict:
    """(op, shape, dtype) -> milliseconds of the eager reference, measured once per session."""
    return {}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def cuda_graph(fn, calls: int):
    """Capture ``calls`` back-to-back calls of ``fn`` in one CUDA graph (after a warm-up on a side
    stream); returns the graph's ``replay``.  Times of a replay carry no launch overhead."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


def graph_timing_enabled() -> bool:
    return os.environ.get("FASTNCSN_BENCH_GRAPH", "1") != "0"


def capture(fn, inner: int):
    """A CUDA graph of ``inner`` calls of ``fn`` (warmed up on a side stream first), or None when
    ``fn`` cannot be captured (a host sync, a CPU tensor read, ...)."""
    from fastncsn.sampling.graphs import capture_graph

    def calls():
        for _ in range(inner):
            fn()
    try:
        graph, _ = capture_graph(calls, warmup=1)
    except Exception:  # noqa: BLE001 -- any capture failure means: time it eagerly
        torch.cuda.synchronize()
        return None
    torch.cuda.synchronize()
    return graph


def record(benchmark, fn, *, op: str, backend: str, shape, dtype, bytes_moved: int | None, copy_gbps: float,
           reference_ms: float | None, rounds: int = 15, layout: str = "contiguous", calls: int = 1,
           **extra) -> float:
    """Benchmark ``fn`` (one op call, or ``calls`` op calls when ``fn`` is already a ``cuda_graph``
    replay) and fill ``benchmark.extra_info``; returns ms per op.

    Timed as replays of a CUDA graph holding ``inner`` calls (``timed_in_graph=True``), or, where
    capture fails or ``FASTNCSN_BENCH_GRAPH=0``, as ``inner`` eager calls and a sync."""
    est = cuda_ms(fn, reps=5, warmup=2)
    inner = max(1, int(TARGET_CALL_MS / max(est, 1e-3)))
    graph = capture(fn, inner) if graph_timing_enabled() and calls == 1 else None

    if graph is not None:
        def timed():
            graph.replay()
            torch.cuda.synchronize()
    else:
        def timed():
            for _ in range(inner):
                fn()
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=2, iterations=1)
    per_op_ms = benchmark.stats.stats.median * 1e3 / inner / calls
    gbps = None if bytes_moved is None else bytes_moved / (per_op_ms * 1e-3) / 1e9
    benchmark.extra_info.update(
        op=op, backend=backend, shape=list(shape), dtype=dtype_name(dtype), layout=layout, gb_per_s=gbps,
        bandwidth_fraction=None if gbps is None else gbps / copy_gbps, copy_gb_per_s=copy_gbps,
        reference_ms=reference_ms if reference_ms is not None else per_op_ms,
        per_op_ms=per_op_ms, inner=inner, calls=calls, device=torch.cuda.get_device_name(),
        timed_in_graph=graph is not None or calls > 1, **extra)
    del graph
    return per_op_ms


#: batch sizes of the op benchmarks: training (128) and sampling (1000)
BATCHES = (128, 1000)


def need_backend(backend: str) -> None:
    """Skip unless the fast backend of ``backend`` ("triton", "cuda-split", ...; "reference" and
    "compile" always run) is available for CUDA tensors."""
    from fastncsn.ops.dispatch import backend_module
    base = backend.split("-")[0]
    if base not in ("triton", "cuda"):
        return
    mod, reason = backend_module(base)
    ok, why = (False, reason) if mod is None else mod.available("cuda")
    if not ok:
        pytest.skip(f"{base} unavailable: {why}")


def reference_ms(cache: dict, key, fn) -> float:
    """Milliseconds of the reference ``fn`` under ``key``, measured once per session (``reference_ms_cache``)."""
    if key not in cache:
        cache[key] = cuda_ms(fn)
    return cache[key]
