"""Time the README's main job, ``fastncsn sample --n 16 --out samples.png``, in fresh processes.

    python scripts/time_main_job.py [RUNS] [--json benchmarks/results/cpu-DATE-main-job.json] [--timeout S]

A run that passes ``--timeout`` seconds is stopped and recorded as ``null`` (a busy machine can stall
torch's two OpenMP threads for minutes; ``OMP_NUM_THREADS`` in the environment is recorded).

Wall-clock seconds per run (start-up included, as a user sees it), with the commit, whether the
tree was clean, the machine and the torch version, so the README's figure can be checked.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True).stdout.strip()


def main(argv: list[str]) -> dict:
    runs = int(argv[0]) if argv and not argv[0].startswith("--") else 3
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    limit = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else None
    times, load_before = [], os.getloadavg()      # a shared machine: the load says how busy it was
    with tempfile.TemporaryDirectory() as d:
        for _ in range(runs):
            t0 = time.perf_counter()
            try:
                subprocess.run(["fastncsn", "sample", "--n", "16", "--out", os.path.join(d, "samples.png"), "--quiet"],
                               check=True, timeout=limit)
            except subprocess.TimeoutExpired:
                times.append(None)
                continue
            times.append(round(time.perf_counter() - t0, 2))
    import torch
    done = sorted(t for t in times if t is not None)
    rec = dict(command="fastncsn sample --n 16 --out samples.png", seconds=times, timeout_s=limit,
               median_s=done[len(times) // 2] if len(done) > len(times) // 2 else None,
               omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
               date=datetime.date.today().isoformat(), commit=git("rev-parse", "HEAD"),
               tree_clean=git("status", "--porcelain", "--untracked-files=no") == "",
               machine=f"{platform.machine()} CPU, {os.cpu_count()} cores", torch=torch.__version__,
               threads=torch.get_num_threads(),
               load_avg_1_5_15min=dict(before=[round(v, 2) for v in load_before],
                                       after=[round(v, 2) for v in os.getloadavg()]))
    print(json.dumps(rec))
    if out:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from fastncsn.files import atomic_write_text
        atomic_write_text(json.dumps(rec, indent=1) + "\n", out)
    return rec


if __name__ == "__main__":
    main(sys.argv[1:])
