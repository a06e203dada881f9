#!/usr/bin/env python3
"""The perf lab: what a GPU window runs, as prepared calls that fit the window and bring every record home.

On the machine with the checkout, first (the GPU machine gets the tree without ``.git``)::

    python3 scripts/gpu_lab.py prepare            # .lab/commit.json: commit, clean flag, file hashes

then, on the GPU machine, from the repository root (device tool: ``carry: [".lab"]``)::

    bash scripts/gpu_check.sh part1               # <= 560 s: header, build, smoke, sampling b1000, anchor,
                                                  #   hot ops, profile, summary
    bash scripts/gpu_check.sh part2               # ~200 s, right after (machine still up): training,
                                                  #   sampling b100, summary
    bash scripts/gpu_check.sh part3 | part4       # later windows: the rest (benchmarks/README.md)

``scripts/gpu_check.sh CALL`` is ``python3 scripts/gpu_lab.py CALL``.  Options: ``--out DIR`` (default
``$OUT``, else ``gpu-out``), ``--budget S`` (default the call's; ``BUDGET`` in the environment too),
``--stages a,b`` (a selection, in plan order), ``--dry-run`` (print the commands and limits, run nothing).
Other commands: ``plan`` (the plan as a table), ``collect CALL...`` (the CPU rehearsal: every stage's
command exists and collects; tests/test_gpu_lab.py), and the stage bodies ``header``, ``build``,
``summary``.

**The plan** (:data:`PLAN`) is the one source of truth: calls, each with a budget, stages in order with a
limit and the arithmetic behind it (``why``), and the files the call leaves in ``$OUT``.  Every stage
runs as ``timeout -s INT -k 30 LIMIT COMMAND`` -- SIGINT, so a pytest-benchmark run stopped at its limit
still writes the records it finished (SIGTERM writes none) -- with its whole output in
``<stage>.log``; no stage gets more than the call's budget has left (less the summary's limit).  After
every stage the call's files are rewritten (atomically), so a call stopped anywhere keeps what it did:

* ``<gpu>-<date>-<call>.json`` -- every benchmark record of the call (pytest-benchmark format, merged),
  each stamped with commit, clean flag, versions (``benchmarks/provenance.py``), ``lab_call`` and
  ``lab_stage``; plus ``lab``: the header (versions, nvidia-smi), each stage's limit, wall time, exit
  code and whether its limit stopped it, and the outcome of every test by name (``junit`` stages);
* ``summary.txt`` -- ``scripts/perf_summary.py`` and ``scripts/lab_defaults.py`` (dry) over the records;
* ``logs.tar.gz`` -- ``lab.log``, every ``<stage>.log``, the raw JSON / JUnit files, ``env.json``,
  ``profile.txt``;
* ``ext.tar.gz`` -- the built ``fastncsn/_C*.so`` with its source hash: unpack it into ``.lab/`` and carry
  ``.lab`` to skip the next build (``build`` checks the hash).

The lab refuses to run without commit information (``.lab/commit.json`` whose file hashes match the tree,
or a git checkout); a dirty tree runs, its records flagged ``tree_clean: false`` (scripts/lab_defaults.py
ignores them).  ``python3`` everywhere, installs with ``--no-index`` (the GPU machine has no network).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import provenance  # noqa: E402

PY = "python3"
#: the device tool: one command runs at most this long (its timeout_s)
PER_COMMAND_S = 600
#: ``timeout -k``: seconds between SIGINT and SIGKILL for a stage that does not stop
KILL_GRACE_S = 30
#: seconds a call needs beyond its budget for the last packing of its files
PACK_MARGIN_S = 10
#: the device tool brings back at most this many files from $OUT
MAX_FILES = 8
#: names the device tool brings back
FILE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
#: a stage that would get fewer seconds than this is skipped
MIN_STAGE_S = 5


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a call.  ``argv``: the command (``pytest=True``: pytest's arguments, the runner adds its own
    options); placeholders ``{logs}`` (the call's log folder), ``{out}``, ``{records}`` (the call's merged
    JSON).  ``why``: the arithmetic behind ``limit`` (seconds)."""
    name: str
    limit: int
    argv: tuple
    what: str
    why: str
    pytest: bool = False
    bench: bool = False              # writes pytest-benchmark JSON, merged into the call's records
    junit: bool = False              # test outcomes by name into the call's manifest
    xdist: int = 0                   # pytest-xdist workers (``--dist load``) where the plugin is installed
    per_test_timeout: int = 0        # pytest-timeout's ``--timeout`` where the plugin is installed
    env: tuple = ()                  # (name, value); value "{fresh}" = a new empty folder
    required: bool = False           # the call stops when this stage fails
    final: bool = False              # its limit is kept in reserve while the stages before it run


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    budget: int
    what: str
    stages: tuple

    @property
    def outputs(self) -> tuple:
        """The files the call leaves in $OUT (``{gpu}``, ``{day}`` filled in at run time)."""
        out = (f"{{gpu}}-{{day}}-{self.name}.json", "summary.txt", "logs.tar.gz")
        return out + (("ext.tar.gz",) if any(s.name == "build" for s in self.stages) else ())


def _header(limit=20):
    return Stage("header", limit, (PY, "scripts/gpu_lab.py", "header", "--out", "{logs}/env.json"),
                 "nvidia-smi, device, driver, torch / Triton / CUDA / cuDNN versions, commit (refuses without)",
                 "python3 + import torch, triton + nvidia-smi: a few seconds (not timed on the image yet)",
                 required=True)


def _build(limit, why):
    return Stage("build", limit, (PY, "scripts/gpu_lab.py", "build", "--out", "{out}"),
                 "the CUDA extension (python3 -m pip install --no-build-isolation --no-deps --no-index -e .), "
                 "or the carried / already built .so when its source hash matches", why)


def _summary(limit=15):
    return Stage("summary", limit, (PY, "scripts/gpu_lab.py", "summary", "{records}", "--out", "{out}/summary.txt"),
                 "scripts/perf_summary.py and scripts/lab_defaults.py (dry) over the call's records",
                 "two small Python scripts over one JSON file, no torch: ~2 s", final=True)


#: op records the ``auto`` table and the fusion decisions read: the auto candidates (triton, cuda, reference) of
#: the CIN++ forward and the Langevin step, the glue-fusion and 5x5-pool ops; no forced plans, no compile
_HOT_OPS = ("(test_cin_fwd or test_cin_glue_fwd or test_avg_pool5x5 or test_langevin_step) and not compile "
            "and not cuda-fused and not cuda-split and not triton-fused and not triton-split")
#: batch 100 beyond part2's first five MNIST records (reference, graph-bf16, -all, -strict-once, graph-fp32)
_B100_REST = ("test_sampling_step and (cifar10-100- or mnist-100-graph-bf16-strict] or mnist-100-graph-bf16-once "
              "or mnist-100-graph-bf16-pool or mnist-100-graph-bf16-glue)")
_SMOKE_FILES = ("tests/test_graph_bf16.py", "tests/test_graph_sampler.py", "tests/test_graph_training.py")
PLAN = {c.name: c for c in (
    Call("part1", 560, "the first command of a window: everything the defaults and the sampling targets need", (
        _header(),
        _build(60, "H100 2026-11-22: 37 s (benchmarks/results/README.md); a carried .so: pip without build, ~10 s"),
        Stage("smoke", 75, ("-m", "smoke", *_SMOKE_FILES),
              "GPU correctness of every pending variant before any timing: fp32 graph == reference, bf16 strict / "
              "once / strict-once / pool / glue / all within the bf16 2x rule, element by element, bundled model "
              "and MNIST b100; the graph training step == eager",
              "16 tests; cold Triton compiles of the CIN++ / glue / pool / Langevin kernels (~20 x ~1.5 s; the "
              "H100's first bf16 sampler build took 7.8 s) + 16 x ~1-2 s + pytest start ~8 s = 54-70 s",
              pytest=True, junit=True, env=(("FASTNCSN_TRITON_DEVICE", "cuda"),)),
        Stage("sampling-b1000", 145, ("benchmarks/test_sampling_throughput.py", "-k", "test_sampling_step and 1000"),
              "MNIST and CIFAR-10 at batch 1000: the reference loop, graph-bf16, graph-fp32 and every variant "
              "(benchmarks/variants.py), same run",
              "per record ~1 s set-up + build + 4 calls x 10 steps (H100 2026-11-22 sampling.json): MNIST "
              "ref 1 + 4 x 0.124 = 1.5, 7 bf16 x (1 + 3.2 + 40 x 0.069 = 7.0) = 49, fp32 1 + 0.24 + 40 x 0.081 "
              "= 4.5; CIFAR-10 ref 1 + 4 x 0.312 = 2.2, 7 x (1 + 3.0 + 40 x 0.093 = 7.7) = 54, fp32 1 + 0.36 + "
              "40 x 0.134 = 6.7; + start 8 = ~126 s",
              pytest=True, bench=True),
        Stage("anchor", 125, ("benchmarks/test_compile_anchor.py",),
              "the compile anchor: the reference network under torch.compile, bf16, channels-last, the whole "
              "step in one CUDA graph, MNIST b1000, cold Inductor cache, with its reference loop",
              "compile 103 s (shared/reference/anchor-figures-h100.md) + reference 1.5 s + 6 x 20 replays x "
              "37.5 ms = 4.5 s + start 8 s = ~117 s",
              pytest=True, bench=True, env=(("TORCHINDUCTOR_CACHE_DIR", "{fresh}"),)),
        Stage("ops", 90, ("benchmarks/test_cond_instance_norm.py", "benchmarks/test_langevin_step.py",
                          "benchmarks/test_avg_pool.py", "-k", _HOT_OPS),
              "the hot ops, graph-timed over rotated inputs: CIN++ forward (triton, cuda, reference; every layer "
              "shape, b128 and b1000, bf16 channels-last and fp32 NCHW), glue fusion, 5x5 pool, Langevin step",
              "144 records x ~0.15 s (17 replays of ~2 ms, the estimate, the capture, the reference once per "
              "shape; H100: 25 ms of timed rounds per record) = 22 s + Triton compiles mostly warm from the "
              "smoke / sampling (~20 s) + start 8 s = ~50 s",
              pytest=True, bench=True),
        Stage("profile", 25, (PY, "scripts/profile_step.py", "--variant", "all", "--config", "mnist", "--batch",
                              "1000", "--top", "15", "--out", "{logs}/profile.txt"),
              "torch.profiler over one graph replay of the MNIST b1000 step with every switch on: top 15 kernels",
              "import ~5 s + sampler build ~3 s + one replay and the profiler ~2 s = ~10 s"),
        _summary(),
    )),
    Call("part2", 200, "right after part1, while the machine is still up: training and sampling at batch 100", (
        _header(10),
        _build(15, "after part1 on the same machine: the built .so is there, a check of ~5 s (a cold machine's "
                   "rebuild, 37 s, does not fit: then auto falls back to Triton, recorded as cin_backend)"),
        Stage("training", 130, ("benchmarks/test_training_throughput.py", "-k", "test_training_step and mnist"),
              "MNIST b128 training step: reference, fast-graph (compiled, cold Inductor cache: the candidate "
              "default's start-up), fast (compiled, warm cache), fast-graph-eager, fast-eager",
              "H100 2026-11-22: reference 1 + 11 x 5 x 0.132 = 8 s, fast-graph compile ~92 s + capture + 55 x "
              "~0.02 = ~94 s, fast into the warm cache ~20 s, + start 8 s = 130 s; fast-graph-eager (~6 s) and "
              "fast-eager (~11 s) run if the compile was quicker",
              pytest=True, bench=True, env=(("TORCHINDUCTOR_CACHE_DIR", "{fresh}"),)),
        Stage("sampling-b100", 35, ("benchmarks/test_sampling_throughput.py", "-k", "test_sampling_step and mnist-100-"),
              "MNIST at batch 100 (target <= 3 ms/step): the reference, graph-bf16, graph-bf16-all, "
              "graph-bf16-strict-once, graph-fp32, then one switch at a time",
              "H100: ref 1 + 4 x 0.027 = 1.1 s, each graph path 1 + ~3 build + 4 x 40 x 0.007 = ~5 s: the first "
              "5 records + start 8 s = ~34 s (the rest, 20 s more, in part3)",
              pytest=True, bench=True),
        _summary(10),
    )),
    Call("part3", 560, "a later window: the GPU tests, CIFAR-10 training, the training ops, the rest of batch 100", (
        _header(),
        _build(60, "a fresh machine: H100 37 s; with the .so of part1 carried: ~10 s"),
        Stage("tests", 100, ("-m", "(gpu or triton) and not smoke and not slow", "tests"),
              "every other GPU test and the Triton tests compiled on CUDA tensors (odd shapes included), "
              "8 xdist workers spreading single tests (--dist load), 90 s per test, names in the log and JUnit",
              "248 tests (collected 2026-12-02): ~100 cold Triton compiles x ~1.5 s over 8 workers = ~20 s + 248 x 0.2 s / 8 = 6 s + "
              "8 workers starting (import torch) ~15 s = ~45 s",
              pytest=True, junit=True, xdist=8, per_test_timeout=90, env=(("FASTNCSN_TRITON_DEVICE", "cuda"),)),
        Stage("training-cifar10", 150, ("benchmarks/test_training_throughput.py", "-k", "test_training_step and cifar10"),
              "CIFAR-10 b128 training step, the same five paths",
              "H100: reference 1 + 55 x 0.136 = 8.5 s, fast-graph compile 73.8 s + ~3, fast warm ~20 s, "
              "fast-graph-eager ~6 s, fast-eager 1 + 15 + 55 x 0.115 = 22 s, + start 8 s = ~141 s",
              pytest=True, bench=True, env=(("TORCHINDUCTOR_CACHE_DIR", "{fresh}"),)),
        Stage("ops-train", 70, ("benchmarks/test_cond_instance_norm.py", "-k",
                                "(test_cin_bwd and not compile and not fused- and not split-) or test_network_forward"),
              "the CIN++ backward of the auto candidates (the table's cond_instance_norm_plus:train rows) and the "
              "whole network forward",
              "81 records x ~0.2 s = 16 s + backward Triton compiles ~12 x 2 s = 24 s + start 8 s = ~48 s",
              pytest=True, bench=True),
        Stage("sampling-b100-rest", 90, ("benchmarks/test_sampling_throughput.py", "-k", _B100_REST),
              "batch 100: CIFAR-10 every path, MNIST the one-switch variants that part2 has no time for",
              "CIFAR-10 9 x ~5.5 s = 50 s, MNIST reference 1 s + 4 x ~5 s = 21 s, + start 8 s = ~79 s",
              pytest=True, bench=True),
        _summary(),
    )),
    Call("part4", 560, "a later window: the 200-step training-curve test, start-up of train(), forced launch plans", (
        _header(),
        _build(60, "a fresh machine: H100 37 s; with the .so of part1 carried: ~10 s"),
        Stage("tests-slow", 195, ("-m", "gpu and slow", "tests/test_fast_training.py"),
              "the issue-16 loss-curve test: 200 digits steps, fast graph bf16 vs fp32 reference vs another seed",
              "400 reference steps x 132 ms = 53 s + the regional compile 74-92 s + 200 graph steps + start = "
              "~160 s (its own pytest timeout: 300 s)",
              pytest=True, junit=True, per_test_timeout=300),
        Stage("train-startup", 190, ("benchmarks/test_training_throughput.py", "-k", "test_train_startup"),
              "fastncsn.train itself, fast and fast-graph, 3 digits steps, cold Inductor cache: start-up <= 60 s?",
              "two cold compiles (H100: 74-92 s each) + data and capture ~5 s = ~185 s",
              pytest=True, bench=True, env=(("TORCHINDUCTOR_CACHE_DIR", "{fresh}"),)),
        Stage("ops-plans", 80, ("benchmarks/test_cond_instance_norm.py", "-k", "(test_cin_fwd or test_cin_bwd) and "
                                "(cuda-fused or cuda-split or triton-fused or triton-split)"),
              "the forced CIN++ launch plans (to tune the automatic plan choice)",
              "192 records x ~0.2 s = 38 s + ~16 plan-specific Triton compiles x 2 s = 32 s + start 8 s = ~78 s",
              pytest=True, bench=True),
        _summary(),
    )),
)}


# ------------------------------------------------------------------------------------------- the runner


def capped_limit(stage: Stage, stages_left: list, left: float) -> int:
    """Seconds ``stage`` gets: its limit, at most what the budget has ``left`` less the limits of the ``final``
    stages still to come (the summary)."""
    reserve = sum(s.limit for s in stages_left if s.final and s is not stage)
    return int(min(stage.limit, left - reserve))


def _plugin(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pytest_argv(stage: Stage, logs: str, collect: bool = False) -> list:
    """The pytest command line of a ``pytest`` stage (``collect``: for ``--collect-only``, no outputs, no
    workers)."""
    argv = [] if collect else [PY, "-m", "pytest"]
    # collect: not the unraisable-exception plugin, whose gc.collect() x 5 per session over torch's heap takes
    # seconds -- a collection runs no test
    argv += ["-p", "no:cacheprovider", "-rfE", "--color=no"] + (
        ["-q", "--collect-only", "-p", "no:unraisableexception"] if collect else ["-v"])
    argv += list(stage.argv)
    if stage.bench and not collect:
        argv += [f"--benchmark-json={logs}/{stage.name}.json", "--benchmark-columns=median,rounds"]
    if stage.junit and not collect:
        argv += [f"--junitxml={logs}/{stage.name}.xml"]
    if stage.xdist and _plugin("xdist"):
        argv += ([] if collect else ["-n", str(stage.xdist)]) + ["--dist", "load"]
    if stage.per_test_timeout and _plugin("pytest_timeout"):
        argv += ["--timeout", str(stage.per_test_timeout)]
    return argv


def fill(argv, **values) -> list:
    return [a.format(**values) if "{" in a else a for a in argv]


def stage_env(env: Optional[dict] = None) -> dict:
    """``env`` (default: this process's environment) without the variables of a pytest-xdist worker: a stage
    started from inside one (the lab's CI rehearsal under ``pytest -n 2``) would otherwise inherit
    ``PYTEST_XDIST_WORKER``, and pytest-benchmark then disables every benchmark ("xdist plugin is active")
    and writes no record."""
    env = dict(os.environ if env is None else env)
    for k in list(env):
        if k.startswith("PYTEST_XDIST_") or k == "PYTEST_CURRENT_TEST":
            del env[k]
    return env


def run_stage(argv: list, limit: int, log_path: str, env: Optional[dict] = None, cwd: str = ROOT,
              signal: str = "INT", grace: int = KILL_GRACE_S) -> tuple:
    """Run ``argv`` as ``timeout -s <signal> -k <grace> <limit> argv`` with stdout and stderr into ``log_path``;
    returns ``(exit code, wall seconds)`` (124: stopped at the limit, 137: killed after the grace)."""
    t0 = time.monotonic()
    env = stage_env(env)
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(argv)}   (limit {limit} s)\n".encode())
        log.flush()
        proc = subprocess.run(["timeout", "-s", signal, "-k", str(grace), str(limit), *argv], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=cwd)
    return proc.returncode, time.monotonic() - t0


#: lines of a stage log worth printing on the console
_NOTABLE = re.compile(r"passed|failed|skipped|[Ee]rror|FAILED|ERROR|Fatal|Traceback|KeyboardInterrupt|^fastncsn|^lab:")


def excerpt(log_path: str, n: int = 12) -> list:
    try:
        lines = open(log_path, errors="replace").read().splitlines()
    except OSError:
        return []
    return [ln for ln in lines if _NOTABLE.search(ln)][-n:]


def junit_outcomes(path: str) -> dict:
    """``{test id: outcome}`` ("passed" | "failed" | "error" | "skipped") of a JUnit XML file (``{}`` if none)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    out = {}
    for case in root.iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        tid = f"{cls.replace('.', '/')}.py::{name}" if cls else name
        tags = {child.tag for child in case}
        out[tid] = ("failed" if "failure" in tags else "error" if "error" in tags
                    else "skipped" if "skipped" in tags else "passed")
    return out


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def gpu_short_name(device: Optional[str]) -> str:
    """``"NVIDIA H200"`` -> ``"h200"``, ``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``; no device -> ``"cpu"``."""
    if not device:
        return "cpu"
    words = device.split()
    word = words[1] if len(words) > 1 and words[0].upper() == "NVIDIA" else words[0]
    return re.sub(r"[^a-z0-9]+", "", word.lower()) or "gpu"


class Run:
    """The state of one call: its folders, stamp, records and manifest; writes its files after each stage."""

    def __init__(self, call: Call, out: str, budget: int, stamp: dict):
        self.call, self.out, self.budget = call, out, budget
        self.logs = tempfile.mkdtemp(prefix=f"lab-{call.name}-")
        self.start = time.monotonic()
        self.gpu, self.day = "cpu", _dt.date.today().isoformat()
        self.stamp = stamp
        self.records: list = []
        self.first_json: Optional[dict] = None
        self.manifest = dict(call=call.name, budget=budget, started=_dt.datetime.now().isoformat(timespec="seconds"),
                             stamp=stamp, header=None, stages=[], tests={})
        self.console = open(os.path.join(self.logs, "lab.log"), "a")

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.console.write(line + "\n")
        self.console.flush()

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    @property
    def records_path(self) -> str:
        return os.path.join(self.out, f"{self.gpu}-{self.day}-{self.call.name}.json")

    def set_header(self, env: dict) -> None:
        self.manifest["header"] = env
        self.stamp = dict(self.stamp, versions=env.get("versions", {}))
        self.manifest["stamp"] = self.stamp
        self.gpu = gpu_short_name(env.get("versions", {}).get("device"))

    def merge(self, stage: str, path: str) -> int:
        """Add the records of a pytest-benchmark JSON, stamped; returns how many."""
        try:
            with open(path) as f:
                run = json.load(f)
        except (OSError, json.JSONDecodeError):
            return 0
        if self.first_json is None:
            self.first_json = {k: v for k, v in run.items() if k != "benchmarks"}
        stamp = {k: self.stamp.get(k) for k in ("commit", "tree_clean", "commit_source", "versions")}
        for b in run.get("benchmarks", []):
            b.setdefault("extra_info", {}).update(stamp, lab_call=self.call.name, lab_stage=stage)
            self.records.append(b)
        return len(run.get("benchmarks", []))

    def write(self) -> None:
        """The call's records JSON and logs.tar.gz, each replaced atomically."""
        head = dict(self.first_json or {})
        head.update(datetime=head.get("datetime") or _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    fastncsn_git={k: self.stamp.get(k) for k in ("commit", "tree_clean", "commit_source")},
                    fastncsn_provenance=self.stamp, lab=self.manifest, benchmarks=self.records)
        _atomic_json(self.records_path, head)
        tmp = os.path.join(self.out, "logs.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.logs, arcname=f"logs-{self.call.name}")
        os.replace(tmp, os.path.join(self.out, "logs.tar.gz"))


def preflight(root: str = ROOT) -> dict:
    """The commit stamp of the tree at ``root``; ``SystemExit(2)`` with the fix when there is no commit."""
    info = provenance.git_info(root)
    if not info.get("commit"):
        why = (f"the files do not match .lab/commit.json (stale: {', '.join(info['stamp_mismatch'][:5])})"
               if info.get("stamp_mismatch") else "no .git here and no .lab/commit.json")
        raise SystemExit(f"gpu_lab: refusing to run without commit information: {why}. On the machine with the "
                         f"checkout run `python3 scripts/gpu_lab.py prepare` and carry .lab with the call.")
    return info


def run_call(call: Call, out: str, budget: Optional[int] = None, only: Optional[list] = None,
             dry_run: bool = False) -> int:
    """Run the stages of ``call`` (``only``: a selection) under ``budget`` seconds; returns the exit status
    (0 all stages passed, 1 a stage failed or was stopped, 2 refused)."""
    budget = call.budget if budget is None else budget
    stages = [s for s in call.stages if only is None or s.name in only]
    if dry_run:
        print(f"{call.name}: budget {budget} s, files {', '.join(call.outputs)}")
        for s in stages:
            argv = pytest_argv(s, "{logs}") if s.pytest else list(s.argv)
            print(f"  {s.name:18s} {s.limit:4d} s  {' '.join(argv)}")
        return 0
    stamp = preflight()
    os.makedirs(out, exist_ok=True)
    run = Run(call, out, budget, stamp)
    run.say(f"== lab {call.name}: budget {budget} s, commit {stamp['commit'][:12]} "
            f"({'clean' if stamp.get('tree_clean') else 'DIRTY: its records will not set defaults'}, "
            f"from {stamp.get('commit_source')})")
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    status = 0
    for i, s in enumerate(stages):
        lim = capped_limit(s, stages[i:], run.left())
        entry = dict(name=s.name, limit=s.limit, given=lim, rc=None, wall_s=0.0, stopped_at_limit=False, records=0)
        run.manifest["stages"].append(entry)
        if lim < MIN_STAGE_S:
            run.say(f"!! {s.name}: skipped, {run.left():.0f} s left")
            entry["skipped"] = True
            status = 1
            continue
        env = dict(base_env)
        for k, v in s.env:
            env[k] = tempfile.mkdtemp(prefix=f"{s.name}-") if v == "{fresh}" else v
        argv = fill(pytest_argv(s, run.logs) if s.pytest else s.argv, logs=run.logs, out=out,
                    records=run.records_path)
        run.say(f"== {s.name} (limit {lim} s, {run.left():.0f} s left)")
        rc, wall = run_stage(argv, lim, os.path.join(run.logs, f"{s.name}.log"), env=env)
        entry.update(rc=rc, wall_s=round(wall, 1), stopped_at_limit=rc in (124, 137))
        for line in excerpt(os.path.join(run.logs, f"{s.name}.log")):
            run.say(f"   {line}")
        if s.name == "header" and os.path.isfile(os.path.join(run.logs, "env.json")):
            with open(os.path.join(run.logs, "env.json")) as f:
                run.set_header(json.load(f))
        if s.bench:
            entry["records"] = run.merge(s.name, os.path.join(run.logs, f"{s.name}.json"))
        if s.junit:
            tests = junit_outcomes(os.path.join(run.logs, f"{s.name}.xml"))
            run.manifest["tests"].update(tests)
            bad = sorted(t for t, o in tests.items() if o in ("failed", "error"))
            entry["tests"] = {o: sum(v == o for v in tests.values()) for o in ("passed", "failed", "error", "skipped")}
            for t in bad[:20]:
                run.say(f"   FAILED {t}")
        if entry["stopped_at_limit"]:
            run.say(f"!! {s.name}: stopped at its limit ({lim} s); {entry['records']} records kept")
        if rc != 0:
            status = 1
            run.say(f"!! {s.name}: exit {rc} after {wall:.0f} s")
        run.write()
        if rc != 0 and s.required:
            run.say(f"!! {s.name} is required: the call stops here")
            break
    run.say(f"== done {call.name}: {time.monotonic() - run.start:.0f} s, {len(run.records)} records, "
            f"files: {' '.join(sorted(os.listdir(out)))}")
    run.write()
    summary = os.path.join(out, "summary.txt")
    if os.path.isfile(summary):
        run.say(open(summary).read())
    return status


# ------------------------------------------------------------------------------------------- stage bodies


def cmd_header(out: str) -> int:
    """Print and write (``out``) the stamp, nvidia-smi's line and the pytest plugins there; exit 2 without a
    commit."""
    try:
        info = preflight()
    except SystemExit as exc:
        print(exc)
        return 2
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        smi = f"nvidia-smi failed: {exc}"
    env = dict(info, versions=provenance.versions(), nvidia_smi=smi,
               plugins={p: _plugin(p) for p in ("pytest_benchmark", "xdist", "pytest_timeout")})
    _atomic_json(out, env)
    print(f"lab: {smi}")
    print(f"lab: {json.dumps(env['versions'])}")
    print(f"lab: commit {info['commit']} {'clean' if info.get('tree_clean') else 'DIRTY'} ({info['commit_source']}); "
          f"plugins {env['plugins']}")
    return 0


#: what the extension is built from; its hash decides whether a carried / existing .so is reused
EXT_SOURCES = ("csrc/*", "build_ext_config.py", "setup.py")
EXT_STAMP = os.path.join("fastncsn", "_C.sources")


def ext_sources_hash(root: str = ROOT) -> str:
    import torch
    h = hashlib.sha256(f"torch {torch.__version__}\n".encode())
    for pattern in EXT_SOURCES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            if os.path.isfile(path):
                h.update(os.path.relpath(path, root).encode() + b"\0" + open(path, "rb").read())
    return h.hexdigest()


def _ext_ok() -> tuple:
    code = ("import fastncsn, fastncsn.ops.cuda as c; ok, why = c.available('cuda'); "
            "print(fastncsn.__file__); print(ok, why)")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT)
    lines = p.stdout.strip().splitlines()
    here = len(lines) == 2 and os.path.abspath(lines[0]).startswith(os.path.join(ROOT, "fastncsn"))
    return here and lines[1].startswith("True"), p.stdout.strip() + p.stderr.strip()[-500:]


def _pip_install(build: bool) -> int:
    env = dict(os.environ, FASTNCSN_BUILD_CUDA="1" if build else "0",
               TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
               MAX_JOBS=os.environ.get("MAX_JOBS", "16"))
    cmd = [PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."]
    print(f"lab: {' '.join(cmd)} (FASTNCSN_BUILD_CUDA={env['FASTNCSN_BUILD_CUDA']})", flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def cmd_build(out: str) -> int:
    """Make ``fastncsn._C`` importable for this tree: keep a built .so whose source hash matches, else take the
    carried one from ``.lab/ext/``, else build; pack the .so and its hash into ``out/ext.tar.gz``."""
    want = ext_sources_hash()
    stamp_path = os.path.join(ROOT, EXT_STAMP)
    have = open(stamp_path).read().strip() if os.path.isfile(stamp_path) else None
    sos = glob.glob(os.path.join(ROOT, "fastncsn", "_C*.so"))
    carried = glob.glob(os.path.join(ROOT, ".lab", "ext", "_C*.so"))
    carried_stamp = os.path.join(ROOT, ".lab", "ext", "_C.sources")
    rc = 0
    if sos and have == want:
        print("lab: fastncsn/_C.so matches the sources")
        if not _ext_ok()[0]:
            rc = _pip_install(build=False)
    elif carried and os.path.isfile(carried_stamp) and open(carried_stamp).read().strip() == want:
        print(f"lab: using the carried {os.path.basename(carried[0])}")
        for so in carried:
            shutil.copy2(so, os.path.join(ROOT, "fastncsn"))
        shutil.copy2(carried_stamp, stamp_path)
        rc = _pip_install(build=False)
    else:
        rc = _pip_install(build=True)
        if rc == 0:
            with open(stamp_path, "w") as f:
                f.write(want + "\n")
    ok, detail = _ext_ok()
    print(f"lab: cuda extension available: {ok} ({detail})")
    sos = glob.glob(os.path.join(ROOT, "fastncsn", "_C*.so"))
    if sos and os.path.isfile(stamp_path):
        tmp = os.path.join(out, "ext.tar.gz.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sos + [stamp_path]:
                tar.add(path, arcname=os.path.join("ext", os.path.basename(path)))
        os.replace(tmp, os.path.join(out, "ext.tar.gz"))
    return rc if rc else (0 if ok else 1)


def _script(name: str):
    """The module ``scripts/<name>.py`` (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"lab_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cmd_summary(records: str, out: str) -> int:
    """``summary.txt``: the stage table of the call, scripts/perf_summary.py and scripts/lab_defaults.py (dry)."""
    lines = []
    try:
        with open(records) as f:
            run = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        run = None
        lines.append(f"no records: {exc}")
    if run is not None:
        run["_source"] = os.path.basename(records)
        lab = run.get("lab", {})
        lines.append(f"lab {lab.get('call')}: commit {str(lab.get('stamp', {}).get('commit'))[:12]} "
                     f"{'clean' if lab.get('stamp', {}).get('tree_clean') else 'DIRTY'}; stages:")
        for st in lab.get("stages", []):
            state = ("skipped" if st.get("skipped") else "STOPPED at limit" if st.get("stopped_at_limit")
                     else "ok" if st.get("rc") == 0 else f"exit {st.get('rc')}")
            lines.append(f"  {st['name']:18s} {st.get('wall_s', 0):6.1f} s of {st.get('given')} s  {state}  "
                         f"{st.get('records', 0)} records {st.get('tests', '')}")
        failed = sorted(t for t, o in lab.get("tests", {}).items() if o in ("failed", "error"))
        lines += [f"  FAILED {t}" for t in failed]
        lines.append(_script("perf_summary").summary([records]))
        defaults = _script("lab_defaults")
        lines.append(defaults.format_decisions(defaults.decide([run])))
    text = "\n".join(lines)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, out)
    print(text)
    return 0


# ------------------------------------------------------------------------------------------- the rehearsal


class _Count:
    def __init__(self):
        self.n = 0

    def pytest_collection_finish(self, session):
        self.n = len(session.items)


#: environment of a stage that means "on the GPU" and would stop a CPU collection
_GPU_ONLY_ENV = ("FASTNCSN_TRITON_DEVICE", "TORCHINDUCTOR_CACHE_DIR")


def _forget_test_modules() -> None:
    """Drop the top-level modules imported from tests/ and benchmarks/ (test files, conftest, helpers): the
    two folders share file names (test_avg_pool.py, conftest.py ...), which one pytest session, and so one
    process running several, cannot import both of; torch and fastncsn stay imported."""
    dirs = tuple(os.path.join(ROOT, d) + os.sep for d in ("tests", "benchmarks"))
    for name, mod in list(sys.modules.items()):
        if "." not in name and str(getattr(mod, "__file__", "") or "").startswith(dirs):
            del sys.modules[name]


def _folder(s: Stage) -> str:
    return "tests" if any(a == "tests" or a.startswith("tests/") for a in s.argv) else "benchmarks"


def _collect_stage(s: Stage) -> dict:
    """``pytest --collect-only`` of a pytest stage in this process (the stage's environment less
    ``_GPU_ONLY_ENV``): the exit code and how many tests its selection keeps."""
    import pytest
    argv = fill(pytest_argv(s, "/tmp", collect=True), logs="/tmp", out="/tmp", records="/tmp/r.json")
    saved = {k: os.environ.get(k) for k, _ in s.env}
    os.environ.update({k: v for k, v in s.env if k not in _GPU_ONLY_ENV})
    counter = _Count()
    try:
        rc = int(pytest.main(argv, plugins=[counter]))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return dict(kind="pytest", rc=rc, collected=counter.n, ok=rc == 0 and counter.n > 0)


def collect(calls) -> dict:
    """The rehearsal (CPU): for every stage of ``calls``, whether its command exists and collects --
    pytest stages ``--collect-only`` in this process (``collected``: the selected tests), script stages:
    the file exists and its argument parser accepts the stage's arguments."""
    stages = [(f"{name}/{s.name}", s) for name in calls for s in PLAN[name].stages]
    result = {key: _check_script(s) for key, s in stages if not s.pytest}
    folder = None
    # grouped by folder, benchmarks/ then tests/: the test modules stay imported within a group (a repeated
    # collection is then quick) and are dropped once, between the groups
    for key, s in sorted((w for w in stages if w[1].pytest), key=lambda w: _folder(w[1]) == "tests"):
        if _folder(s) != folder:
            _forget_test_modules()
            folder = _folder(s)
        result[key] = _collect_stage(s)
    return result


def _check_script(s: Stage) -> dict:
    argv = fill(s.argv, logs="/tmp", out="/tmp", records="/tmp/r.json")
    path = os.path.join(ROOT, argv[1])
    if argv[0] != PY or not os.path.isfile(path):
        return dict(kind="script", ok=False, detail=f"not a python3 script of this tree: {argv[:2]}")
    try:
        if os.path.basename(path) == "gpu_lab.py":
            build_parser().parse_args(argv[2:])
        else:
            mod = _script(os.path.splitext(os.path.basename(path))[0])
            mod.parse_args(argv[2:])
    except SystemExit as exc:
        return dict(kind="script", ok=False, detail=f"arguments refused: {exc}")
    return dict(kind="script", ok=True, detail=" ".join(argv[1:]))


def plan_markdown() -> str:
    """The plan as the tables of benchmarks/README.md (tests/test_gpu_lab.py keeps them equal)."""
    rows = []
    for call in PLAN.values():
        rows.append(f"**{call.name}** ({call.budget} s: {call.what}; files: "
                    f"{', '.join('`' + o + '`' for o in call.outputs)})\n")
        rows.append("| stage | limit (s) | what | why this limit |")
        rows.append("|---|---|---|---|")
        for s in call.stages:
            rows.append(f"| {s.name} | {s.limit} | {s.what} | {s.why} |")
        rows.append(f"| *sum* | {sum(s.limit for s in call.stages)} | | |\n")
    return "\n".join(rows).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python3 scripts/gpu_lab.py", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, call in PLAN.items():
        p = sub.add_parser(name, help=call.what)
        p.add_argument("--out", default=os.environ.get("OUT") or "gpu-out", help="output folder (default: $OUT)")
        p.add_argument("--budget", type=int, default=int(os.environ["BUDGET"]) if os.environ.get("BUDGET") else None,
                       help=f"seconds for the call (default: $BUDGET, else {call.budget})")
        p.add_argument("--stages", default=None, help="comma-separated selection of stages (plan order kept)")
        p.add_argument("--dry-run", action="store_true", help="print the commands and limits, run nothing")
    sub.add_parser("plan", help="print the plan (the tables of benchmarks/README.md)")
    sub.add_parser("prepare", help="write .lab/commit.json (run where the checkout has .git)")
    p = sub.add_parser("collect", help="the CPU rehearsal: every stage's command exists and collects (JSON)")
    p.add_argument("calls", nargs="*", default=list(PLAN))
    p = sub.add_parser("header", help="stage body: versions and commit")
    p.add_argument("--out", required=True)
    p = sub.add_parser("build", help="stage body: the CUDA extension")
    p.add_argument("--out", required=True)
    p = sub.add_parser("summary", help="stage body: summary.txt")
    p.add_argument("records")
    p.add_argument("--out", required=True)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.command in PLAN:
        only = None if a.stages is None else [s.strip() for s in a.stages.split(",") if s.strip()]
        known = {s.name for s in PLAN[a.command].stages}
        if only is not None and not set(only) <= known:
            ap.error(f"--stages: unknown stage(s) {sorted(set(only) - known)} of {a.command} (known: {sorted(known)})")
        if a.budget is not None and a.budget < MIN_STAGE_S:
            ap.error(f"--budget: expected at least {MIN_STAGE_S} seconds, got {a.budget}")
        try:
            return run_call(PLAN[a.command], a.out, a.budget, only, a.dry_run)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
    if a.command == "plan":
        print(plan_markdown(), end="")
        return 0
    if a.command == "prepare":
        path = provenance.write_stamp(ROOT)
        info = json.load(open(path))
        print(f"{path}: commit {info['commit']} {'clean' if info['tree_clean'] else 'DIRTY'} ({len(info['files'])} "
              f"files)" + ("" if info["tree_clean"] else f"; dirty: {' '.join(info['dirty'][:8])}"))
        return 0
    if a.command == "collect":
        unknown = [c for c in a.calls if c not in PLAN]
        if unknown:
            ap.error(f"calls: unknown {unknown} (known: {list(PLAN)})")
        res = collect(a.calls)
        print("LAB-COLLECT " + json.dumps(res))
        return 0 if all(r["ok"] for r in res.values()) else 1
    if a.command == "header":
        return cmd_header(a.out)
    if a.command == "build":
        return cmd_build(a.out)
    if a.command == "summary":
        return cmd_summary(a.records, a.out)
    return 2


if __name__ == "__main__":
    sys.exit(main())
