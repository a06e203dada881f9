import os

import pytest
import torch

import fastncsn
from fastncsn.checkpoint import CheckpointError, atomic_save, load_checkpoint
from fastncsn.models.ncsnv2 import NCSNv2
from fastncsn.models.refinenet import CondRefineNetDilated

import refnet_functional as ref

DATA = os.path.join(os.path.dirname(__file__), "data")


def _reference_state(key_file, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in ref.read_key_list(key_file).items()}


def _old_layout(sd):
    """The older CIN++ layout: separate gamma/alpha/beta [L, C] per norm instead of embed.weight."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".embed.weight"):
            gamma, alpha, beta = v.chunk(3, dim=1)
            p = k[: -len(".embed.weight")]
            out[p + ".gamma"], out[p + ".alpha"], out[p + ".beta"] = gamma, alpha, beta
        else:
            out[k] = v
    return out


def test_reference_layout_from_key_list_lands_in_place(tmp_path):
    sd = _reference_state(os.path.join(DATA, "ncsn_v1_checkpoint_keys_mnist_ngf64.txt"))
    path = tmp_path / "checkpoint.pth"
    torch.save([sd, {"state": {}, "param_groups": []}], path)
    with pytest.raises(CheckpointError, match="image_size"):
        fastncsn.load(path)
    model = fastncsn.load(path, image_size=28, channels=1, ngf=64, num_levels=10)
    own = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(own[k[len("module."):]], v), k
    # the older per-norm gamma/alpha/beta layout gives the same model
    path2 = tmp_path / "old.pth"
    torch.save([_old_layout(sd), {}], path2)
    model2 = fastncsn.load(path2, image_size=28, channels=1, ngf=64, num_levels=10)
    for k, v in model2.state_dict().items():
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3)])
def test_reference_checkpoint_output_equals_reference_network(tmp_path, image_size, channels, tol):
    torch.manual_seed(1)
    donor = CondRefineNetDilated(image_size, channels, ngf=8, num_levels=4)
    sd = {"module." + k: v.clone() for k, v in donor.state_dict().items()}
    for k in sd:
        if k.endswith("embed.weight"):
            sd[k].normal_(0.5, 0.5)
    torch.save([sd, {}], tmp_path / "c.pth")
    model = fastncsn.load(tmp_path / "c.pth", image_size=image_size, channels=channels, ngf=8, num_levels=4)
    x = torch.rand(3, channels, image_size, image_size)
    y = torch.tensor([3, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), ref.forward(sd, x, y), **tol[torch.float32])


def test_ncsnv2_list_checkpoint_with_ema(tmp_path):
    torch.manual_seed(0)
    net = NCSNv2(image_size=32, channels=3, ngf=4, num_levels=5, sigma_1=50.0)
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    ema = {k: v + 1.0 if v.is_floating_point() and not k.endswith("sigmas") else v
           for k, v in net.state_dict().items()}
    torch.save([sd, {}, 3, 1200, ema], tmp_path / "v2.pth")
    cfg = dict(image_size=32, channels=3, ngf=4, num_levels=5)
    m_ema = fastncsn.load(tmp_path / "v2.pth", **cfg)
    m_raw = fastncsn.load(tmp_path / "v2.pth", ema=False, **cfg)
    assert torch.equal(m_raw.begin_conv.weight, net.begin_conv.weight)
    assert torch.equal(m_ema.begin_conv.weight, net.begin_conv.weight + 1.0)
    assert torch.equal(m_ema.sigmas, net.sigmas)


def test_our_format_roundtrip_and_overrides(tmp_path):
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3, sigmas=[2.0, 0.5, 0.1])
    model.sampling_defaults = dict(eps=1e-5, steps_per_level=7)
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    fastncsn.save(model, tmp_path / "m.pt", step=12, ema=ema, extra={"command": "test"})
    ck = load_checkpoint(tmp_path / "m.pt")
    assert ck["step"] == 12 and ck["extra"]["command"] == "test"
    back = fastncsn.load(tmp_path / "m.pt", ema=False)
    assert back.config == model.config and back.sampling_defaults["steps_per_level"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    with_ema = fastncsn.load(tmp_path / "m.pt")
    assert torch.equal(with_ema.begin_conv.weight, model.begin_conv.weight + 1)
    forced = fastncsn.load(tmp_path / "m.pt", backend="torch")
    assert "backend" not in forced.config and forced.normalizer.backend == "torch"


def test_backend_is_not_saved_state_and_old_configs_load(tmp_path):
    """set_backend is a run option: it does not change what save writes; a checkpoint of an older
    version with ``backend`` in its config still loads (the entry is ignored)."""
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3, sigmas=[2.0, 0.5, 0.1], backend="triton")
    assert "backend" not in model.config and model.normalizer.backend == "triton"
    before = dict(model.config)
    model.set_backend("torch")
    assert model.config == before
    fastncsn.save(model, tmp_path / "m.pt")
    assert "backend" not in load_checkpoint(tmp_path / "m.pt")["config"]
    ck = torch.load(tmp_path / "m.pt", weights_only=False)
    ck["config"]["backend"] = "cuda"                       # what older versions wrote
    torch.save(ck, tmp_path / "old.pt")
    old = fastncsn.load(tmp_path / "old.pt")
    assert old.config == before and old.normalizer.backend == "auto"


def test_atomic_save_keeps_previous_file(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save({"a": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Boom()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_corrupt_missing_and_foreign_files(tmp_path):
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
    fastncsn.save(model, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        fastncsn.load(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        fastncsn.load(tmp_path / "nope.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="neither"):
        fastncsn.load(tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="ngf: .*saved with ngf=4, got ngf=8"):  # before any weights are loaded
        fastncsn.load(tmp_path / "m.pt", ngf=8)


# issue 24: malformed files and non-finite weights are named, not failed on later

@pytest.mark.parametrize("key, value", [("config", None), ("state_dict", None), ("state_dict", {"w": 1.0}),
                                        ("model_class", 3), ("ema_state_dict", [1]), ("sampling_defaults", "x"),
                                        ("step", "4")])
def test_malformed_entries_are_named(tmp_path, key, value):
    fastncsn.save(CondRefineNetDilated(28, 1, ngf=4, num_levels=3), tmp_path / "m.pt")
    ck = torch.load(tmp_path / "m.pt", weights_only=False)
    ck[key] = value
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=rf"^path: '.*bad\.pt' is damaged: its '{key}' is "):
        fastncsn.load(tmp_path / "bad.pt")


def test_reference_checkpoint_without_a_state_dict_is_named(tmp_path):
    torch.save([{"a": 1}, {}], tmp_path / "ref.pt")
    with pytest.raises(CheckpointError, match=r"^path: '.*ref\.pt' looks like a reference checkpoint"):
        fastncsn.load(tmp_path / "ref.pt", image_size=28, channels=1, ngf=4, num_levels=3)


def test_non_finite_weights_are_named_on_load(tmp_path):
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    fastncsn.save(model, tmp_path / "nan.pt", ema=ema)
    with pytest.raises(CheckpointError, match=r"^path: '.*nan\.pt' holds non-finite weights \(NaN or inf in "):
        fastncsn.load(tmp_path / "nan.pt", ema=False)
    assert fastncsn.load(tmp_path / "nan.pt") is not None   # (its EMA weights are finite)
    ema[next(iter(ema))] = torch.full_like(ema[next(iter(ema))], float("inf"))
    fastncsn.save(model, tmp_path / "inf.pt", ema=ema)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        fastncsn.load(tmp_path / "inf.pt")
