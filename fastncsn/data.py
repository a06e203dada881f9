"""Datasets and the reference preprocessing.

* ``digits`` -- the embedded default: scikit-learn's real handwritten digits
  (``load_digits``, 1,797 images, 8x8), resized to the 28x28 configuration.
  Ships with scikit-learn: no download.
* ``mnist``, ``cifar10``, ``celeba`` (centre crop 140, resize 32),
  ``stanford_cars`` (resize 32) through torchvision when it is installed and the
  files are present under ``root`` (``download=True`` to fetch them).
* ``folder:PATH`` -- a directory of images (PNG/JPEG...), resized.

Preprocessing as in the reference code: dequantisation ``x*255/256 + U/256``,
random horizontal flips (CIFAR-10, CelebA), optional logit transform.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

__all__ = ["DATASET_CONFIGS", "DATASETS", "get_dataset", "dequantize", "random_hflip", "logit_transform",
           "inverse_logit_transform", "ImageFolderDataset", "digits_tensor"]

#: default model configuration per dataset (image size and channels), and whether
#: the reference flips images during training
DATASET_CONFIGS = {
    "digits": dict(image_size=28, channels=1, random_flip=False),
    "mnist": dict(image_size=28, channels=1, random_flip=False),
    "cifar10": dict(image_size=32, channels=3, random_flip=True),
    "celeba": dict(image_size=32, channels=3, random_flip=True),
    "stanford_cars": dict(image_size=32, channels=3, random_flip=False),
    "folder": dict(image_size=32, channels=3, random_flip=False),
}
DATASETS = tuple(DATASET_CONFIGS)

_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def digits_tensor(image_size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits as tensors: ``([1797, 1, S, S] in [0, 1], labels [1797])``.

    Pixel values 0..16 are scaled to [0, 1]; 8x8 -> SxS bilinear
    (``align_corners=False``, no antialiasing: an upsampling).
    """
    if image_size == 28:
        from .metrics import embedded_digits  # one loader for the whole package (cached)
        return embedded_digits()
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.tensor(d.target, dtype=torch.long)


class ImageFolderDataset(Dataset):
    """Every image file below ``root`` (sorted), resized to ``image_size``, as ``(image, 0)``."""

    def __init__(self, root: str, image_size: int = 32, channels: int = 3):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"root: no such directory {root!r}")
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith(_IMAGE_EXT))
        if not self.files:
            raise ValueError(f"root: no image files ({', '.join(_IMAGE_EXT)}) under {root!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels: expected 1 or 3, got {channels!r}")
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            im = im.convert("L" if self.channels == 1 else "RGB").resize((self.image_size, self.image_size),
                                                                           Image.BILINEAR)
            x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        x = x.view(self.image_size, self.image_size, self.channels).permute(2, 0, 1).float() / 255.0
        return x, 0


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
        name: ``digits`` | ``mnist`` | ``cifar10`` | ``celeba`` | ``stanford_cars``
            | ``folder:PATH`` (or ``folder`` with ``root``).
        root: directory holding the torchvision dataset files (or the images).
        train: training split.
        image_size: resize target (default: ``DATASET_CONFIGS[name]``).
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
    if base == "folder":
        folder = path or root
        if not folder:
            raise ValueError("data: 'folder' needs a path: folder:PATH or root=PATH")
        return ImageFolderDataset(folder, size, cfg["channels"])
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
        if base == "mnist":
            return datasets.MNIST(root, train=train, download=download, transform=tf)
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
