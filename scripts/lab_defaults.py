#!/usr/bin/env python3
"""Defaults from measurements: read one perf-lab run's records and write the defaults they confirm.

    python3 scripts/lab_defaults.py $OUT/h200-<date>-part1.json $OUT/h200-<date>-part2.json          # dry
    python3 scripts/lab_defaults.py benchmarks/results/h200-<date>-part*.json --write

Input: the records files of one lab run (``scripts/gpu_lab.py``: pytest-benchmark JSON with the lab's
manifest; plain pytest-benchmark files are read too).  Only records of **one commit with a clean tree**
count (``extra_info.commit`` / ``tree_clean``, benchmarks/provenance.py; older files: ``commit_info``);
records of several commits or devices are refused as a whole.  Decisions, each with the figures behind it:

* **auto table** (``fastncsn/ops/auto_table.json``): ``scripts/auto_table.py``'s table, from the op records
  timed inside CUDA graphs (``timed_in_graph``) over rotated inputs (``working_set_bytes`` >= ``l2_bytes``);
* **sampler layout / weights** (``GraphSampler(layout=, weights=)``): among the variants ``strict``,
  ``once``, ``strict-once`` (benchmarks/variants.py), the one with the largest gain over ``graph-bf16``
  among those confirmed;
* **fused pool / fused glue** (``fastncsn.nn.set_fused_pool`` / ``set_fused_glue``): ``graph-bf16-pool`` /
  ``graph-bf16-glue`` against ``graph-bf16``;
* **training graph=** (``train(graph=)``): ``fast-graph`` against ``fast`` (both compiled, same run).

A candidate is **confirmed** when, at every required config (sampling: MNIST and CIFAR-10 at batch 1000;
training: MNIST at batch 128), both records are graph-timed where they should be (the graph paths
replayed captured graphs), its median beats the old path's by more than the noise of the pair
(``(max - min) / median`` of either record's rounds) and at least ``MIN_GAIN``; and its correctness smoke
passed on the GPU in the same run (the manifest's test outcomes: ``test_gpu_smoke_variant_step[*-<v>]``
for every source; ``test_gpu_graph_replay_equals_eager`` for the training graph).  Anything else keeps
the old default, with the reason.

``--write`` writes ``benchmarks/defaults.json`` (every decision, its figures and the source files; a
test, tests/test_lab_defaults.py, holds the code's defaults to the confirmed ones) and, when confirmed,
the auto table.  Without ``--write`` it prints the decisions only (the lab's ``summary`` stage).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.variants import DEFAULTS, PATH_PREFIX, VARIANTS  # noqa: E402

DEFAULTS_PATH = os.path.join(ROOT, "benchmarks", "defaults.json")
#: a candidate must be at least this much faster than the old path (relative), beyond the measured noise
MIN_GAIN = 0.02
#: the sampling configs a sampler default must be confirmed at
SAMPLING_REQUIRED = (("mnist", 1000), ("cifar10", 1000))
#: the training configs a training default must be confirmed at
TRAINING_REQUIRED = ("mnist",)
#: variants that change the sampler's network format only
FORMAT_VARIANTS = ("strict", "once", "strict-once")
#: the old sampling path the variants are compared with
BASE_PATH = "graph-bf16"
TRAIN_GRAPH_SMOKE = "test_gpu_graph_replay_equals_eager"


def _auto_table_module():
    spec = importlib.util.spec_from_file_location("lab_auto_table", os.path.join(ROOT, "scripts", "auto_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _provenance(run: dict, bench: dict) -> tuple:
    """(commit, tree_clean) of a record: its stamp, else the file's (older files: pytest-benchmark's
    ``commit_info``, whose ``dirty`` is the tree's state)."""
    e = bench.get("extra_info", {})
    if e.get("commit"):
        return e["commit"], e.get("tree_clean")
    git = run.get("fastncsn_git") or {}
    if git.get("commit"):
        return git["commit"], git.get("tree_clean")
    ci = run.get("commit_info") or {}
    return ci.get("id"), (None if "dirty" not in ci else not ci["dirty"])


def _noise(bench: dict) -> float:
    s = bench.get("stats", {})
    med = s.get("median") or 0
    return (s.get("max", med) - s.get("min", med)) / med if med else math.inf


def _gain(old: dict, new: dict) -> dict:
    """Figures of a pair of records: ms of each, gain = 1 - new/old, noise (the larger spread)."""
    o, n = old["extra_info"]["ms_per_step"], new["extra_info"]["ms_per_step"]
    noise = max(_noise(old), _noise(new))
    return dict(old_ms=round(o, 4), new_ms=round(n, 4), gain=round(1 - n / o, 4), noise=round(noise, 4),
                beats_noise=(1 - n / o) > max(noise, MIN_GAIN))


def load(paths) -> list:
    runs = []
    for p in paths:
        with open(p) as f:
            run = json.load(f)
        if not isinstance(run, dict) or "benchmarks" not in run:
            raise SystemExit(f"{p}: not a pytest-benchmark / perf-lab records file")
        run["_source"] = os.path.basename(p)
        runs.append(run)
    return runs


def _smoke(runs) -> dict:
    """Test id -> outcome, over the lab manifests of ``runs``."""
    out = {}
    for run in runs:
        out.update((run.get("lab") or {}).get("tests", {}))
    return out


def _smoke_passed(tests: dict, needle: str) -> tuple:
    """(all passed and at least one, the matching ids and outcomes)."""
    hits = {t: o for t, o in tests.items() if needle in t}
    return bool(hits) and all(o == "passed" for o in hits.values()), hits


def _variant_smoke(tests: dict, variant: str) -> tuple:
    """(every smoke test of ``variant`` passed and there is one, those tests): ids
    ``...::test_gpu_smoke_variant_step[<source>-<variant>]``."""
    key = "test_gpu_smoke_variant_step["
    hits = {t: o for t, o in tests.items() if key in t and t.endswith("]")
            and t[t.index(key) + len(key):-1].partition("-")[2] == variant}
    return bool(hits) and all(o == "passed" for o in hits.values()), hits


def decide(runs: list, require_clean: bool = True) -> dict:
    """The decisions (see the module docstring) from loaded records files ``runs`` of one lab run.
    ``require_clean=False`` skips the clean-commit gate (to read what old records would say; never for
    ``--write``)."""
    records, commits, devices, dirty = [], set(), set(), 0
    for run in runs:
        for b in run["benchmarks"]:
            commit, clean = _provenance(run, b)
            commits.add(commit)
            devices.add(b.get("extra_info", {}).get("device"))
            if require_clean and (not commit or clean is not True):
                dirty += 1
                continue
            records.append(b)
    sources = [run.get("_source") for run in runs]
    out = dict(sources=sources, commit=None, device=None, date=None, gate=None)
    refused = None
    if len(commits - {None}) > 1:
        refused = f"records of {len(commits - {None})} commits ({', '.join(sorted(c[:10] for c in commits if c))}): one lab run is one commit"
    elif len(devices - {None}) > 1:
        refused = f"records of {len(devices - {None})} devices: one lab run is one device"
    elif not records:
        refused = (f"no record of a clean commit ({dirty} records of a dirty or unknown tree)" if dirty
                   else "no records")
    if refused:
        out["gate"] = refused
        records = []
    else:
        out.update(commit=next(iter(commits - {None}), None), device=next(iter(devices - {None}), None),
                   date=max((run.get("datetime") or "")[:10] for run in runs) or None,
                   gate=f"{len(records)} records of commit {next(iter(commits - {None}), '?')[:12]}, "
                        + ("clean" if require_clean else "CLEAN-TREE GATE SKIPPED (require_clean=False)")
                        + (f" ({dirty} of a dirty tree ignored)" if dirty else ""))
    tests = _smoke(runs)
    out["auto_table"] = _decide_table(records, out)
    sampling = _sampling_records(records)
    out["sampler"] = _decide_format(sampling, tests)
    out["fused_pool"] = _decide_switch(sampling, tests, "pool", "fused_pool")
    out["fused_glue"] = _decide_switch(sampling, tests, "glue", "fused_glue")
    out["train_graph"] = _decide_train_graph(records, tests)
    return out


def _decide_table(records, out) -> dict:
    ops = [b for b in records if b.get("extra_info", {}).get("op") in ("cin_fwd", "cin_bwd", "langevin_step")]
    graphed = [b for b in ops if b["extra_info"].get("timed_in_graph") is True]
    rotated = [b for b in graphed if (b["extra_info"].get("working_set_bytes") or 0)
               >= (b["extra_info"].get("l2_bytes") or math.inf)]
    base = dict(value=None, confirmed=False, rows=0,
                figures=dict(op_records=len(ops), graph_timed=len(graphed), rotated=len(rotated)))
    if not rotated:
        base["why"] = (f"no op record timed inside a CUDA graph over inputs larger than L2 ({len(ops)} op records, "
                       f"{len(graphed)} graph-timed, {len(rotated)} rotated)")
        return base
    mod = _auto_table_module()
    run = dict(benchmarks=rotated, datetime=out.get("date"), fastncsn_git=dict(commit=out.get("commit")))
    try:
        table = mod.build_table(run, ",".join(s for s in out.get("sources", []) if s))
    except SystemExit as exc:
        return dict(base, why=str(exc))
    n = sum(len(r) for r in table["ops"].values())
    picks = {op: sorted({r["backend"] for r in rows}) for op, rows in table["ops"].items()}
    return dict(base, value=table, confirmed=n > 0, rows=n, why=f"{n} rows from {len(rotated)} records; picks {picks}")


def _sampling_records(records) -> dict:
    """(config, batch, path) -> record, for sampling records."""
    out = {}
    for b in records:
        e = b.get("extra_info", {})
        if "full_steps_per_level" in e and e.get("path") and e.get("path") != "compile-anchor":
            out[(e["config"], e["batch"], e["path"])] = b
    return out


def _required(figures: dict, keys, missing: str, ungraphed: str) -> list:
    """Reasons a candidate is not confirmed at the required ``keys`` of ``figures`` (see :func:`_gain`)."""
    why = []
    for key in keys:
        f = figures.get(key)
        if f is None:
            why.append(f"{key}{'' if missing.startswith(':') else ' '}{missing}")
        elif not f["graph_timed"]:
            why.append(f"{key}{'' if ungraphed.startswith(':') else ' '}{ungraphed}")
        elif not f["beats_noise"]:
            why.append(f"{key}: gain {100 * f['gain']:.1f}% within noise {100 * f['noise']:.1f}% / {100 * MIN_GAIN:.0f}%")
    return why


def _pair_figures(sampling, path) -> tuple:
    """(confirmed at every required config, figures per measured (config, batch), reason if not)."""
    figures = {}
    for config, batch in sorted({(c, b) for c, b, _ in sampling}):
        old, new = sampling.get((config, batch, BASE_PATH)), sampling.get((config, batch, path))
        if old is None or new is None:
            continue
        f = _gain(old, new)
        f["graph_timed"] = all(r["extra_info"].get("timed_in_graph") is True for r in (old, new))
        figures[f"{config} b{batch}"] = f
    why = _required(figures, [f"{c} b{b}" for c, b in SAMPLING_REQUIRED], "not measured", "not graph-timed")
    slower = [k for k, f in figures.items() if f["gain"] < -max(f["noise"], MIN_GAIN)]
    if slower:
        why.append(f"slower at {', '.join(slower)}")
    return not why, figures, "; ".join(why)


def _decide_format(sampling, tests) -> dict:
    old = dict(layout=DEFAULTS["layout"], weights=DEFAULTS["weights"])
    candidates = {}
    for v in FORMAT_VARIANTS:
        ok, figures, why = _pair_figures(sampling, PATH_PREFIX + v)
        smoke_ok, smoke = _variant_smoke(tests, v)
        if ok and not smoke_ok:
            ok, why = False, f"smoke not passed ({smoke or 'not run'})"
        candidates[v] = dict(confirmed=ok, why=why or "faster beyond noise at every required config, smoke passed",
                             figures=figures, smoke=smoke)
    confirmed = {v: c for v, c in candidates.items() if c["confirmed"]}
    if not confirmed:
        return dict(value=old, confirmed=False, why="no format variant confirmed: "
                    + "; ".join(f"{v}: {c['why']}" for v, c in candidates.items()), candidates=candidates)

    def gmean(c):
        gains = [1 - f["gain"] for f in c["figures"].values()]
        return math.exp(sum(map(math.log, gains)) / len(gains))
    best = min(confirmed, key=lambda v: gmean(confirmed[v]))
    value = dict(layout=VARIANTS[best].get("layout", old["layout"]), weights=VARIANTS[best].get("weights", old["weights"]))
    return dict(value=value, confirmed=True, variant=best,
                why=f"{best}: time x{gmean(confirmed[best]):.3f} of graph-bf16 (geometric mean over the measured "
                    f"configs), the best of {sorted(confirmed)}", candidates=candidates)


def _decide_switch(sampling, tests, variant, key) -> dict:
    ok, figures, why = _pair_figures(sampling, PATH_PREFIX + variant)
    smoke_ok, smoke = _variant_smoke(tests, variant)
    if ok and not smoke_ok:
        ok, why = False, f"smoke not passed ({smoke or 'not run'})"
    info = {}
    for config, batch in SAMPLING_REQUIRED:      # every switch on against the format alone: the combined effect
        a = sampling.get((config, batch, PATH_PREFIX + "strict-once"))
        b = sampling.get((config, batch, PATH_PREFIX + "all"))
        if a and b:
            info[f"{config} b{batch} all vs strict-once"] = _gain(a, b)
    return dict(value=True if ok else DEFAULTS[key], confirmed=ok, figures=figures, combined=info, smoke=smoke,
                why=why or f"{variant}: faster beyond noise at every required config, smoke passed")


def _decide_train_graph(records, tests) -> dict:
    train = {}
    for b in records:
        e = b.get("extra_info", {})
        if e.get("path") in ("fast", "fast-graph") and "speedup" in e and "full_steps_per_level" not in e:
            train[(e["config"], e["path"])] = b
    figures = {}
    for config in sorted({c for c, _ in train}):
        old, new = train.get((config, "fast")), train.get((config, "fast-graph"))
        if old is None or new is None:
            continue
        f = _gain(old, new)
        f.update(graph_timed=new["extra_info"].get("graph") is True,
                 startup_s=dict(fast=old["extra_info"].get("startup_s"), graph=new["extra_info"].get("startup_s")),
                 compile_index=dict(fast=old["extra_info"].get("compile_index"),
                                    graph=new["extra_info"].get("compile_index")))
        figures[config] = f
    why = _required(figures, TRAINING_REQUIRED, ": fast and fast-graph not both measured",
                    ": fast-graph not replayed from a graph")
    smoke_ok, smoke = _smoke_passed(tests, TRAIN_GRAPH_SMOKE)
    if not why and not smoke_ok:
        why.append(f"smoke not passed ({smoke or 'not run'})")
    ok = not why
    return dict(value=ok, confirmed=ok, figures=figures, smoke=smoke,
                why="; ".join(why) or "fast-graph faster beyond noise at every required config, smoke passed")


def format_decisions(d: dict) -> str:
    lines = [f"defaults from {', '.join(s for s in d['sources'] if s) or '?'}: {d['gate']}"]

    def line(name, dec, value):
        lines.append(f"  {name:22s} {'CONFIRMED' if dec['confirmed'] else 'kept     '} {value}  -- {dec['why']}")
    t = d["auto_table"]
    line("auto table", t, f"{t['rows']} rows")
    line("sampler layout/weights", d["sampler"], d["sampler"]["value"])
    line("fused_pool", d["fused_pool"], d["fused_pool"]["value"])
    line("fused_glue", d["fused_glue"], d["fused_glue"]["value"])
    line("train graph=", d["train_graph"], d["train_graph"]["value"])
    return "\n".join(lines)


def defaults_file(d: dict) -> dict:
    """The content of ``benchmarks/defaults.json``: every decision (value, confirmed, why, figures), the table
    summarised (its rows live in fastncsn/ops/auto_table.json)."""
    table = dict(d["auto_table"])
    table.pop("value", None)
    return dict(note="written by scripts/lab_defaults.py --write from one perf-lab run; tests/test_lab_defaults.py "
                     "holds the code's defaults to the confirmed values", sources=d["sources"], commit=d["commit"],
                device=d["device"], date=d["date"], gate=d["gate"], auto_table=table,
                **{k: d[k] for k in ("sampler", "fused_pool", "fused_glue", "train_graph")})


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 scripts/lab_defaults.py", description=__doc__.split("\n")[0])
    ap.add_argument("records", nargs="+", help="the records files of one lab run (<gpu>-<date>-part*.json)")
    ap.add_argument("--write", action="store_true", help="write --defaults and, when confirmed, --table")
    ap.add_argument("--defaults", default=DEFAULTS_PATH, help="defaults file (default: %(default)s)")
    ap.add_argument("--table", default=None, help="auto table to write (default: fastncsn/ops/auto_table.json)")
    a = ap.parse_args(argv)
    for p in a.records:
        if not os.path.isfile(p):
            ap.error(f"records: no such file {p!r}")
    d = decide(load(a.records))
    print(format_decisions(d))
    if a.write:
        _atomic_json(a.defaults, defaults_file(d))
        print(f"wrote {a.defaults}")
        if d["auto_table"]["confirmed"]:
            table = a.table or _auto_table_module().DEFAULT_OUT
            _atomic_json(table, d["auto_table"]["value"])
            print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
