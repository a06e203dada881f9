"""Shared helpers of the GPU benchmarks (pytest-benchmark; not part of the default test run).

* Every benchmark skips cleanly without CUDA; nothing touches CUDA at import.
* ``copy_gbps`` measures the device copy bandwidth once per session (a 1 GiB ``.copy_``, far
  beyond any L2; read + write bytes per second) so every record states the fraction of it that a
  kernel reaches *in the same run* (``bandwidth_fraction``, ``copy_gb_per_s``).
* ``record`` times one op with pytest-benchmark and writes the ``extra_info`` keys: op, backend,
  shape, dtype, layout, gb_per_s, bandwidth_fraction, reference_ms (plus per_op_ms, calls,
  input_sets, working_set_bytes, l2_bytes, device, timed_in_graph, reference_timed_in_graph).
* Op timings are replays of a CUDA graph (no launch overhead in the numbers: what the samplers and
  the ``auto`` table see) holding ``calls`` op calls, ``calls`` chosen so a replay lasts about
  ``TARGET_CALL_MS``.  **Inputs rotate**: the op is given ``input_sets`` independent input sets
  (:func:`input_sets`: together at least ``ROTATE_L2_FACTOR`` x the device's L2, 60 MB on an H200)
  and the calls cycle through them, the outputs of the last ``input_sets`` calls kept alive so the
  outputs rotate too -- one buffer replayed over and over would be served from L2 and report more
  than DRAM bandwidth.  ``reference_ms`` (:func:`reference_ms`) is the reference timed the same way
  (graphed, rotated), same run.  An op that cannot be captured is timed eagerly and recorded with
  ``timed_in_graph=False`` (scripts/auto_table.py ignores such records); ``FASTNCSN_BENCH_GRAPH=0``
  times every op eagerly (the old path).
* Every record of every benchmark file gets :func:`provenance.stamp` in its ``extra_info``:
  ``commit``, ``tree_clean``, ``commit_source`` and ``versions`` (device, driver, torch, Triton,
  CUDA, cuDNN, Python, L2); where the checkout has no ``.git`` (the GPU machine's copy) the commit
  comes from the verified ``.lab/commit.json`` (benchmarks/provenance.py), else ``None``.
"""
from __future__ import annotations

import collections
import math
import os
import statistics

import pytest
import torch

import provenance
from interrupted import pytest_benchmark_generate_json  # noqa: F401 -- the hook: a SIGINT keeps the finished records

#: wall time one timed replay should take (ms); a replay holds ``calls`` op calls
TARGET_CALL_MS = 2.0
#: bytes of each of the two buffers of the copy-bandwidth measurement
COPY_BYTES = 1 << 30
#: the rotated input sets hold at least this many times the device's L2 (their bytes, read + written)
ROTATE_L2_FACTOR = 3
#: at most this many input sets (the smallest records, the Langevin step at batch 128, need ~200)
MAX_SETS = 256
#: L2 bytes where the device reports none: the H200's 60 MB (PyTorch's L2_cache_size, 2026-10-28,
#: /work/.library/device/KINDS.md), the largest of the GPUs the lab runs on
DEFAULT_L2_BYTES = 60 * 2 ** 20


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="benchmarks need a CUDA GPU")
    for item in items:
        item.add_marker(skip)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Stamp every record with the commit, whether the tree was clean, and the versions."""
    info = provenance.stamp()
    for bench in output_json.get("benchmarks", []):
        bench.setdefault("extra_info", {}).update(info)
    output_json["fastncsn_git"] = {k: info.get(k) for k in ("commit", "tree_clean", "commit_source")}
    output_json["fastncsn_provenance"] = info


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
    """key -> (ms, timed_in_graph) of the reference, measured once per session (:func:`reference_ms`)."""
    return {}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def graph_timing_enabled() -> bool:
    return os.environ.get("FASTNCSN_BENCH_GRAPH", "1") != "0"


def l2_bytes() -> int:
    """The device's L2 in bytes (``DEFAULT_L2_BYTES`` where it reports none)."""
    return provenance.versions().get("l2_bytes") or DEFAULT_L2_BYTES


def input_sets(bytes_per_set: int) -> int:
    """How many independent input sets an op with ``bytes_per_set`` bytes per call (read + written) rotates
    through: together at least ``ROTATE_L2_FACTOR`` x L2, at most ``MAX_SETS``, at least 1."""
    if bytes_per_set is None or bytes_per_set <= 0:
        return 1
    return max(1, min(MAX_SETS, math.ceil(ROTATE_L2_FACTOR * l2_bytes() / bytes_per_set)))


def rotating(fns, target_ms: float = TARGET_CALL_MS):
    """``(run, calls, timed_in_graph)`` for the op calls ``fns`` (one per input set).

    ``run()`` executes ``calls`` op calls -- a multiple of ``len(fns)``, cycling through the sets, about
    ``target_ms`` in all -- and synchronises: one replay of a CUDA graph holding them (the outputs of
    the last ``len(fns)`` calls are kept alive during capture, so the outputs rotate through distinct
    buffers as well), or, where capture fails or ``FASTNCSN_BENCH_GRAPH=0``, the eager calls."""
    fns = list(fns)
    k = len(fns)

    def cycle():
        for f in fns:
            f()
    est = cuda_ms(cycle, reps=3, warmup=1) / k                # ms per op call, eager (launch cost included)
    calls = k * max(1, math.ceil(target_ms / max(est * k, 1e-3)))
    graph = None
    if graph_timing_enabled():
        from fastncsn.sampling.graphs import capture_graph

        def program():
            keep = collections.deque(maxlen=k)
            for i in range(calls):
                keep.append(fns[i % k]())
        try:
            graph, _ = capture_graph(program, warmup=1)
        except Exception:  # noqa: BLE001 -- any capture failure means: time it eagerly
            graph = None
        torch.cuda.synchronize()
    if graph is not None:
        def run():
            graph.replay()
            torch.cuda.synchronize()
    else:
        def run():
            for i in range(calls):
                fns[i % k]()
            torch.cuda.synchronize()
    run.graph = graph            # keeps the graph (and its memory pool) alive as long as ``run``
    return run, calls, graph is not None


def record(benchmark, fns, *, op: str, backend: str, shape, dtype, bytes_moved: int | None, copy_gbps: float,
           reference: tuple | None, rounds: int = 15, layout: str = "contiguous", **extra) -> float:
    """Benchmark the op calls ``fns`` (a list: one call per rotated input set, see :func:`input_sets`; or one
    callable) and fill ``benchmark.extra_info``; returns ms per op call.

    Timed as replays of a CUDA graph holding ``calls`` op calls (:func:`rotating`; ``timed_in_graph``
    True), or eagerly where capture fails.  ``bandwidth_fraction`` = ``bytes_moved`` per call over the
    time, against ``copy_gbps`` of this run; ``working_set_bytes`` = ``bytes_moved`` x the sets.
    ``reference``: ``(ms, timed_in_graph)`` of the reference (:func:`reference_ms`), or None when this
    record is the reference itself."""
    fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
    run, calls, graphed = rotating(fns)
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2, iterations=1)
    per_op_ms = benchmark.stats.stats.median * 1e3 / calls
    gbps = None if bytes_moved is None else bytes_moved / (per_op_ms * 1e-3) / 1e9
    benchmark.extra_info.update(
        op=op, backend=backend, shape=list(shape), dtype=dtype_name(dtype), layout=layout, gb_per_s=gbps,
        bandwidth_fraction=None if gbps is None else gbps / copy_gbps, copy_gb_per_s=copy_gbps,
        reference_ms=per_op_ms if reference is None else reference[0],
        reference_timed_in_graph=graphed if reference is None else reference[1],
        per_op_ms=per_op_ms, calls=calls, input_sets=len(fns),
        working_set_bytes=None if bytes_moved is None else bytes_moved * len(fns), l2_bytes=l2_bytes(),
        device=torch.cuda.get_device_name(), timed_in_graph=graphed, **extra)
    del run
    return per_op_ms


def reference_ms(cache: dict, key, fns) -> tuple:
    """``(ms per call, timed_in_graph)`` of the reference op calls ``fns`` (rotated input sets, as for
    ``record``: graphed, so the reference and the fast path are timed alike), measured once per session."""
    if key not in cache:
        run, calls, graphed = rotating(list(fns) if isinstance(fns, (list, tuple)) else [fns])
        cache[key] = (cuda_ms(run, reps=10, warmup=2) / calls, graphed)
        del run
    return cache[key]


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
