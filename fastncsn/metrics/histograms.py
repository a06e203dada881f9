"""Class histograms of generated samples with per-class confidence intervals (seed 000, Figures 13-14).

``class_histogram`` labels samples with a classifier (default: the shipped digits
classifier) and counts the predicted classes; ``class_histogram_from_labels`` does
the counting and the binomial intervals (Wilson or Clopper-Pearson);
``plot_class_histogram`` draws the bars, the intervals and the uniform 1/K line.
"""
from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .extractors import shipped_digits_classifier
from .fid import extractor_device, image_batches

__all__ = ["ClassHistogram", "class_histogram", "class_histogram_from_labels", "plot_class_histogram"]


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
        classifier = shipped_digits_classifier("cpu")
    device = extractor_device(classifier)
    labels = []
    with torch.inference_mode():
        for batch in image_batches(samples, batch_size):
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
    from ..images import save_figure
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, str(path), dpi=120)
    plt.close(fig)
    return path
