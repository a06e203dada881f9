"""A pytest plugin (torch-free) that keeps a benchmark run stopped by SIGINT from losing its records.

The perf lab stops a stage at its limit with SIGINT (``timeout -s INT``), so that pytest ends the session
and pytest-benchmark writes the JSON of the benchmarks that finished (SIGTERM ends the process at once and
writes nothing).  But the benchmark the interrupt lands in is left registered without a single round
(pytest-benchmark 5.2.3 marks a benchmark as failed on ``Exception`` only, and ``KeyboardInterrupt`` is
not one), and writing the JSON then fails on it (``ValueError: min() arg is an empty sequence`` in
``Stats.min``): the file stays empty and every finished record is lost.  This hook takes every benchmark
without a round out of the list before the JSON is made (in place: the list is pytest-benchmark's own).
Shown on the CPU by tests/test_gpu_lab.py (``test_stage_stopped_at_its_limit_keeps_finished_records``).

Loaded by benchmarks/conftest.py; elsewhere ``-p interrupted`` with this folder on ``sys.path``.
"""
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_generate_json(config, benchmarks, include_data, machine_info, commit_info):
    benchmarks[:] = [b for b in benchmarks if getattr(getattr(b, "stats", None), "data", None)]
    yield
