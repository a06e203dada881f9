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


