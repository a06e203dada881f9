"""The bundled models by name: ``fastncsn.sample(model=NAME)``, ``--model NAME`` (issue 27 item 3)."""
import os
import shutil

import pytest
import torch

import fastncsn
import fastncsn.checkpoint as ck
from fastncsn.cli import main
from fastncsn.models import CondRefineNetDilated


@pytest.fixture
def assets(tmp_path, monkeypatch):
    """A copy of the assets folder whose ``mnist`` model is a tiny network (3 levels, width 4)."""
    d = tmp_path / "assets"
    d.mkdir()
    shutil.copy(ck.BUNDLED_PATH, d / ck.BUNDLED_MODELS["digits"][0])
    torch.manual_seed(0)
    model = CondRefineNetDilated(28, 1, ngf=4, num_levels=3)
    model.sampling_defaults = dict(eps=1e-4, steps_per_level=1, step_convention="reference", denoise=True)
    fastncsn.save(model, d / ck.BUNDLED_MODELS["mnist"][0])
    monkeypatch.setattr(ck, "ASSETS_DIR", str(d))
    return d


def test_every_bundled_name_has_a_file_name_and_a_description():
    assert set(ck.BUNDLED_MODELS) >= {"digits", "mnist"}
    assert ck.bundled_path("digits") == ck.BUNDLED_PATH
    with pytest.raises(ValueError, match="model: no bundled model 'cifar'"):
        ck.bundled_path("cifar")


def test_the_digits_name_is_the_default_model():
    a = fastncsn.sample(None, n=2, steps_per_level=1, progress=False)
    b = fastncsn.sample("digits", n=2, steps_per_level=1, progress=False)
    assert torch.equal(a, b)


def test_sample_by_name_loads_that_asset(assets):
    x = fastncsn.sample("mnist", n=2, progress=False)
    want = fastncsn.sample(str(assets / "mnist_ncsn.pt"), n=2, progress=False)
    assert torch.equal(x, want)
    assert fastncsn.load(str(assets / "mnist_ncsn.pt")).sigmas.numel() == 3


def test_a_file_named_like_a_bundled_model_is_reached_with_a_path(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(assets / "mnist_ncsn.pt", tmp_path / "digits")
    x = fastncsn.sample("./digits", n=1, progress=False)      # the tiny 3-level file, not the bundled digits
    assert torch.equal(x, fastncsn.sample("mnist", n=1, progress=False))


def test_cli_model_flag(assets, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["sample", "--model", "mnist", "--n", "2", "--out", str(out), "--quiet"]) == 0
    assert out.is_file()


def test_cli_missing_bundled_model_is_one_line(assets, tmp_path, capsys):
    os.remove(assets / "mnist_ncsn.pt")
    for cmd in (["sample"], ["inpaint"], ["fid", "--ref", ck.BUNDLED_PATH]):
        assert main(cmd + ["--model", "mnist", "--out", str(tmp_path / "x.png" if cmd[0] != "fid" else tmp_path / "f"),
                           "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"fastncsn {cmd[0]}: error: --model: the bundled mnist model "
                                                   "is missing"), err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "f").exists()


def test_cli_checkpoint_and_model_are_exclusive(capsys):
    assert main(["sample", "--model", "digits", "--checkpoint", ck.BUNDLED_PATH]) == 2
    assert "--checkpoint: not allowed with argument --model" in capsys.readouterr().err


def test_the_shipped_mnist_model_is_scored_small_and_covers_the_classes():
    """Issue 27 item 3: fastncsn/assets/mnist_ncsn.pt, written by scripts/train_bundled_mnist.py export, which
    scores the written file (MNIST-FID of 500 samples for seeds 0-2, classes of seed 0's first 100)."""
    path = os.path.join(os.path.dirname(ck.BUNDLED_PATH), ck.BUNDLED_MODELS["mnist"][0])
    assert os.path.getsize(path) <= 2 ** 20                                  # <= 1 MB
    c = ck.load_checkpoint(path)
    m = c["extra"]["metrics"]
    assert "train_bundled_mnist.py" in c["extra"]["trained_by"] and c["step"] == 9000
    assert len(m["classes_first_100"]) == 10 and sum(m["classes_first_100"]) == 100
    assert min(m["classes_first_100"]) > 0 and max(m["classes_first_100"]) <= 15    # every class, none above 15%
    assert len(m["mnist_fid_500"]) == 3 and m["seeds"] == [0, 1, 2] and len(m["floor_500"]) == 3
    assert c["ema_state_dict"] is None
    from fastncsn.files import safe_torch_load
    assert isinstance(safe_torch_load(path), dict)                           # loads without running code
    x = fastncsn.sample("mnist", n=2, steps_per_level=1, progress=False)
    assert x.shape == (2, 1, 28, 28) and torch.isfinite(x).all()
