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


# ------------------------------------------------------------------ folder datasets (issue 24): any file, decoded up front

def _truncated(tmp_path, fmt, name):
    import io
    import numpy as np
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(buf, fmt)
    (tmp_path / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize("fmt, name", [("JPEG", "b.jpg"), ("PNG", "b.png")])
def test_truncated_image_named_when_the_folder_is_built(tmp_path, fmt, name, capsys):
    """A half-written JPEG passed PIL's verify() (a header check) and failed mid-training; every file is
    now decoded when the dataset is built, and the error names it -- in the API and in the command."""
    from fastncsn.cli import main
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    _truncated(tmp_path, fmt, name)
    with pytest.raises(ValueError, match=r"^root: cannot read image .*" + name.replace(".", r"\.")):
        get_dataset(f"folder:{tmp_path}")
    out = tmp_path.parent / (tmp_path.name + "_stats.pt")
    assert main(["fid-stats", "--data", f"folder:{tmp_path}", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastncsn fid-stats: error: --data: cannot read image") and name in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_16bit_grayscale_png_scaled_by_65535(tmp_path):
    """A 16-bit PNG was converted to 8-bit by clipping at 255: 99% white.  Now value / 65535."""
    import numpy as np
    a = np.linspace(0, 65535, 12 * 12).reshape(12, 12).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")          # PIL reads it as 16-bit
    ds = get_dataset(f"folder:{tmp_path}")
    assert (ds.image_size, ds.channels) == (12, 1)
    x = ds[0][0]
    assert x.shape == (1, 12, 12)
    torch.testing.assert_close(x[0], torch.from_numpy(a.astype("float32") / 65535), rtol=0, atol=1e-6)
    assert float(x.mean()) == pytest.approx(0.5, abs=1e-3)


def test_folder_shape_from_the_files_and_fid_stats_of_28x28_gray(tmp_path):
    """Folders were fixed at 32x32 RGB, so fid-stats of 28x28 grayscale digits always failed."""
    import numpy as np
    from fastncsn.cli import main
    from fastncsn.data import dataset_config
    from fastncsn.metrics.fid_run import load_stats
    from fastncsn.training.build import load_data
    digits = embedded_digits()[0][:6]
    for i, d in enumerate(digits):
        Image.fromarray((d[0].numpy() * 255).round().astype(np.uint8), "L").save(tmp_path / f"{i}.png")
    ds = get_dataset(f"folder:{tmp_path}")
    assert len(ds) == 6 and ds[0][0].shape == (1, 28, 28)
    torch.testing.assert_close(ds[3][0], (digits[3] * 255).round() / 255, rtol=0, atol=1e-6)
    assert dataset_config(f"folder:{tmp_path}", ds)["image_size"] == 28
    assert load_data(f"folder:{tmp_path}", None)[2]["channels"] == 1          # the model train builds: 1x28x28
    out = tmp_path.parent / "gray.stats"
    assert main(["fid-stats", "--data", f"folder:{tmp_path}", "--out", str(out), "--quiet"]) == 0
    stats, _ = load_stats(out)
    assert stats.n == 6 and stats.dim == 64


def test_folder_of_mixed_sizes_and_modes_is_converted_with_a_note(tmp_path):
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "b.png")
    Image.new("L", (20, 10), 128).save(tmp_path / "c.png")                  # another size, grayscale
    Image.new("RGBA", (16, 16), (0, 0, 255, 10)).save(tmp_path / "d.png")   # alpha dropped
    with pytest.warns(UserWarning) as rec:
        ds = get_dataset(f"folder:{tmp_path}")
    notes = " ".join(str(w.message) for w in rec)
    assert "1 of 4 images" in notes and "resized" in notes and "grayscale" in notes
    assert (ds.image_size, ds.channels) == (16, 3)
    x = torch.stack([ds[i][0] for i in range(4)])
    assert x.shape == (4, 3, 16, 16)
    torch.testing.assert_close(x[2], torch.full((3, 16, 16), 128 / 255), rtol=0, atol=1e-5)
    torch.testing.assert_close(x[3, 2], torch.ones(16, 16))
    with pytest.warns(UserWarning) as rec:                                 # an explicit size: no size note
        small = get_dataset(f"folder:{tmp_path}", image_size=8)
    assert [("grayscale" in str(w.message), "resized" in str(w.message)) for w in rec] == [(True, False)]
    assert small[2][0].shape == (3, 8, 8)
