"""Time the README's main job, ``fastncsn sample --n 16 --out samples.png``, in fresh processes.

    python scripts/time_main_job.py [RUNS] [--json benchmarks/results/cpu-DATE-main-job.json]

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
    times, load_before = [], os.getloadavg()      # a shared machine: the load says how busy it was
    with tempfile.TemporaryDirectory() as d:
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(["fastncsn", "sample", "--n", "16", "--out", os.path.join(d, "samples.png"), "--quiet"],
                           check=True)
            times.append(round(time.perf_counter() - t0, 2))
    import torch
    rec = dict(command="fastncsn sample --n 16 --out samples.png", seconds=times, median_s=sorted(times)[len(times) // 2],
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
