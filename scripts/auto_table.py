#!/usr/bin/env python
"""Write ``fastncsn/ops/auto_table.json`` (the table of ``backend="auto"``) from an ops JSON.

Usage: ``python scripts/auto_table.py benchmarks/results/<gpu>-<date>-ops.json [-o PATH]``

The input is the pytest-benchmark JSON of ``benchmarks/test_cond_instance_norm.py`` and
``benchmarks/test_langevin_step.py`` (the perf lab's ``ops`` stage).  Only records timed inside
a CUDA graph (``extra_info.timed_in_graph`` true) over rotated inputs larger than the L2
(``working_set_bytes`` >= ``l2_bytes``) count -- eager per-call timings include launch overhead the
samplers never see, and one buffer replayed is served from L2 -- so a file without such records is
refused.  (``scripts/lab_defaults.py`` calls this on a clean commit's records only.)  Candidates
per shape: the backends ``triton``, ``cuda`` (automatic plan) and ``reference`` (listed as
``torch``); forced plans (``cuda-split``, ...) and ``compile`` are not backends of ``auto``.

Rows: per dispatch op, dtype and layout, one row per measured shape in increasing size
(``numel_max`` = that shape's element count; the largest shape's row has ``numel_max`` None, so
it covers every larger call) naming the fastest backend and, for the record, the milliseconds
of every candidate.  ``cond_instance_norm_plus`` comes from ``cin_fwd``,
``cond_instance_norm_plus:train`` from ``cin_fwd`` + ``cin_bwd`` at the same shape, and
``langevin_step_`` from ``langevin_step`` (dtype = the score's).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "fastncsn", "ops", "auto_table.json")
#: benchmark backend name -> dispatch backend name
CANDIDATES = {"triton": "triton", "cuda": "cuda", "reference": "torch"}
#: dispatch op -> the benchmark ops whose per-shape times add up to it
OPS = {"cond_instance_norm_plus": ("cin_fwd",), "cond_instance_norm_plus:train": ("cin_fwd", "cin_bwd"),
       "langevin_step_": ("langevin_step",)}


def build_table(run: dict, source: str) -> dict:
    """The table (see ``fastncsn.ops.dispatch.auto_table``) from a loaded pytest-benchmark JSON."""
    times = collections.defaultdict(dict)        # (bench op, dtype, layout, shape) -> {backend: ms}
    devices, skipped, unrotated = set(), 0, 0
    for bench in run.get("benchmarks", []):
        e = bench.get("extra_info", {})
        if e.get("backend") not in CANDIDATES or e.get("op") not in {o for ops in OPS.values() for o in ops}:
            continue
        if e.get("timed_in_graph") is not True:
            skipped += 1
            continue
        if (e.get("working_set_bytes") or 0) < (e.get("l2_bytes") or math.inf):
            unrotated += 1           # one input set replayed: its figures are L2's, not DRAM's
            continue
        devices.add(e.get("device"))
        key = (e["op"], e["dtype"], e.get("layout", "nchw"), tuple(e["shape"]))
        times[key][CANDIDATES[e["backend"]]] = e["per_op_ms"]
    if not times:
        raise SystemExit(f"{source}: no op record timed inside a CUDA graph over inputs larger than L2 "
                         f"(timed_in_graph true, working_set_bytes >= l2_bytes; {skipped} eager and {unrotated} "
                         f"unrotated records ignored) -- the table is only made from such timings")
    if len(devices) != 1:
        raise SystemExit(f"{source}: records from {len(devices)} devices {sorted(map(str, devices))}; expected one")
    ops = {}
    for op, parts in OPS.items():
        classes = collections.defaultdict(list)   # (dtype, layout) -> [(numel, shape, {backend: ms})]
        shapes = {(d, lay, shp) for (o, d, lay, shp) in times if o == parts[0]}
        for dtype, layout, shape in shapes:
            per = [times.get((p, dtype, layout, shape), {}) for p in parts]
            common = set.intersection(*(set(p) for p in per))
            if not common:
                continue
            total = {b: sum(p[b] for p in per) for b in common}
            classes[(dtype, layout)].append((math.prod(shape), list(shape), total))
        rows = []
        for (dtype, layout), entries in sorted(classes.items()):
            entries.sort(key=lambda t: (t[0], t[1]))
            for i, (numel, shape, total) in enumerate(entries):
                if i + 1 < len(entries) and entries[i + 1][0] == numel:
                    continue                     # same size, another shape: keep the last one's row only
                rows.append(dict(dtype=dtype, layout=layout, numel_max=numel if i + 1 < len(entries) else None,
                                 backend=min(total, key=total.get), measured_shape=shape,
                                 ms={b: round(v, 5) for b, v in sorted(total.items())}))
        if rows:
            ops[op] = rows
    date = (run.get("datetime") or "")[:10] or None
    return dict(note="written by scripts/auto_table.py from op timings inside CUDA graphs; do not edit by hand",
                device=devices.pop(), date=date, source=os.path.basename(source),
                commit=run.get("fastncsn_git", {}).get("commit"), ops=ops)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ops_json", help="pytest-benchmark JSON of the op benchmarks (<gpu>-<date>-ops.json)")
    ap.add_argument("-o", "--out", default=DEFAULT_OUT, help="table to write (default: %(default)s)")
    args = ap.parse_args(argv)
    with open(args.ops_json) as f:
        table = build_table(json.load(f), args.ops_json)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    n = sum(len(r) for r in table["ops"].values())
    print(f"{args.out}: {n} rows for {table['device']} ({table['date']}) from {table['source']}")
    for op, rows in table["ops"].items():
        picks = collections.Counter(r["backend"] for r in rows)
        print(f"  {op:32s} " + ", ".join(f"{b} {c}" for b, c in picks.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
