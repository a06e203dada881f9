"""``fastncsn.ops.dispatch``: backend names, availability, the ``auto`` choice and its fallback; the
import guard of the CUDA extension (``fastncsn.ops.cuda``).  The ops themselves are tested in
``test_cond_instance_norm.py`` and ``test_langevin_step.py``."""
import pytest
import torch

from conftest import DEV, fast_backend
from fastncsn import ops
from fastncsn.ops import cuda, dispatch


def _state(shape=(3, 2, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def test_backend_names():
    assert ops.BACKENDS == ("auto", "triton", "cuda", "torch")
    assert set(ops.AUTO_PREFERENCE) == {"cond_instance_norm_plus", "cond_instance_norm_plus_glue", "langevin_step_",
                                        "avg_pool5x5"}
    from fastncsn.cli import build_parser
    for name in ops.BACKENDS:                                   # the CLI takes its choices from dispatch
        assert build_parser().parse_args(["sample", "--backend", name]).backend == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "--backend", "opencl"])


def test_unknown_backend_raises():
    x, s = _state()
    with pytest.raises(ValueError, match="backend"):
        ops.cond_instance_norm_plus(x, torch.zeros(3, dtype=torch.long), torch.ones(1, 6), backend="fast")
    with pytest.raises(ValueError, match="backend"):
        ops.langevin_step_(x, s, 0.1, 0, 0, backend="fast")


def test_auto_on_cpu_is_torch():
    assert ops.resolve_backend("auto", "cpu", "langevin_step_") == "torch"
    assert "torch" in ops.available_backends("cpu")


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.delenv("FASTNCSN_QUIET_FALLBACK", raising=False)
    monkeypatch.setattr(dispatch, "_backend_ok", lambda name, dev: (name == "torch", "not here"))
    with pytest.warns(RuntimeWarning, match="falls back|falling back"):
        assert ops.resolve_backend("auto", "cuda", "langevin_step_") == "torch"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.resolve_backend("auto", "cuda", "langevin_step_") == "torch"


def test_import_guard_and_rebuild_hint():
    ok, reason = cuda.available("cpu")
    assert not ok
    if cuda.IMPORT_ERROR:
        assert reason == cuda.REBUILD_HINT
        assert "pip install --no-build-isolation ." in reason and "FASTNCSN_BUILD_CUDA=1" in reason
        assert not cuda.available("cuda")[0]
    else:
        assert "CUDA tensors only" in reason
    assert not cuda.available("meta")[0]


def test_backend_cuda_on_cpu_raises_with_the_reason():
    with pytest.raises(ops.BackendUnavailableError, match="cuda") as info:
        ops.resolve_backend("cuda", "cpu")
    assert cuda.available("cpu")[1] in str(info.value)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.cond_instance_norm_plus(x, torch.zeros(2, dtype=torch.long), torch.randn(1, 9), backend="cuda")
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.langevin_step_(x, x, 0.1, 0, 0, backend="cuda")
    assert "cuda" not in ops.available_backends("cpu")


def test_triton_available():
    kernels = fast_backend("triton")
    ok, reason = kernels.available(DEV)
    assert ok and reason == ""
    ok, reason = kernels.available("meta")
    assert not ok and "meta" in reason




# ------------------------------------------------------------------ auto's table (scripts/auto_table.py)

def _synthetic_ops_run(in_graph=True, rotated=True):
    """A pytest-benchmark JSON as the ops stage writes it: CIN++ fwd/bwd at two bf16 channels-last shapes
    (triton faster at the small one, cuda at the large one) and the Langevin step at one shape; ``rotated``:
    each timing cycled over input sets larger than L2 (as the stage does), else one set replayed."""
    l2 = 60 * 2**20
    def rec(op, backend, shape, ms, dtype="bfloat16", layout="channels_last"):
        return {"extra_info": dict(op=op, backend=backend, shape=list(shape), dtype=dtype, layout=layout,
                                   per_op_ms=ms, timed_in_graph=in_graph, device="Fake GPU", l2_bytes=l2,
                                   working_set_bytes=3 * l2 if rotated else l2 // 4)}
    small, large = (128, 64, 28, 28), (1000, 64, 28, 28)
    b = [rec("cin_fwd", "triton", small, 0.05), rec("cin_fwd", "cuda", small, 0.08),
         rec("cin_fwd", "reference", small, 0.9), rec("cin_fwd", "cuda-split", small, 0.01),
         rec("cin_fwd", "triton", large, 0.30), rec("cin_fwd", "cuda", large, 0.20),
         rec("cin_bwd", "triton", small, 0.05), rec("cin_bwd", "cuda", small, 0.30),
         rec("cin_bwd", "triton", large, 0.50), rec("cin_bwd", "cuda", large, 0.40),
         rec("langevin_step", "cuda", (100, 1, 28, 28), 0.01, "float32", "nchw"),
         rec("langevin_step", "triton", (100, 1, 28, 28), 0.02, "float32", "nchw")]
    return {"datetime": "2026-12-01T00:00:00", "benchmarks": b, "fastncsn_git": {"commit": "abc"}}


def _table_script():
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "auto_table.py")
    spec = importlib.util.spec_from_file_location("auto_table_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_auto_table_script_builds_rows_from_graph_timings(tmp_path):
    import json
    src = tmp_path / "fake-2026-12-01-ops.json"
    src.write_text(json.dumps(_synthetic_ops_run()))
    out = tmp_path / "table.json"
    assert _table_script().main([str(src), "-o", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["device"] == "Fake GPU" and table["date"] == "2026-12-01" and table["source"] == src.name
    fwd = table["ops"]["cond_instance_norm_plus"]
    assert [(r["numel_max"], r["backend"]) for r in fwd] == [(128 * 64 * 28 * 28, "triton"), (None, "cuda")]
    assert "cuda-split" not in str(fwd)                        # forced plans are no backend of auto
    train = table["ops"]["cond_instance_norm_plus:train"]     # fwd + bwd: triton 0.10 vs cuda 0.38 at 128
    assert [r["backend"] for r in train] == ["triton", "cuda"]
    assert table["ops"]["langevin_step_"] == [dict(dtype="float32", layout="nchw", numel_max=None, backend="cuda",
                                                   measured_shape=[100, 1, 28, 28],
                                                   ms={"cuda": 0.01, "triton": 0.02})]


def test_auto_table_script_refuses_eager_timings(tmp_path):
    import json
    src = tmp_path / "eager.json"
    src.write_text(json.dumps(_synthetic_ops_run(in_graph=False)))
    with pytest.raises(SystemExit, match="inside a CUDA graph"):
        _table_script().main([str(src), "-o", str(tmp_path / "t.json")])


def test_auto_table_script_refuses_unrotated_timings(tmp_path):
    import json
    src = tmp_path / "unrotated.json"
    src.write_text(json.dumps(_synthetic_ops_run(rotated=False)))
    with pytest.raises(SystemExit, match="11 unrotated"):
        _table_script().main([str(src), "-o", str(tmp_path / "t.json")])


def _cl(shape, dtype=torch.bfloat16):
    return torch.empty(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)


def test_table_choice_picks_the_listed_backend(tmp_path, monkeypatch):
    import json
    table = _table_script().build_table(_synthetic_ops_run(), "x.json")
    path = tmp_path / "auto_table.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("FASTNCSN_AUTO_TABLE", str(path))
    monkeypatch.setattr(dispatch, "_ACTIVE_TABLE", dispatch._ACTIVE_TABLE)   # restored after the test
    dispatch.load_auto_table()
    choose = dispatch.table_choice
    op = "cond_instance_norm_plus"
    assert choose(op, _cl((128, 64, 28, 28)), device_name="Fake GPU") == "triton"
    assert choose(op, _cl((100, 64, 28, 28)), device_name="Fake GPU") == "triton"   # below the first bound
    assert choose(op, _cl((1000, 64, 28, 28)), device_name="Fake GPU") == "cuda"
    assert choose(op, _cl((4000, 64, 28, 28)), device_name="Fake GPU") == "cuda"    # above: the last row
    assert choose(op, _cl((128, 64, 28, 28)), device_name="Other GPU") is None      # another device
    assert choose(op, torch.empty(128, 64, 28, 28), device_name="Fake GPU") is None  # fp32 NCHW: no row
    assert choose(op, _cl((128, 64, 28, 28), torch.float16), device_name="Fake GPU") is None
    # resolve_backend puts the table's pick first, then the fixed order; a missing backend falls back
    monkeypatch.setattr(dispatch, "_device_name", lambda device: "Fake GPU")
    monkeypatch.setattr(dispatch, "_backend_ok", lambda name, dev: (True, ""))
    assert ops.resolve_backend("auto", "cuda", op, like=_cl((128, 64, 28, 28))) == "triton"
    assert ops.resolve_backend("auto", "cuda", op, like=_cl((1000, 64, 28, 28))) == "cuda"
    assert ops.resolve_backend("auto", "cuda", op) == ops.AUTO_PREFERENCE[op][0]          # no tensor: fallback
    assert ops.resolve_backend("auto", "cpu", op, like=_cl((128, 64, 28, 28))) == "torch"
    monkeypatch.setattr(dispatch, "_backend_ok", lambda name, dev: (name != "triton", "no triton"))
    monkeypatch.setenv("FASTNCSN_QUIET_FALLBACK", "1")
    assert ops.resolve_backend("auto", "cuda", op, like=_cl((128, 64, 28, 28))) == ops.AUTO_PREFERENCE[op][0]


def test_no_table_falls_back_to_the_preference(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch, "_ACTIVE_TABLE", dispatch._ACTIVE_TABLE)   # restored after the test
    monkeypatch.setattr(dispatch, "_device_name", lambda device: "Fake GPU")
    monkeypatch.setattr(dispatch, "_backend_ok", lambda name, dev: (True, ""))
    op, x = "cond_instance_norm_plus", _cl((128, 64, 28, 28))
    for setting in (str(tmp_path / "missing.json"), "0"):
        monkeypatch.setenv("FASTNCSN_AUTO_TABLE", setting)
        assert dispatch.load_auto_table() == {} and dispatch.auto_table() == {}
        assert dispatch.table_choice(op, x) is None
        assert ops.resolve_backend("auto", "cuda", op, like=x) == ops.AUTO_PREFERENCE[op][0]


def test_committed_table_has_no_invented_rows():
    """The committed table is filled only by scripts/auto_table.py from a GPU window's graph timings;
    until then it is empty and auto uses AUTO_PREFERENCE."""
    import json
    with open(dispatch.AUTO_TABLE_PATH) as f:
        table = json.load(f)
    if table["ops"]:
        assert table["device"] and table["date"] and table["source"].endswith("-ops.json")
    else:
        assert table["device"] is None and "eager" in table["note"]


def test_table_lookup_traces_without_graph_breaks():
    """``auto`` resolves inside ops that ``torch.compile(fullgraph=True)`` traces: the lookup reads no file and
    only tensor metadata."""
    table = _table_script().build_table(_synthetic_ops_run(), "x.json")

    def f(x):
        pick = dispatch.table_choice("cond_instance_norm_plus", x, table, device_name="Fake GPU")
        return x + (1.0 if pick == "triton" else 2.0)

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    small, large = _cl((128, 64, 28, 28)).zero_(), _cl((1000, 64, 28, 28)).zero_()
    assert compiled(small).flatten()[0].item() == 1.0 and compiled(large).flatten()[0].item() == 2.0
