"""Sample-quality metrics: Frechet distance (FID), feature extractors, class histograms.

What is here, in the order data flows through it:

* ``FeatureStats`` -- streaming mean and covariance of feature vectors (float64,
  mergeable across batches and processes), so 10,000+ samples never have to be
  held in memory at once.
* ``frechet_distance`` -- the squared Wasserstein-2 distance between two Gaussians
  (seed 000, section 7, equation "FID"), computed through symmetric
  eigendecompositions only.
* ``fid`` / ``fid_from_features`` / ``compute_feature_stats`` -- FID of two image
  sets under any feature extractor (a callable ``images [N, C, H, W] in [0, 1] ->
  features [N, D]``).
* Extractors: ``InceptionFeatures`` (Inception-v3 pool3, 2048-d, from a torchvision
  weights file the user supplies) and ``DigitsClassifier`` (a small 3-layer CNN
  trained by this project on the embedded 28x28 digits, shipped as
  ``fastncsn/assets/digits_classifier.pt``); ``digits_fid`` scores digit samples
  with the latter.
* ``class_histogram`` / ``plot_class_histogram`` -- the predicted-class
  distribution of generated samples with per-class confidence intervals (seed 000,
  Figures 13-14).

The shipped classifier is (re)trained with::

    python -m fastncsn.metrics --train-digits-classifier
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import statistics
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import digits_split, embedded_digits

__all__ = [
    "frechet_distance",
    "FeatureStats",
    "compute_feature_stats",
    "fid_from_features",
    "fid",
    "InceptionFeatures",
    "DigitsClassifier",
    "train_digits_classifier",
    "save_digits_classifier",
    "load_digits_classifier",
    "digits_fid",
    "ClassHistogram",
    "class_histogram",
    "class_histogram_from_labels",
    "plot_class_histogram",
    "DIGITS_CLASSIFIER_PATH",
]

#: package data directory; resolved from this file so it works for editable and
#: regular installs alike (setup.py ships ``assets/*.pt`` as package data)
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
#: the digits classifier shipped with the package
DIGITS_CLASSIFIER_PATH = ASSETS_DIR / "digits_classifier.pt"

ArrayLike = Union[np.ndarray, torch.Tensor]
Extractor = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- #
# Frechet distance
# --------------------------------------------------------------------------- #
def _float64(x, name: str) -> np.ndarray:
    """``x`` as a finite float64 NumPy array, or a ValueError naming ``name``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return x


def _clamp_eigenvalues(w: np.ndarray, name: str) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with rounding noise removed.

    A clearly negative eigenvalue (below -1e-4 times the largest magnitude) means the
    matrix is not a covariance: ValueError naming ``name``. Eigenvalues below
    ``D * float64 eps * max`` cannot be told apart from 0 after rounding and are set to 0
    (so the null space of a rank-deficient covariance adds nothing under a square root).
    """
    scale = float(np.abs(w).max(initial=0.0))
    if w.size and w.min() < -1e-4 * scale:
        raise ValueError(
            f"{name} must be positive semi-definite (a covariance matrix); its smallest "
            f"eigenvalue is {w.min():.3g} against a largest magnitude of {scale:.3g}")
    return np.where(w > w.size * np.finfo(np.float64).eps * scale, w, 0.0)


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix through ``eigh``."""
    w, v = np.linalg.eigh(sigma)
    w = _clamp_eigenvalues(w, name)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = 0.0) -> float:
    """Frechet (squared Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Seed 000, section 7, equation (FID)::

        d = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))

    The cross term is evaluated without ever forming the non-symmetric product
    ``sigma1 @ sigma2`` (whose general matrix square root, as in ``scipy.linalg.sqrtm``,
    can return complex values or fail on singular covariances)::

        Tr((sigma1 sigma2)^(1/2)) = Tr((A sigma2 A)^(1/2)) = sum_i sqrt(lambda_i(A sigma2 A))

    with ``A = sigma1^(1/2)`` the symmetric PSD square root from ``eigh`` and
    ``A sigma2 A`` symmetric PSD, so only symmetric eigensolvers are used and the
    cross term is a sum of non-negative numbers. Eigenvalues that are negative or
    below ``D * eps * max`` through rounding are set to 0, so singular
    (rank-deficient) covariances, e.g. fewer samples than feature dimensions, need
    no special treatment. Cost for D = 2048: one ``eigh``, two ``eigvalsh`` and two
    matrix products, seconds on a 2-core CPU and several times less than
    ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` (measured here: 3.5 s vs 47 s).

    Args:
        mu1, mu2: feature means, shape ``[D]`` (NumPy arrays or tensors).
        sigma1, sigma2: feature covariances, shape ``[D, D]``, symmetric PSD.
        eps: optional ridge ``eps * I`` added to both covariances before the square
            roots (pytorch-fid's fix for singular products; not needed here, offered
            for comparability). If an eigendecomposition fails to converge, the
            computation is retried once with ``eps = 1e-6`` and a warning.

    Returns:
        The distance as a Python float (>= 0), computed in float64.
    """
    mu1, mu2 = _float64(mu1, "mu1"), _float64(mu2, "mu2")
    sigma1, sigma2 = _float64(sigma1, "sigma1"), _float64(sigma2, "sigma2")
    if mu1.ndim != 1:
        raise ValueError(f"mu1 must have shape [D], got {list(mu1.shape)}")
    d = mu1.shape[0]
    if mu2.shape != (d,):
        raise ValueError(f"mu2 must have shape [{d}] like mu1, got {list(mu2.shape)}")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape [{d}, {d}], got {list(s.shape)}")
        if not np.allclose(s, s.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(s).max(initial=0.0)))):
            raise ValueError(f"{name} must be symmetric (a covariance matrix)")
    if not (isinstance(eps, (int, float)) and eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)

    def cross_term(ridge: float) -> float:
        eye = ridge * np.eye(d)
        root1 = _psd_sqrt(sigma1 + eye, "sigma1")
        _clamp_eigenvalues(np.linalg.eigvalsh(sigma2 + eye), "sigma2")  # validation only
        m = root1 @ (sigma2 + eye) @ root1
        w = _clamp_eigenvalues(np.linalg.eigvalsh(0.5 * (m + m.T)), "sigma1^(1/2) sigma2 sigma1^(1/2)")
        return float(np.sqrt(w).sum())

    ridge = float(eps)
    try:
        tr_covmean = cross_term(ridge)
    except np.linalg.LinAlgError:
        ridge = max(ridge, 1e-6)
        warnings.warn(f"frechet_distance: eigendecomposition did not converge; retrying with "
                      f"eps={ridge:g} added to the covariance diagonals", RuntimeWarning)
        tr_covmean = cross_term(ridge)
    diff = mu1 - mu2
    dist = (float(diff @ diff) + float(np.trace(sigma1)) + float(np.trace(sigma2))
            + 2.0 * d * ridge - 2.0 * tr_covmean)
    # Tr((S1 S2)^(1/2)) <= (Tr S1 + Tr S2) / 2 exactly, so a negative value is rounding
    return max(dist, 0.0)


# --------------------------------------------------------------------------- #
# Streaming feature statistics
# --------------------------------------------------------------------------- #
class FeatureStats:
    """Streaming mean and covariance of feature vectors, in float64.

    Holds the count ``n``, the running mean ``[D]`` and the centred sum of outer
    products ``M2 = sum_i (x_i - mean)(x_i - mean)^T`` ``[D, D]``; memory is
    O(D^2) whatever the number of samples. Batches (and whole accumulators, see
    ``merge``) are combined with Chan et al.'s pairwise update::

        delta = mean_b - mean_a,  n = n_a + n_b
        mean  = mean_a + delta * n_b / n
        M2    = M2_a + M2_b + delta delta^T * n_a n_b / n

    which, unlike accumulating raw sums ``sum x`` and ``sum x x^T``, does not lose
    precision when the features' mean is large against their spread.

    Args:
        dim: feature dimension D (optional; fixed by the first ``update`` otherwise,
            required for ``all_reduce`` on a process that may see no features).
        device: where the float64 accumulators live (default: the device of the
            first batch, so GPU features are accumulated on the GPU).
    """

    def __init__(self, dim: Optional[int] = None, device: Union[str, torch.device, None] = None):
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.dim = dim
        self.device = torch.device(device) if device is not None else None
        self.n = 0
        self._mean: Optional[torch.Tensor] = None
        self._m2: Optional[torch.Tensor] = None

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if n_b == 0:
            return
        if self.n == 0:
            self.n, self._mean, self._m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        n = self.n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    def _check_dim(self, d: int, what: str) -> None:
        if self.dim is None:
            self.dim = d
        elif d != self.dim:
            raise ValueError(f"{what} must have feature dimension {self.dim}, got {d}")

    def update(self, features: torch.Tensor) -> "FeatureStats":
        """Add a batch of feature vectors, shape ``[B, D]`` (any float dtype). Returns self."""
        if not isinstance(features, torch.Tensor):
            features = torch.as_tensor(np.asarray(features))
        if features.ndim != 2:
            raise ValueError(f"features must have shape [B, D], got {list(features.shape)}")
        self._check_dim(features.shape[1], "features")
        if self.device is None:
            self.device = features.device
        x = features.detach().to(self.device, torch.float64)
        if x.shape[0] == 0:
            return self
        if not torch.isfinite(x).all():
            raise ValueError("features must contain only finite values (found NaN or inf)")
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        self._combine(x.shape[0], mean_b, xc.T @ xc)
        return self

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Fold another accumulator into this one (e.g. from another process). Returns self."""
        if not isinstance(other, FeatureStats):
            raise TypeError(f"other must be a FeatureStats, got {type(other).__name__}")
        if other.n == 0:
            return self
        self._check_dim(other.dim, "other")
        if self.device is None:
            self.device = other.device
        self._combine(other.n, other._mean.to(self.device), other._m2.to(self.device))
        return self

    def mean(self) -> torch.Tensor:
        """Mean feature vector, shape ``[D]``, float64 (CPU)."""
        if self.n < 1:
            raise ValueError("FeatureStats.mean needs at least 1 feature vector; n is 0")
        return self._mean.cpu()

    def cov(self) -> torch.Tensor:
        """Unbiased covariance ``M2 / (n - 1)``, shape ``[D, D]``, float64 (CPU)."""
        if self.n < 2:
            raise ValueError(f"FeatureStats.cov needs at least 2 feature vectors; n is {self.n}")
        return (self._m2 / (self.n - 1)).cpu()

    def all_reduce(self, group=None) -> "FeatureStats":
        """Merge the accumulators of every process of a ``torch.distributed`` group, in place.

        Every rank ends with the statistics of all features seen by all ranks. Uses
        ``all_gather`` (works with gloo and NCCL; with NCCL, build the accumulator on
        the rank's GPU). ``dim`` must be known on every rank, so pass it to the
        constructor when a rank may see no features. Returns self.
        """
        import torch.distributed as dist

        if self.dim is None:
            raise ValueError("dim must be set (FeatureStats(dim=D)) before all_reduce")
        device = self.device if self.device is not None else torch.device("cpu")
        d = self.dim
        world = dist.get_world_size(group)
        n_local = torch.tensor([float(self.n)], dtype=torch.float64, device=device)
        mean_local = self._mean if self.n else torch.zeros(d, dtype=torch.float64, device=device)
        m2_local = self._m2 if self.n else torch.zeros(d, d, dtype=torch.float64, device=device)
        ns = [torch.empty_like(n_local) for _ in range(world)]
        means = [torch.empty_like(mean_local) for _ in range(world)]
        m2s = [torch.empty_like(m2_local) for _ in range(world)]
        dist.all_gather(ns, n_local, group=group)
        dist.all_gather(means, mean_local.contiguous(), group=group)
        dist.all_gather(m2s, m2_local.contiguous(), group=group)
        self.n, self._mean, self._m2, self.device = 0, None, None, device
        for n_r, mean_r, m2_r in zip(ns, means, m2s):  # same order on every rank
            self._combine(int(n_r.item()), mean_r, m2_r)
        return self

    def state_dict(self) -> dict:
        """Plain dict (CPU tensors) for ``torch.save``; inverse of ``from_state_dict``."""
        return {"n": self.n, "dim": self.dim,
                "mean": None if self._mean is None else self._mean.cpu(),
                "m2": None if self._m2 is None else self._m2.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "FeatureStats":
        stats = cls(dim=state["dim"])
        stats.n, stats._mean, stats._m2 = int(state["n"]), state["mean"], state["m2"]
        if stats.n:
            stats.device = stats._mean.device
        return stats

    def __repr__(self) -> str:
        return f"FeatureStats(n={self.n}, dim={self.dim})"


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    """Yield image batches from a tensor ``[N, C, H, W]`` or an iterable of batches.

    Items of an iterable may be tensors or tuples/lists whose first element is the
    image batch (as a DataLoader over a labelled dataset yields).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must have shape [N, C, H, W], got {list(images.shape)}")
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size]
        return
    for item in images:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor) or item.ndim != 4:
            raise ValueError("images must be a tensor [N, C, H, W] or an iterable of such batches")
        yield item


def _extractor_device(extractor) -> Optional[torch.device]:
    module = extractor if isinstance(extractor, nn.Module) else getattr(extractor, "__self__", None)
    if isinstance(module, nn.Module):
        for p in module.parameters():
            return p.device
    return None


def compute_feature_stats(images, extractor: Extractor, batch_size: int = 256) -> FeatureStats:
    """Feature statistics of an image set.

    Args:
        images: tensor ``[N, C, H, W]`` with values in [0, 1], or an iterable of such
            batches (a generator, a DataLoader), so sets larger than memory stream.
        extractor: callable ``[B, C, H, W] -> [B, D]`` (e.g. ``InceptionFeatures``,
            ``DigitsClassifier().features``); batches are moved to its parameters'
            device and run under ``torch.inference_mode``.
        batch_size: batch size used to slice a tensor ``images``.

    Returns:
        A ``FeatureStats`` with ``n = N``.
    """
    if not callable(extractor):
        raise TypeError(f"extractor must be callable [B, C, H, W] -> [B, D], got {type(extractor).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = _extractor_device(extractor)
    stats = FeatureStats()
    with torch.inference_mode():
        for batch in _batches(images, batch_size):
            if device is not None:
                batch = batch.to(device)
            feats = extractor(batch)
            if feats.ndim != 2 or feats.shape[0] != batch.shape[0]:
                raise ValueError(f"extractor must return features [B, D]; got {list(feats.shape)} "
                                 f"for a batch of {batch.shape[0]}")
            stats.update(feats)
    return stats


def _gaussian(x, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, cov) of FeatureStats, a (mu, sigma) pair, or a feature matrix [N, D]."""
    if isinstance(x, FeatureStats):
        return x.mean(), x.cov()
    if _is_precomputed(x):
        return x[0], x[1]
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 2:
        return _gaussian(FeatureStats().update(torch.as_tensor(x)), name)
    raise TypeError(f"{name} must be a feature matrix [N, D], a FeatureStats or a (mu, sigma) pair")


def _is_precomputed(x) -> bool:
    """FeatureStats or a (mu [D], sigma [D, D]) pair, as opposed to images."""
    if isinstance(x, FeatureStats):
        return True
    return (isinstance(x, (tuple, list)) and len(x) == 2
            and getattr(x[0], "ndim", None) == 1 and getattr(x[1], "ndim", None) == 2)


def fid_from_features(a, b, eps: float = 0.0) -> float:
    """FID between two feature sets.

    Args:
        a, b: each a feature matrix ``[N, D]`` (tensor or array), a ``FeatureStats``,
            or a ``(mu [D], sigma [D, D])`` pair.
        eps: see ``frechet_distance``.
    """
    mu1, s1 = _gaussian(a, "a")
    mu2, s2 = _gaussian(b, "b")
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


def fid(samples, reference, extractor: Extractor, batch_size: int = 256) -> float:
    """Frechet distance between the features of generated and reference images.

    Seed 000 section 7: both image sets go through the feature network and the
    two feature clouds, treated as Gaussians, are compared with ``frechet_distance``.

    Args:
        samples, reference: each a tensor ``[N, C, H, W]`` in [0, 1], an iterable of
            such batches, or precomputed statistics (``FeatureStats`` or a
            ``(mu, sigma)`` pair; e.g. the reference statistics computed once).
        extractor: callable ``[B, C, H, W] -> [B, D]`` (``InceptionFeatures(path)``,
            ``load_digits_classifier().features``, ...).
        batch_size: images per extractor call.
    """
    def stats(x):
        return x if _is_precomputed(x) else compute_feature_stats(x, extractor, batch_size)

    return fid_from_features(stats(samples), stats(reference))


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
            state = torch.load(path, map_location="cpu", weights_only=True)
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
# The digits classifier (the digits themselves: fastncsn.data)
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
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    train_x, train_y, test_x, test_y = digits_split(holdout_fraction, split_seed)
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
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}")
    model.eval()
    model.metadata = {
        "heldout_accuracy": _accuracy(model, test_x, test_y),
        "train_accuracy": _accuracy(model, train_x, train_y),
        "num_heldout": int(test_x.shape[0]),
        "num_train": int(train_x.shape[0]),
        "holdout_fraction": holdout_fraction,
        "split_seed": split_seed,
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "torch_version": str(torch.__version__),
        "command": "python -m fastncsn.metrics --train-digits-classifier "
                   f"--steps {steps} --seed {seed}",
    }
    return model


def save_digits_classifier(model: DigitsClassifier, path: Union[str, Path] = DIGITS_CLASSIFIER_PATH) -> Path:
    """Write ``{"state_dict", "metadata"}`` to ``path`` (float32 weights, ~250 KB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "metadata": dict(model.metadata)}, path)
    return path


def load_digits_classifier(path: Union[str, Path, None] = None,
                           device: Union[str, torch.device, None] = None) -> DigitsClassifier:
    """Load the digits classifier (default: the one shipped in ``fastncsn/assets``).

    Returns a frozen model in eval mode; ``model.metadata["heldout_accuracy"]`` is the
    accuracy measured on the held-out split when it was trained.
    """
    path = DIGITS_CLASSIFIER_PATH if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r}: digits classifier weights not found; create them "
                                f"with  python -m fastncsn.metrics --train-digits-classifier")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitsClassifier()
    model.load_state_dict(blob["state_dict"])
    model.metadata = dict(blob.get("metadata", {}))
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


@functools.lru_cache(maxsize=4)
def _shipped_classifier(device: str) -> DigitsClassifier:
    return load_digits_classifier(device=device)


@functools.lru_cache(maxsize=4)
def _embedded_digits_stats(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    stats = compute_feature_stats(embedded_digits()[0], _shipped_classifier(device).features, 512)
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
    extractor = _shipped_classifier(dev).features
    if reference is None:
        reference = _embedded_digits_stats(dev)
    return fid(samples, reference, extractor, batch_size)


# --------------------------------------------------------------------------- #
# Class histograms with confidence intervals (seed 000, Figures 13-14)
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class ClassHistogram:
    """Predicted-class counts with per-class binomial confidence intervals.

    ``counts``, ``proportions``, ``lower``, ``upper`` are arrays ``[K]``; ``n`` is the
    number of samples; the interval of class k covers its true frequency with
    probability ``confidence`` (each interval on its own; they are not simultaneous).
    """

    counts: np.ndarray
    proportions: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n: int
    confidence: float
    method: str

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    def covers(self, p: float) -> np.ndarray:
        """Boolean ``[K]``: which intervals contain ``p`` (e.g. 1/K for a uniform model)."""
        return (self.lower <= p) & (p <= self.upper)

    def to_markdown(self) -> str:
        """Markdown table: class, count, proportion, interval."""
        pct = int(round(self.confidence * 100))
        rows = [f"| class | count | proportion | {pct}% CI ({self.method}) |", "|---|---|---|---|"]
        for k in range(self.num_classes):
            rows.append(f"| {k} | {int(self.counts[k])} | {self.proportions[k]:.3f} | "
                        f"[{self.lower[k]:.3f}, {self.upper[k]:.3f}] |")
        return "\n".join(rows)


def _binomial_interval(counts: np.ndarray, n: int, confidence: float, method: str):
    alpha = 1.0 - confidence
    k = counts.astype(np.float64)
    if method == "wilson":
        z = statistics.NormalDist().inv_cdf(1.0 - alpha / 2.0)
        denom = n + z * z
        centre = (k + z * z / 2.0) / denom
        half = z / denom * np.sqrt(k * (n - k) / n + z * z / 4.0)
        return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    if method == "clopper-pearson":
        try:
            from scipy.stats import beta
        except ImportError as exc:
            raise ImportError("method='clopper-pearson' needs scipy; use method='wilson'") from exc
        lower = np.where(k > 0, beta.ppf(alpha / 2.0, np.maximum(k, 1), n - k + 1), 0.0)
        upper = np.where(k < n, beta.ppf(1.0 - alpha / 2.0, k + 1, np.maximum(n - k, 1)), 1.0)
        return lower, upper
    raise ValueError(f"method must be 'wilson' or 'clopper-pearson', got {method!r}")


def class_histogram_from_labels(labels, num_classes: int = 10, confidence: float = 0.95,
                                method: str = "wilson") -> ClassHistogram:
    """Class histogram of integer labels ``[N]`` with per-class binomial intervals.

    Methods: ``"wilson"`` (default) -- the Wilson score interval
    ``(k + z^2/2)/(n + z^2) +- z/(n + z^2) sqrt(k(n-k)/n + z^2/4)``, accurate coverage
    even for small counts and never outside [0, 1]; ``"clopper-pearson"`` -- the
    exact (conservative) interval from beta quantiles (needs scipy).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    labels = torch.as_tensor(labels).reshape(-1).to("cpu", torch.int64)
    if labels.numel() == 0:
        raise ValueError("labels must not be empty")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] (num_classes={num_classes})")
    counts = torch.bincount(labels, minlength=num_classes).numpy()
    n = int(labels.numel())
    lower, upper = _binomial_interval(counts, n, confidence, method)
    return ClassHistogram(counts=counts, proportions=counts / n, lower=lower, upper=upper,
                          n=n, confidence=confidence, method=method)


def class_histogram(samples, classifier: Optional[nn.Module] = None, num_classes: int = 10,
                    confidence: float = 0.95, method: str = "wilson",
                    batch_size: int = 512) -> ClassHistogram:
    """Distribution of the predicted classes of generated samples (seed 000, Figures 13-14).

    Args:
        samples: images ``[N, C, H, W]`` (or an iterable of batches) in [0, 1].
        classifier: module returning logits ``[B, num_classes]``; default: the shipped
            digits classifier (for 28x28 digits).
        num_classes: number of classes K.
        confidence: coverage of each per-class interval (e.g. 0.95).
        method: ``"wilson"`` or ``"clopper-pearson"`` (see ``class_histogram_from_labels``).
        batch_size: images per classifier call.

    Returns:
        ``ClassHistogram`` (counts, proportions, lower, upper: ``[K]``). In seed 000 the
        question is which classes' intervals contain the uniform 1/K (``hist.covers(0.1)``).
    """
    if classifier is None:
        classifier = _shipped_classifier("cpu")
    device = _extractor_device(classifier)
    labels = []
    with torch.inference_mode():
        for batch in _batches(samples, batch_size):
            logits = classifier(batch.to(device) if device is not None else batch)
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(f"classifier must return logits [B, {num_classes}], "
                                 f"got {list(logits.shape)}")
            labels.append(logits.argmax(dim=1).cpu())
    if not labels:
        raise ValueError("samples must not be empty")
    return class_histogram_from_labels(torch.cat(labels), num_classes, confidence, method)


def plot_class_histogram(hist: ClassHistogram, path: Union[str, Path], title: Optional[str] = None,
                         class_names: Optional[list] = None) -> Path:
    """Bar chart of class proportions with their intervals and the uniform 1/K line, as PNG.

    Needs matplotlib (``pip install fastncsn[plots]``); imported only here.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_class_histogram needs matplotlib (pip install matplotlib)") from exc
    k = hist.num_classes
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names must have {k} entries, got {len(names)}")
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    yerr = np.stack([hist.proportions - hist.lower, hist.upper - hist.proportions])
    ax.bar(np.arange(k), hist.proportions, yerr=yerr, capsize=3, color="#4c72b0",
           label=f"{int(round(hist.confidence * 100))}% interval ({hist.method})")
    ax.axhline(1.0 / k, color="#c44e52", linestyle="--", linewidth=1, label=f"uniform (1/{k})")
    ax.set_xticks(np.arange(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("proportion of samples")
    ax.set_title(title if title is not None else f"Predicted classes (n = {hist.n})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- #
# Command line: python -m fastncsn.metrics --train-digits-classifier
# --------------------------------------------------------------------------- #
def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastncsn.metrics",
                                     description="Metrics utilities for fastncsn.")
    parser.add_argument("--train-digits-classifier", action="store_true",
                        help="train the digits classifier and write its weights")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DIGITS_CLASSIFIER_PATH),
                        help="where to write the weights (default: the packaged asset)")
    args = parser.parse_args(argv)
    if not args.train_digits_classifier:
        parser.print_help()
        return 2
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    model = train_digits_classifier(steps=args.steps, seed=args.seed, log_every=500)
    path = save_digits_classifier(model, args.output)
    meta = model.metadata
    print(f"held-out accuracy {meta['heldout_accuracy']:.4f} on {meta['num_heldout']} digits, "
          f"train accuracy {meta['train_accuracy']:.4f}; wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
