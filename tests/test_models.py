import os

import pytest
import torch

from fastncsn.models import MODEL_REGISTRY, get_model_class
from fastncsn.models.ncsnv2 import NCSNv2
from fastncsn.models.refinenet import CondRefineNetDilated

import refnet_functional as ref

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("fname,cfg", [
    ("ncsn_v1_checkpoint_keys_mnist_ngf64.txt", dict(image_size=28, channels=1, ngf=64, num_levels=10)),
    ("ncsn_v1_checkpoint_keys_cifar10_ngf128.txt", dict(image_size=32, channels=3, ngf=128, num_levels=10)),
])
def test_parameter_names_and_shapes_equal_reference_checkpoint(fname, cfg):
    expected = ref.read_key_list(os.path.join(DATA, fname))
    model = CondRefineNetDilated(**cfg)
    got = {"module." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    n_values = sum(int(torch.Size(s).numel()) for s in expected.values())
    assert sum(p.numel() for p in model.parameters()) == n_values


@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3)])
def test_forward_equals_functional_reference(image_size, channels, tol):
    torch.manual_seed(0)
    model = CondRefineNetDilated(image_size=image_size, channels=channels, ngf=8, num_levels=5).eval()
    with torch.no_grad():  # move the embeddings away from the N(1, 0.02)/0 initialisation
        for name, p in model.named_parameters():
            if name.endswith("embed.weight"):
                p.normal_(0.5, 0.5)
    x = torch.rand(3, channels, image_size, image_size)
    y = torch.tensor([0, 4, 2])
    with torch.no_grad():
        ours = model(x, y)
        theirs = ref.forward(model.state_dict(), x, y)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, theirs, **tol[torch.float32])


def test_default_sigmas_and_config():
    model = CondRefineNetDilated(image_size=28, channels=1, ngf=4, num_levels=10)
    assert model.sigmas.shape == (10,)
    assert model.sigmas[0].item() == pytest.approx(1.0) and model.sigmas[-1].item() == pytest.approx(0.01)
    assert "sigmas" not in model.state_dict()  # reference v1 layout has no such entry
    rebuilt = get_model_class("CondRefineNetDilated")(**model.config)
    assert rebuilt.config == model.config
    assert model.data_shape == (1, 28, 28)


def test_bad_inputs_name_the_argument():
    model = CondRefineNetDilated(image_size=28, channels=1, ngf=4, num_levels=3)
    with pytest.raises(ValueError, match="image_size"):
        model(torch.rand(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(2, 3, 28, 28), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="level_index"):
        model(torch.rand(2, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="image_size"):
        CondRefineNetDilated(image_size=27)
    with pytest.raises(ValueError, match="sigmas"):
        CondRefineNetDilated(num_levels=3, sigmas=[0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("opencl")


def test_ncsnv2_layout_and_sigma_division(tol):
    torch.manual_seed(0)
    model = NCSNv2(image_size=32, channels=3, ngf=4, num_levels=6, sigma_1=50.0).eval()
    keys = set(model.state_dict())
    for k in ["sigmas", "normalizer.alpha", "normalizer.gamma", "normalizer.beta",
              "res2.0.conv2.conv.weight", "res2.0.shortcut.conv.weight", "res3.0.shortcut.weight",
              "refine1.adapt_convs.0.1_1_conv.weight", "refine2.msf.convs.1.bias", "refine4.output_convs.3_2_conv.weight",
              "refine1.crp.convs.1.weight"]:
        assert k in keys, k
    assert not any("norm" in k and k.startswith("refine") for k in keys)  # v2 refine blocks have no norms
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = model(x, torch.tensor([0, 0]))
        b = model(x, torch.tensor([5, 5]))
    ratio = (model.sigmas[0] / model.sigmas[5]).item()
    torch.testing.assert_close(b, a * ratio, **tol[torch.float32])
    assert model.sigmas[0].item() == pytest.approx(50.0)


def test_registry_has_models():
    get_model_class("NCSNv2")
    assert {"CondRefineNetDilated", "NCSNv2"} <= set(MODEL_REGISTRY)
    with pytest.raises(ValueError, match="model class"):
        get_model_class("ResNet50")


@pytest.mark.parametrize("cls", [CondRefineNetDilated, NCSNv2])
def test_input_of_another_dtype_is_a_value_error_naming_x(cls):
    """float16 / float64 inputs failed inside the network (a conv's dtype error); the contract: ``x`` in the
    parameters' dtype (or any float under autocast), else a ValueError naming ``x`` (issue 24)."""
    torch.manual_seed(0)
    model = cls(image_size=32, channels=3, ngf=4, num_levels=2).eval()
    x, idx = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    for dtype in (torch.float16, torch.float64, torch.bfloat16):
        with pytest.raises(ValueError, match=rf"^x: expected torch.float32 .*got {dtype}"):
            model(x.to(dtype), idx)
    with torch.no_grad():
        assert model.double()(x.double(), idx).dtype == torch.float64     # a float64 network takes float64
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model.float()(x.bfloat16(), idx)).all()
