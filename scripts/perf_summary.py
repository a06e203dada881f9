#!/usr/bin/env python
"""The perf lab's closing table: a short summary of the pytest-benchmark JSON files of one GPU window.

    python scripts/perf_summary.py $OUT/*.json
    python scripts/perf_summary.py benchmarks/results/h100-2026-11-22-*.json

Sections (each only when its records are there):
* sampling -- per config and batch, every path (``reference``, ``graph-bf16``, ``graph-fp32`` and any
  layout variant) in ms/step, the speed-up over the reference loop of the same run and over the
  compile anchor (``compile_anchor_ms_per_step``, benchmarks/test_compile_anchor.py; ``>1`` means
  faster than the anchor);
* ops -- per op and backend, the copy-bandwidth fraction over the measured shapes (geometric mean,
  min, max) and how many shapes were timed inside a CUDA graph; then the CIN++ forward at the
  sampling hot shape (bf16 channels-last 1000x64x28x28) per backend;
* training -- per config and path, ms/step and the speed-up over the reference step;
* provenance -- per file: device, date, commit, whether the tree was clean and (perf-lab records) the driver,
  torch, CUDA and Triton versions.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys

HOT_SHAPE = [1000, 64, 28, 28]


def _gmean(values):
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _pct(v):
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def load(paths):
    """[(path, run dict)] of the readable pytest-benchmark files among ``paths``."""
    runs = []
    for p in paths:
        try:
            with open(p) as f:
                run = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            print(f"# skipped {p}: {exc}")
            continue
        if isinstance(run, dict) and "benchmarks" in run:
            runs.append((p, run))
    return runs


def sampling_lines(records):
    recs = [e for e in records if "ms_per_step" in e and "full_steps_per_level" in e   # sampling records only
            and e.get("path") != "compile-anchor"]
    anchors = {(e["config"], e["batch"]): e["compile_anchor_ms_per_step"] for e in records
               if e.get("compile_anchor_ms_per_step") is not None}
    if not recs and not anchors:
        return []
    out = ["sampling: ms/step  (x ref = reference loop / this, same run;  x anchor = compile anchor / this)"]
    keys = sorted({(e["config"], e["batch"]) for e in recs} | set(anchors))
    for config, batch in keys:
        rows = [e for e in recs if (e["config"], e["batch"]) == (config, batch)]
        anchor = anchors.get((config, batch))
        head = f"  {config:8s} b{batch:<5d}"
        if anchor is not None:
            out.append(f"{head} {'compile-anchor':22s} {anchor:8.2f}")
        for e in sorted(rows, key=lambda e: e["ms_per_step"], reverse=True):
            name = e["path"] + (f"/{e['layout']}" if e.get("layout") and e["path"] != "reference" else "")
            vs_anchor = f"  x anchor {anchor / e['ms_per_step']:5.2f}" if anchor else ""
            out.append(f"{head} {name:22s} {e['ms_per_step']:8.2f}  x ref {e['speedup']:5.1f}{vs_anchor}")
    return out


def ops_lines(records):
    recs = [e for e in records if e.get("op") in ("cin_fwd", "cin_bwd", "langevin_step", "cin_glue_fwd", "avg_pool5x5")]
    if not recs:
        return []
    out = ["ops: copy-bandwidth fraction over the shapes (geomean min max), shapes timed in a CUDA graph"]
    groups = collections.defaultdict(list)
    for e in recs:
        groups[(e["op"], e["backend"])].append(e)
    for (op, backend), es in sorted(groups.items()):
        fr = [e.get("bandwidth_fraction") for e in es if e.get("bandwidth_fraction")]
        graphed = sum(1 for e in es if e.get("timed_in_graph"))
        rotated = sum(1 for e in es if (e.get("working_set_bytes") or 0) >= (e.get("l2_bytes") or math.inf))
        out.append(f"  {op:13s} {backend:14s} {_pct(_gmean(fr))} {_pct(min(fr) if fr else None)} "
                   f"{_pct(max(fr) if fr else None)}  {graphed}/{len(es)} in graph, {rotated} past L2")
    hot = [e for e in recs if e["op"] == "cin_fwd" and list(e["shape"]) == HOT_SHAPE and e["dtype"] == "bfloat16"
           and e.get("layout") == "channels_last"]
    if hot:
        cells = "  ".join(f"{e['backend']} {e['per_op_ms']:.3f} ms {_pct(e.get('bandwidth_fraction')).strip()}"
                          for e in sorted(hot, key=lambda e: e["per_op_ms"]))
        out.append(f"  cin_fwd bf16 channels-last {'x'.join(map(str, HOT_SHAPE))}: {cells}")
    return out


def training_lines(records):
    recs = [e for e in records if "ms_per_step" in e and "full_steps_per_level" not in e and "path" in e
            and "config" in e and e.get("path") != "compile-anchor"]
    if not recs:
        return []
    out = ["training: ms/step (x ref = reference step / this, same run)"]
    for e in sorted(recs, key=lambda e: (e["config"], -e["ms_per_step"])):
        out.append(f"  {e['config']:8s} {e['path']:14s} {e['ms_per_step']:8.2f}  x ref {e.get('speedup', 1.0):5.2f}"
                   + (f"  start-up {e['startup_s']:.0f} s" if e.get("startup_s") is not None else ""))
    return out


def provenance_lines(runs):
    out = ["files:"]
    for path, run in runs:
        bs = run["benchmarks"]
        e = bs[0].get("extra_info", {}) if bs else {}
        git = run.get("fastncsn_git") or {}
        commit = e.get("commit", git.get("commit")) or run.get("commit_info", {}).get("id")
        clean = e.get("tree_clean", git.get("tree_clean"))
        if clean is None and "dirty" in run.get("commit_info", {}):
            clean = not run["commit_info"]["dirty"]
        v = e.get("versions") or {}
        soft = "  " + " ".join(f"{k} {v[k]}" for k in ("driver", "torch", "cuda", "triton") if v.get(k)) if v else ""
        out.append(f"  {os.path.basename(path):42s} {len(bs):4d} records  {e.get('device', '?')}  "
                   f"{(run.get('datetime') or '?')[:16]}  commit {str(commit)[:10]}  "
                   f"{'clean' if clean else 'DIRTY' if clean is False else 'clean?'}{soft}")
    return out


def summary(paths) -> str:
    runs = load(paths)
    records = [b.get("extra_info", {}) for _, run in runs for b in run["benchmarks"]]
    blocks = [sampling_lines(records), ops_lines(records), training_lines(records), provenance_lines(runs)]
    return "\n".join(line for block in blocks if block for line in block)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="pytest-benchmark JSON files")
    args = ap.parse_args(argv)
    print(summary(args.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
