import pytest
import torch
from PIL import Image

from fastncsn.data import (DATASET_CONFIGS, dequantize, digits_split, digits_tensor, embedded_digits, get_dataset,
                           inverse_logit_transform, logit_transform, random_hflip)


def test_digits_embedded():
    ds = get_dataset("digits")
    assert len(ds) == 1797
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert int(y) == 0
    assert DATASET_CONFIGS["digits"]["image_size"] == 28


def test_embedded_digits_format():
    images, labels = embedded_digits()
    assert images.shape == (1797, 1, 28, 28) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))
    train_x, _, test_x, test_y = digits_split()
    assert train_x.shape[0] + test_x.shape[0] == 1797
    assert torch.bincount(test_y).min() >= 34  # stratified: ~20% of every class (>= 174 each)


def test_digits_tensor_sizes_share_one_loader():
    x28, y28 = digits_tensor(28)
    x16, y16 = digits_tensor(16)
    assert x16.shape == (1797, 1, 16, 16) and torch.equal(y16, y28)
    assert torch.equal(x28, embedded_digits()[0])
    x28.zero_()                                    # callers get copies: the cache is not touched
    assert float(embedded_digits()[0].max()) > 0


def test_dequantize_and_transforms():
    x = torch.rand(4, 1, 5, 5)
    d = dequantize(x, torch.Generator().manual_seed(0))
    assert bool(((d - x * 255 / 256) >= 0).all()) and bool(((d - x * 255 / 256) < 1 / 256).all())
    torch.testing.assert_close(inverse_logit_transform(logit_transform(x)), x, rtol=1e-4, atol=1e-5)
    f = random_hflip(x, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(f, x.flip(-1))


def test_folder_dataset(tmp_path):
    for i in range(3):
        Image.new("RGB", (10, 12), (i * 80, 0, 0)).save(tmp_path / f"im{i}.png")
    ds = get_dataset(f"folder:{tmp_path}", image_size=8)
    assert len(ds) == 3 and ds[2][0].shape == (3, 8, 8)
    assert ds[1][0][0].mean().item() == pytest.approx(80 / 255, abs=1e-3)


def test_errors():
    with pytest.raises(ValueError, match="data"):
        get_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="root"):
        get_dataset("folder:/nonexistent/path")
    with pytest.raises(ValueError, match="root"):
        get_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="root"):
        get_dataset("mnist", root="/nonexistent/mnist")
