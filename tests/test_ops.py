"""``fastncsn.ops``: backend dispatch and the torch backend of the fused ops."""
import pytest
import torch

from conftest import TOL
from fastncsn import ops
from fastncsn.reference import (cond_instance_norm_plus_ref, langevin_noise_counters, langevin_noise_ref,
                                langevin_step_ref)


def _state(shape=(3, 2, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)


def test_unknown_backend_raises():
    x, s = _state()
    with pytest.raises(ValueError, match="backend"):
        ops.cond_instance_norm_plus(x, torch.zeros(3, dtype=torch.long), torch.ones(1, 6), backend="fast")
    with pytest.raises(ValueError, match="backend"):
        ops.langevin_step_(x, s, 0.1, 0, 0, backend="fast")


def test_explicit_unavailable_backend_raises():
    x, s = _state()
    # the CUDA extension cannot run on CPU tensors
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.cond_instance_norm_plus(x, torch.zeros(3, dtype=torch.long), torch.ones(1, 6), backend="cuda")
    with pytest.raises(ops.BackendUnavailableError, match="cuda"):
        ops.langevin_step_(x, s, 0.1, 0, 0, backend="cuda")


def test_auto_on_cpu_is_torch():
    assert ops.resolve_backend("auto", "cpu", "langevin_step_") == "torch"
    assert "torch" in ops.available_backends("cpu")


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(ops, "_warned", set())
    monkeypatch.delenv("FASTNCSN_QUIET_FALLBACK", raising=False)
    monkeypatch.setattr(ops, "_backend_ok", lambda name, dev: (name == "torch", "not here"))
    with pytest.warns(RuntimeWarning, match="falls back|falling back"):
        assert ops.resolve_backend("auto", "cuda", "langevin_step_") == "torch"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.resolve_backend("auto", "cuda", "langevin_step_") == "torch"


def test_cin_torch_backend_is_reference():
    x, _ = _state((2, 3, 5, 5))
    y = torch.tensor([0, 1])
    w = torch.randn(2, 9)
    torch.testing.assert_close(ops.cond_instance_norm_plus(x, y, w, activation="elu", backend="torch"),
                               cond_instance_norm_plus_ref(x, y, w, activation="elu"))


def test_langevin_torch_backend_noise_sources():
    x, s = _state()
    a = torch.tensor([0.1, 0.2, 0.3])
    # seed/offset: the Philox stream of the fused kernels
    got = ops.langevin_step_(x.clone(), s, a, torch.tensor(5), torch.tensor(8), backend="torch")
    torch.testing.assert_close(got, langevin_step_ref(x, s, a, langevin_noise_ref(5, 8, x)), **TOL[torch.float32])
    # explicit noise
    z = torch.randn_like(x)
    got = ops.langevin_step_(x.clone(), s, a, noise=z, mask=torch.ones(2, 4, 4), known=torch.zeros_like(x),
                             backend="torch")
    assert torch.equal(got, torch.zeros_like(x))
    # generator: reproducible, and the same draw as torch.randn with that generator
    got1 = ops.langevin_step_(x.clone(), s, 0.1, generator=torch.Generator().manual_seed(3), backend="torch")
    got2 = ops.langevin_step_(x.clone(), s, 0.1, generator=torch.Generator().manual_seed(3), backend="torch")
    assert torch.equal(got1, got2)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got1, langevin_step_ref(x, s, 0.1, z), **TOL[torch.float32])


def test_langevin_in_place_and_offset_advance():
    x, s = _state()
    x0 = x.clone()
    out = ops.langevin_step_(x, s, 0.05, 1, 0, clamp=(-0.5, 0.5), backend="torch")
    assert out is x and not torch.equal(x, x0) and x.abs().max() <= 0.5
    z0 = langevin_noise_ref(1, 0, x)
    z1 = langevin_noise_ref(1, langevin_noise_counters(x.numel()), x)
    assert not torch.allclose(z0, z1)


def test_langevin_noise_source_errors():
    x, s = _state()
    with pytest.raises(ValueError, match="noise source"):
        ops.langevin_step_(x, s, 0.1)
    with pytest.raises(ValueError, match="noise source"):
        ops.langevin_step_(x, s, 0.1, 0, 0, noise=torch.zeros_like(x))
    with pytest.raises(ValueError, match="seed, offset"):
        ops.langevin_step_(x, s, 0.1, seed=0)
    with pytest.raises(ValueError, match="step_size"):
        ops.langevin_step_(x, s, -0.1, 0, 0)
