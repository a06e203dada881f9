"""scripts/lab_defaults.py: defaults from one perf-lab run's records, on the H100 records of 2026-11-22 (which
confirm nothing: a dirty tree, eager op timings, no variant records) and on synthetic records; and the code's
defaults held to benchmarks/defaults.json.  CPU, no torch work (JSON in, JSON out)."""
import glob
import inspect
import json
import os

import pytest

from conftest import script_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100 = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "h100-2026-11-22-*.json")))
COMMIT = "c" * 40
lab = script_module("lab_defaults")


def _bench(extra, median, spread=0.004, commit=COMMIT, clean=True, device="NVIDIA H200"):
    """A pytest-benchmark record: ``median`` seconds per round, (max - min) / median = ``spread``."""
    e = dict(extra, commit=commit, tree_clean=clean, device=device)
    return dict(name=str(extra), extra_info=e,
                stats=dict(median=median, min=median * (1 - spread / 2), max=median * (1 + spread / 2), rounds=3))


def _sampling(config, batch, path, ms, graphed=True, **kw):
    return _bench(dict(config=config, batch=batch, path=path, ms_per_step=ms, full_steps_per_level=100,
                       timed_in_graph=graphed), ms * 10 / 1e3, **kw)


def _training(config, path, ms, graph, **kw):
    return _bench(dict(config=config, path=path, ms_per_step=ms, speedup=100 / ms, graph=graph, startup_s=50.0,
                       compile_index=0 if graph else 1), ms * 5 / 1e3, **kw)


def _op(op, backend, shape, ms, graphed=True, rotated=True, **kw):
    return _bench(dict(op=op, backend=backend, shape=list(shape), dtype="bfloat16", layout="channels_last",
                       per_op_ms=ms, timed_in_graph=graphed, working_set_bytes=(200 if rotated else 10) * 2 ** 20,
                       l2_bytes=60 * 2 ** 20), ms * 20 / 1e3, **kw)


#: ms/step of the synthetic sampling run at (config, batch): old path 10.0; the variants' factors
FACTORS = {"graph-bf16": 1.0, "graph-bf16-strict": 0.99, "graph-bf16-once": 0.90, "graph-bf16-strict-once": 0.75,
           "graph-bf16-pool": 0.95, "graph-bf16-glue": 0.99, "graph-bf16-all": 0.70}
VARIANT_IDS = ("strict", "once", "strict-once", "pool", "glue", "all")


def _smoke(outcome="passed", failing=()):
    tests = {f"tests/test_graph_bf16.py::test_gpu_smoke_variant_step[{src}-{v}]": "failed" if v in failing else outcome
             for src in ("bundled", "mnist") for v in VARIANT_IDS}
    tests["tests/test_graph_training.py::test_gpu_graph_replay_equals_eager"] = outcome
    return tests


def _run(records, tests=None):
    return dict(benchmarks=records, datetime="2026-12-05T10:00:00+00:00", _source="h200-2026-12-05-part1.json",
                lab=dict(tests=_smoke() if tests is None else tests))


def _synthetic(factors=FACTORS, spread=0.004, graphed=True, **kw):
    recs = [_sampling(c, b, p, 10.0 * f, spread=spread, graphed=graphed, **kw)
            for c, b in (("mnist", 1000), ("cifar10", 1000)) for p, f in factors.items()]
    recs += [_training("mnist", "fast", 80.0, False, **kw), _training("mnist", "fast-graph", 20.0, True, **kw)]
    for shape in ((1000, 64, 28, 28), (128, 64, 28, 28)):
        recs += [_op("cin_fwd", "triton", shape, 0.20, **kw), _op("cin_fwd", "cuda", shape, 0.30, **kw),
                 _op("cin_fwd", "reference", shape, 1.0, **kw)]
    return recs


def test_h100_records_of_2026_11_22_confirm_nothing():
    assert len(H100) >= 4
    d = lab.decide(lab.load(H100))
    assert "no record of a clean commit" in d["gate"]              # commit_info.dirty: the tree was dirty
    assert not any(d[k]["confirmed"] for k in ("auto_table", "sampler", "fused_pool", "fused_glue", "train_graph"))
    assert d["sampler"]["value"] == dict(layout="channels_last", weights="autocast")
    # without the clean-tree gate the records still confirm nothing: eager op timings, no variant records
    loose = lab.decide(lab.load(H100), require_clean=False)
    t = loose["auto_table"]
    assert t["figures"]["op_records"] == 264 and t["figures"]["graph_timed"] == 0 and not t["confirmed"]
    assert "not measured" in loose["sampler"]["candidates"]["strict-once"]["why"]
    assert "not both measured" in loose["train_graph"]["why"]


def test_synthetic_run_confirms_the_measured_gains(tmp_path):
    d = lab.decide([_run(_synthetic())])
    assert d["commit"] == COMMIT and d["device"] == "NVIDIA H200"
    s = d["sampler"]
    assert s["confirmed"] and s["variant"] == "strict-once"        # the largest confirmed gain (25 %)
    assert s["value"] == dict(layout="channels_last_strict", weights="bf16_once")
    assert s["candidates"]["once"]["confirmed"] and not s["candidates"]["strict"]["confirmed"]   # 1 % < MIN_GAIN
    assert s["candidates"]["strict-once"]["figures"]["mnist b1000"]["gain"] == pytest.approx(0.25)
    assert d["fused_pool"]["confirmed"] and d["fused_pool"]["value"] is True
    assert not d["fused_glue"]["confirmed"] and d["fused_glue"]["value"] is False
    assert d["fused_glue"]["combined"]["mnist b1000 all vs strict-once"]["gain"] == pytest.approx(1 - 0.70 / 0.75, abs=1e-4)
    assert d["train_graph"]["confirmed"] and d["train_graph"]["figures"]["mnist"]["gain"] == pytest.approx(0.75)
    t = d["auto_table"]
    assert t["confirmed"] and t["rows"] > 0
    assert {r["backend"] for r in t["value"]["ops"]["cond_instance_norm_plus"]} == {"triton"}
    # --write: the defaults file and the table, which the dispatcher reads
    records = tmp_path / "h200-2026-12-05-part1.json"
    records.write_text(json.dumps(_run(_synthetic())))
    defaults, table = tmp_path / "defaults.json", tmp_path / "auto_table.json"
    assert lab.main([str(records), "--write", "--defaults", str(defaults), "--table", str(table)]) == 0
    written = json.loads(defaults.read_text())
    assert written["sampler"]["value"]["weights"] == "bf16_once" and written["train_graph"]["value"] is True
    from fastncsn.ops.dispatch import load_auto_table
    try:
        assert load_auto_table(str(table))["ops"]["cond_instance_norm_plus"][0]["backend"] == "triton"
    finally:
        load_auto_table()


@pytest.mark.parametrize("case", ["noise", "smoke", "dirty", "commits", "eager-ops", "unrotated", "not-graphed",
                                  "slower-b100"])
def test_synthetic_run_refuses(case):
    recs, tests = _synthetic(), None
    if case == "noise":            # a 25 % gain inside a 40 % spread is not a measurement
        recs = _synthetic(spread=0.4)
    elif case == "smoke":          # strict-once failed its smoke: the next best confirmed format wins
        tests = _smoke(failing=("strict-once",))
    elif case == "dirty":
        recs = _synthetic(clean=False)
    elif case == "commits":
        recs = _synthetic() + [_sampling("mnist", 100, "graph-bf16", 3.0, commit="d" * 40)]
    elif case == "eager-ops":
        recs = [r for r in recs if "op" not in r["extra_info"]] + [_op("cin_fwd", "triton", (8, 8, 8, 8), 0.1,
                                                                       graphed=False)]
    elif case == "unrotated":
        recs = [r for r in recs if "op" not in r["extra_info"]] + [_op("cin_fwd", "triton", (8, 8, 8, 8), 0.1,
                                                                       rotated=False)]
    elif case == "not-graphed":
        recs = _synthetic(graphed=False)
    elif case == "slower-b100":    # faster at b1000 but clearly slower at b100: not a default
        recs = recs + [_sampling("mnist", 100, "graph-bf16", 3.0), _sampling("mnist", 100, "graph-bf16-strict-once", 3.6)]
    d = lab.decide([_run(recs, tests)])
    if case in ("dirty", "commits"):
        assert ("clean commit" if case == "dirty" else "commits") in d["gate"]
        assert not any(d[k]["confirmed"] for k in ("auto_table", "sampler", "fused_pool", "fused_glue", "train_graph"))
    elif case in ("eager-ops", "unrotated"):
        assert not d["auto_table"]["confirmed"] and d["sampler"]["confirmed"]
    elif case == "smoke":
        assert d["sampler"]["variant"] == "once"
        assert "smoke" in d["sampler"]["candidates"]["strict-once"]["why"]
    elif case == "slower-b100":
        assert d["sampler"]["variant"] == "once"
        assert "slower at mnist b100" in d["sampler"]["candidates"]["strict-once"]["why"]
    else:
        assert not d["sampler"]["confirmed"] and not d["fused_pool"]["confirmed"]
        assert ("noise" if case == "noise" else "graph-timed") in d["sampler"]["candidates"]["strict-once"]["why"]


def _code_defaults() -> dict:
    """The defaults the package runs with today."""
    from fastncsn.models import CondRefineNetDilated
    from fastncsn.nn.blocks import CRPBlock, RCUBlock, ResidualBlock
    from fastncsn.sampling import GraphSampler
    from fastncsn.training import train
    sig = inspect.signature(GraphSampler.__init__).parameters
    net = CondRefineNetDilated(image_size=8, channels=1, ngf=4, num_levels=2)
    glue = {m.fuse_glue for m in net.modules() if isinstance(m, (ResidualBlock, RCUBlock))}
    pool = {m.fused_pool for m in net.modules() if isinstance(m, CRPBlock)}
    assert sig["layout"].default is None and sig["channels_last"].default is True   # None: channels_last
    assert len(glue) == len(pool) == 1
    return dict(sampler=dict(layout="channels_last", weights=sig["weights"].default), fused_pool=pool.pop(),
                fused_glue=glue.pop(), train_graph=inspect.signature(train).parameters["graph"].default)


def test_code_defaults_are_the_confirmed_ones():
    """benchmarks/defaults.json (written by ``lab_defaults.py --write``): a confirmed default must be the code's
    default, an unconfirmed one the old path's -- so a window's confirmed default cannot stay unapplied, and
    nothing is flipped without a measurement."""
    from benchmarks.variants import DEFAULTS
    with open(os.path.join(ROOT, "benchmarks", "defaults.json")) as f:
        recorded = json.load(f)
    code = _code_defaults()
    old = dict(sampler=dict(layout=DEFAULTS["layout"], weights=DEFAULTS["weights"]), fused_pool=DEFAULTS["fused_pool"],
               fused_glue=DEFAULTS["fused_glue"], train_graph=False)
    for key in ("sampler", "fused_pool", "fused_glue", "train_graph"):
        dec = recorded[key]
        want = dec["value"] if dec["confirmed"] else old[key]
        assert code[key] == want, (key, code[key], dec)
