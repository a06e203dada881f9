"""Feature extractors for FID: Inception-v3 and the digits classifier.

* ``InceptionFeatures`` -- Inception-v3 pool3 features (2048-d) from a torchvision
  weights file the user supplies (never downloaded).
* ``DigitsClassifier`` -- a small 3-layer CNN trained by this project on the
  embedded 28x28 digits (:func:`fastncsn.data.digits_split`), shipped as
  ``fastncsn/assets/digits_classifier.pt``; ``train_digits_classifier``,
  ``save_digits_classifier``, ``load_digits_classifier``; ``digits_fid`` scores
  digit samples with its 64-d features.
* the MNIST classifier -- the same CNN trained on the 60,000 MNIST training digits
  (:func:`fastncsn.data.mnist_tensor`, offline) and checked on the 10,000 test digits, shipped as
  ``fastncsn/assets/mnist_classifier.pt``; ``train_mnist_classifier``,
  ``load_mnist_classifier``; ``mnist_fid`` scores samples with its 64-d features
  (MNIST-FID), against the training digits' statistics by default.

The shipped classifiers are (re)trained with::

    python -m fastncsn.metrics --train-digits-classifier
    python -m fastncsn.metrics --train-mnist-classifier
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import atomic_save
from ..data import digits_split, embedded_digits, mnist_tensor
from ..files import UnsafeFileError, safe_torch_load
from .fid import compute_feature_stats, fid

__all__ = ["InceptionFeatures", "DigitsClassifier", "train_digits_classifier", "save_digits_classifier",
           "load_digits_classifier", "shipped_digits_classifier", "digits_fid", "train_mnist_classifier",
           "load_mnist_classifier", "shipped_mnist_classifier", "mnist_fid", "ASSETS_DIR", "DIGITS_CLASSIFIER_PATH",
           "MNIST_CLASSIFIER_PATH"]

#: package data directory (fastncsn/assets); resolved from this file so it works for editable and
#: regular installs alike (setup.py ships ``assets/*.pt`` as package data)
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
#: the digits classifier shipped with the package
DIGITS_CLASSIFIER_PATH = ASSETS_DIR / "digits_classifier.pt"
#: the MNIST classifier shipped with the package (same network, trained on MNIST's training split)
MNIST_CLASSIFIER_PATH = ASSETS_DIR / "mnist_classifier.pt"


# --------------------------------------------------------------------------- #
# Inception-v3 features (user-supplied torchvision weights)
# --------------------------------------------------------------------------- #
_INCEPTION_HOWTO = (
    "InceptionFeatures expects the torchvision Inception-v3 ImageNet weights file "
    "'inception_v3_google-0cc3c7bd.pth' (about 104 MB; a state dict of "
    "torchvision.models.inception_v3). fastncsn never downloads it: on a machine with "
    "network access run  python -c \"import torchvision; "
    "torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"  and copy the file from "
    "~/.cache/torch/hub/checkpoints/ (the URL is "
    "torchvision.models.Inception_V3_Weights.IMAGENET1K_V1.url), then pass its path.")


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (2048-d) from a local torchvision weights file.

    Expected file: torchvision's ``inception_v3_google-0cc3c7bd.pth`` (the
    ``Inception_V3_Weights.IMAGENET1K_V1`` state dict), or any state dict with the
    same keys (a dict with a ``"state_dict"`` entry is unwrapped). Nothing is
    downloaded at run time; see ``_INCEPTION_HOWTO`` / the error message for how to
    obtain it. Requires torchvision (imported only here).

    Note: the FID numbers of the NCSN papers use the TensorFlow Inception graph
    ("pt_inception-2015-12-05", as ported by pytorch-fid), whose pooling layers
    differ slightly; torchvision-weight FIDs are comparable with each other, not
    digit-for-digit with published values. That file is rejected with an error.

    Input: images ``[N, C, H, W]``, C in {1, 3}, values in [0, 1] (clamped; one
    channel is repeated to three), any size. They are resized to 299x299
    (bilinear, ``align_corners=False``) and mapped to [-1, 1] (``2x - 1``), which is
    what torchvision's ImageNet normalisation followed by the model's
    ``transform_input=True`` produces for these weights.

    Output: pool3 features ``[N, 2048]`` (the input of the final ``fc`` layer).

    Args:
        weights_path: path of the weights file.
        device: where to put the network (default CPU).
    """

    feature_dim = 2048

    def __init__(self, weights_path: Union[str, Path], device: Union[str, torch.device, None] = None):
        super().__init__()
        if weights_path is None or not isinstance(weights_path, (str, Path)):
            raise TypeError(f"weights_path must be a path to a local file. {_INCEPTION_HOWTO}")
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights_path {str(path)!r} does not exist or is not a file. "
                                    f"{_INCEPTION_HOWTO}")
        try:
            state = safe_torch_load(path, arg="weights_path")
        except UnsafeFileError:
            raise
        except Exception as exc:
            raise ValueError(f"weights_path {str(path)!r} could not be read as a PyTorch state dict "
                             f"({exc}). {_INCEPTION_HOWTO}") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state \
                or "fc.weight" not in state:
            raise ValueError(f"weights_path {str(path)!r} is not a torchvision Inception-v3 state "
                             f"dict (no 'Mixed_7c...' / 'fc.weight' keys). {_INCEPTION_HOWTO}")
        num_classes = int(state["fc.weight"].shape[0])
        if num_classes == 1008:
            raise ValueError(f"weights_path {str(path)!r} looks like pytorch-fid's TensorFlow-FID "
                             f"Inception port (1008 classes), whose blocks differ from torchvision's; "
                             f"it is not supported. {_INCEPTION_HOWTO}")
        try:
            import torchvision
        except ImportError as exc:
            raise ImportError("InceptionFeatures needs torchvision (pip install torchvision, the "
                              "release matching your torch)") from exc
        aux = any(k.startswith("AuxLogits.") for k in state)
        net = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False,
                                              transform_input=False, num_classes=num_classes)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights_path {str(path)!r} does not match torchvision's "
                             f"inception_v3: {exc}") from exc
        net.fc = nn.Identity()
        self.net = net.eval().requires_grad_(False)
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True):  # always an evaluator (no dropout, frozen batch norm)
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` in [0, 1] -> pool3 features ``[N, 2048]`` (float32)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape [N, 1 or 3, H, W], got {list(images.shape)}")
        x = images.to(torch.float32).clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(2.0 * x - 1.0)


# --------------------------------------------------------------------------- #
# The digits classifier
# --------------------------------------------------------------------------- #
class DigitsClassifier(nn.Module):
    """Small 3-layer CNN for the 28x28 digits (like the labelling CNN of seed 000).

    conv3x3(1->16) - ReLU - maxpool2 -> 14x14, conv3x3(16->32) - ReLU - maxpool2 -> 7x7,
    conv3x3(32->64) - ReLU - maxpool2 -> 3x3, linear(576 -> 64) = features,
    ReLU, linear(64 -> 10) = logits. About 61 k parameters.

    Input: ``[N, 1, 28, 28]`` with values in [0, 1] (clamped, then mapped to [-1, 1]).
    """

    feature_dim = 64
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 3 * 3, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, self.num_classes)
        self.metadata: dict = {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (``fc1`` output, before its ReLU): ``[N, 64]``."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(f"images must have shape [N, 1, 28, 28], got {list(images.shape)}")
        x = images.to(self.fc1.weight.dtype).clamp(0.0, 1.0) * 2.0 - 1.0
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc1(x.flatten(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, 10]``."""
        return self.fc2(F.relu(self.features(images)))


def _shift_augment(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by a random integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = offs[:, 0, None] + torch.arange(h)  # [n, h]
    cols = offs[:, 1, None] + torch.arange(w)  # [n, w]
    idx = torch.arange(n)[:, None, None]
    return padded[:, 0][idx, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    correct = 0
    for s in range(0, x.shape[0], batch_size):
        correct += int((model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum())
    return correct / x.shape[0]


def _train_classifier(train_x: torch.Tensor, train_y: torch.Tensor, steps: int, seed: int, batch_size: int,
                      lr: float, log_every: int) -> DigitsClassifier:
    """Adam with a cosine learning-rate decay, cross-entropy, random shifts of up to 2 pixels and light Gaussian
    pixel noise as augmentation (so slightly imperfect generated digits are still classified); eval mode."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, train_x.shape[0], (batch_size,), generator=gen)
        x = _shift_augment(train_x[idx], 2, gen)
        x = x + 0.05 * torch.randn(x.shape, generator=gen)
        loss = F.cross_entropy(model(x), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}", flush=True)
    return model.eval()


def train_digits_classifier(steps: int = 3000, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                            holdout_fraction: float = 0.2, split_seed: int = 0,
                            log_every: int = 0) -> DigitsClassifier:
    """Train ``DigitsClassifier`` on the train split of the embedded digits (CPU, ~1 min).

    Adam with a cosine learning-rate decay, cross-entropy, random shifts of up to
    2 pixels and light Gaussian pixel noise as augmentation (so slightly imperfect
    generated digits are still classified). The split is ``digits_split(holdout_fraction,
    split_seed)``; the held-out accuracy is measured at the end.

    Returns:
        The model in eval mode, with ``model.metadata`` holding ``heldout_accuracy``,
        ``train_accuracy``, the split and the training settings.
    """
    train_x, train_y, test_x, test_y = digits_split(holdout_fraction, split_seed)
    model = _train_classifier(train_x, train_y, steps, seed, batch_size, lr, log_every)
    model.metadata = _metadata(model, train_x, train_y, test_x, test_y, steps, seed, batch_size, lr,
                               "--train-digits-classifier", holdout_fraction=holdout_fraction,
                               split_seed=split_seed)
    return model


def train_mnist_classifier(steps: int = 3000, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                           root: Optional[str] = None, log_every: int = 0) -> DigitsClassifier:
    """Train the ``DigitsClassifier`` network on MNIST's 60,000 training digits (CPU, one thread: minutes).

    The recipe of :func:`train_digits_classifier` (Adam, cosine decay, shifts and pixel noise); MNIST from
    :func:`fastncsn.data.mnist_tensor` (offline: the data package, or ``root``). The 10,000 test digits are
    never trained on: ``model.metadata["test_accuracy"]`` is measured on them at the end (and
    ``heldout_accuracy`` is the same figure, the key the digits classifier uses).

    Returns:
        The model in eval mode, with ``model.metadata`` (accuracies, data, settings, the command).
    """
    train_x, train_y = mnist_tensor(True, root)
    model = _train_classifier(train_x, train_y, steps, seed, batch_size, lr, log_every)
    test_x, test_y = mnist_tensor(False, root)
    model.metadata = _metadata(model, train_x, train_y, test_x, test_y, steps, seed, batch_size, lr,
                               "--train-mnist-classifier", data="mnist", num_test=int(test_x.shape[0]))
    model.metadata["test_accuracy"] = model.metadata["heldout_accuracy"]
    return model


def _metadata(model, train_x, train_y, test_x, test_y, steps, seed, batch_size, lr, flag: str, **extra) -> dict:
    """A trained classifier's record: held-out and train accuracy, sizes, settings, the command that made it."""
    return dict(extra, heldout_accuracy=_accuracy(model, test_x, test_y),
                train_accuracy=_accuracy(model, train_x, train_y), num_heldout=int(test_x.shape[0]),
                num_train=int(train_x.shape[0]), steps=steps, seed=seed, batch_size=batch_size, lr=lr,
                torch_version=str(torch.__version__),
                command=f"python -m fastncsn.metrics {flag} --steps {steps} --seed {seed}")


def save_digits_classifier(model: DigitsClassifier, path: Union[str, Path] = DIGITS_CLASSIFIER_PATH) -> Path:
    """Write ``{"state_dict", "metadata"}`` to ``path`` (float32 weights, ~250 KB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save({"state_dict": state, "metadata": dict(model.metadata)}, str(path))
    return path


def load_digits_classifier(path: Union[str, Path, None] = None,
                           device: Union[str, torch.device, None] = None) -> DigitsClassifier:
    """Load the digits classifier (default: the one shipped in ``fastncsn/assets``).

    Returns a frozen model in eval mode; ``model.metadata["heldout_accuracy"]`` is the
    accuracy measured on the held-out split when it was trained.
    """
    path = DIGITS_CLASSIFIER_PATH if path is None else Path(path)
    if not path.is_file():
        which = "mnist" if path.name == MNIST_CLASSIFIER_PATH.name else "digits"
        raise FileNotFoundError(f"path {str(path)!r}: {which} classifier weights not found; create them "
                                f"with  python -m fastncsn.metrics --train-{which}-classifier")
    blob = safe_torch_load(path)
    model = DigitsClassifier()
    model.load_state_dict(blob["state_dict"])
    model.metadata = dict(blob.get("metadata", {}))
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


@functools.lru_cache(maxsize=4)
def shipped_digits_classifier(device: str = "cpu") -> DigitsClassifier:
    """The shipped digits classifier on ``device``, loaded once per device and process (frozen, eval mode)."""
    return load_digits_classifier(device=device)


@functools.lru_cache(maxsize=4)
def _embedded_digits_stats(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    stats = compute_feature_stats(embedded_digits()[0], shipped_digits_classifier(device).features, 512)
    return stats.mean(), stats.cov()


def digits_fid(samples, reference=None, batch_size: int = 512,
               device: Union[str, torch.device, None] = None) -> float:
    """Digits-FID: FID under the shipped digits classifier's 64-d features.

    Args:
        samples: generated digits ``[N, 1, 28, 28]`` in [0, 1] (or an iterable of
            batches, or precomputed ``FeatureStats``).
        reference: the same kinds of input; default (None) is all 1797 embedded digits
            (their statistics are computed once per process and cached).
        batch_size: images per classifier call.
        device: where to run the classifier (default: CPU).

    The value is only comparable with other digits-FIDs (different features and
    scale than the Inception FIDs printed in seed 000).
    """
    dev = str(torch.device(device)) if device is not None else "cpu"
    extractor = shipped_digits_classifier(dev).features
    if reference is None:
        reference = _embedded_digits_stats(dev)
    return fid(samples, reference, extractor, batch_size)


def load_mnist_classifier(path: Union[str, Path, None] = None,
                          device: Union[str, torch.device, None] = None) -> DigitsClassifier:
    """Load the MNIST classifier (default: the one shipped in ``fastncsn/assets``; :func:`load_digits_classifier`).

    ``model.metadata["test_accuracy"]`` is its accuracy on the 10,000 MNIST test digits."""
    return load_digits_classifier(MNIST_CLASSIFIER_PATH if path is None else path, device)


@functools.lru_cache(maxsize=4)
def shipped_mnist_classifier(device: str = "cpu") -> DigitsClassifier:
    """The shipped MNIST classifier on ``device``, loaded once per device and process (frozen, eval mode)."""
    return load_mnist_classifier(device=device)


@functools.lru_cache(maxsize=2)
def _mnist_train_stats(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    stats = compute_feature_stats(mnist_tensor(True)[0], shipped_mnist_classifier(device).features, 512)
    return stats.mean(), stats.cov()


#: the shipped metrics: name -> (its classifier, the statistics of its reference images), per device
_METRICS = {"digits": (shipped_digits_classifier, _embedded_digits_stats),
            "mnist": (shipped_mnist_classifier, _mnist_train_stats)}


def metric_parts(metric: str = "digits", device: str = "cpu"):
    """``(features, (mu, sigma))`` of a shipped metric: ``"digits"`` (the digits classifier's features, all
    1797 embedded digits) or ``"mnist"`` (the MNIST classifier's, the 60,000 training digits); the
    reference statistics are computed once per process and device."""
    if metric not in _METRICS:
        raise ValueError(f"metric: expected 'digits' or 'mnist', got {metric!r}")
    classifier, stats = _METRICS[metric]
    return classifier(device).features, stats(device)


def mnist_fid(samples, reference=None, batch_size: int = 512,
              device: Union[str, torch.device, None] = None) -> float:
    """MNIST-FID: FID under the shipped MNIST classifier's 64-d features.

    Args:
        samples: generated digits ``[N, 1, 28, 28]`` in [0, 1] (or an iterable of batches, or
            precomputed ``FeatureStats``).
        reference: the same kinds of input; default (None) is the 60,000 MNIST training digits
            (the installed data package; their statistics are computed once per process and cached).
        batch_size: images per classifier call.
        device: where to run the classifier (default: CPU).

    Comparable only with other MNIST-FIDs (not with digits-FIDs or Inception FIDs).
    """
    dev = str(torch.device(device)) if device is not None else "cpu"
    extractor = shipped_mnist_classifier(dev).features
    if reference is None:
        reference = _mnist_train_stats(dev)
    return fid(samples, reference, extractor, batch_size)
