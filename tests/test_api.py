import pytest
import torch

import fastncsn
from fastncsn.checkpoint import BUNDLED_PATH, load_checkpoint
from fastncsn.toy import ToyScoreNet


def test_sample_bundled_model_offline():
    x = fastncsn.sample(n=3, steps_per_level=1, progress=False)
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()
    ck = load_checkpoint(BUNDLED_PATH)
    assert ck["step"] >= 1000 and "train_bundled_digits.py" in ck["extra"]["trained_by"]
    assert ck["sampling_defaults"]["step_convention"] == "reference"


def test_sample_same_seed_same_samples_and_batching():
    model = fastncsn.load(BUNDLED_PATH)
    a = fastncsn.sample(model, n=4, steps_per_level=1, seed=3, progress=False)
    b = fastncsn.sample(model, n=4, steps_per_level=1, seed=3, progress=False)
    assert torch.equal(a, b)
    c = fastncsn.sample(model, n=4, steps_per_level=1, seed=3, progress=False, batch_size=3)
    assert c.shape == a.shape


def test_sample_toy_model_and_snapshots():
    model = ToyScoreNet(num_levels=4)
    x, snaps = fastncsn.sample(model, n=5, steps_per_level=2, progress=False, snapshot_every=2)
    assert x.shape == (5, 2) and snaps.shape == (4, 5, 2)


def test_sample_inpainting_keeps_known():
    known = torch.rand(1, 1, 28, 28)
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., :14] = 1
    x = fastncsn.sample(n=2, steps_per_level=1, progress=False, mask=mask, known=known)
    assert torch.equal(x[..., :14], known[..., :14].expand(2, 1, 28, 14))


def test_sample_bad_args():
    with pytest.raises(ValueError, match="n"):
        fastncsn.sample(n=0)
    with pytest.raises(TypeError, match="model"):
        fastncsn.sample(model=42)
    with pytest.raises(ValueError, match="backend"):
        fastncsn.sample(ToyScoreNet(num_levels=2), n=1, backend="triton", progress=False)
