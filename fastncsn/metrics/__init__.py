"""Sample-quality metrics: Frechet distance (FID), feature extractors, class histograms.

In the order data flows through them:

* :mod:`.fid` -- ``FeatureStats`` (streaming float64 mean and covariance, mergeable
  across batches and processes), ``frechet_distance`` (seed 000 section 7, through
  symmetric eigendecompositions only), ``compute_feature_stats``,
  ``fid_from_features`` and ``fid`` under any feature extractor (a callable
  ``images [N, C, H, W] in [0, 1] -> features [N, D]``).
* :mod:`.extractors` -- ``InceptionFeatures`` (Inception-v3 pool3, 2048-d, from a
  torchvision weights file the user supplies) and ``DigitsClassifier`` (a small CNN
  trained on the embedded digits of :mod:`fastncsn.data`, shipped as
  ``fastncsn/assets/digits_classifier.pt``) with its trainer, save/load and
  ``digits_fid``; the same network trained on MNIST (``mnist_classifier.pt``,
  ``train_mnist_classifier``, ``load_mnist_classifier``, ``mnist_fid``: MNIST-FID).
* :mod:`.fid_run` -- ``reference_stats`` / ``save_stats`` / ``load_stats`` (reference
  statistics files) and ``fid_of_checkpoint``: FID of 50k samples in seeded, atomically
  written shards (resumable, sharded over ``torchrun`` ranks).
* :mod:`.histograms` -- ``class_histogram`` / ``plot_class_histogram``: the
  predicted-class distribution of generated samples with per-class confidence
  intervals (seed 000, Figures 13-14).

The digits themselves (``embedded_digits``, ``digits_split``, ``mnist_tensor``) live in
:mod:`fastncsn.data`. The shipped classifiers are (re)trained with::

    python -m fastncsn.metrics --train-digits-classifier
    python -m fastncsn.metrics --train-mnist-classifier
"""
from __future__ import annotations

from .extractors import (ASSETS_DIR, DIGITS_CLASSIFIER_PATH, MNIST_CLASSIFIER_PATH, DigitsClassifier,
                         InceptionFeatures, digits_fid, load_digits_classifier, load_mnist_classifier, mnist_fid,
                         save_digits_classifier, shipped_digits_classifier, shipped_mnist_classifier,
                         train_digits_classifier, train_mnist_classifier)
from .fid_run import fid_of_checkpoint, load_stats, reference_stats, save_stats
from .fid import FeatureStats, compute_feature_stats, fid, fid_from_features, frechet_distance
from .histograms import ClassHistogram, class_histogram, class_histogram_from_labels, plot_class_histogram
from .intervals import fid_bootstrap, seed_interval

__all__ = [
    "frechet_distance",
    "FeatureStats",
    "compute_feature_stats",
    "fid_from_features",
    "fid",
    "fid_bootstrap",
    "seed_interval",
    "reference_stats",
    "save_stats",
    "load_stats",
    "fid_of_checkpoint",
    "InceptionFeatures",
    "DigitsClassifier",
    "train_digits_classifier",
    "save_digits_classifier",
    "load_digits_classifier",
    "shipped_digits_classifier",
    "digits_fid",
    "train_mnist_classifier",
    "load_mnist_classifier",
    "shipped_mnist_classifier",
    "mnist_fid",
    "ClassHistogram",
    "class_histogram",
    "class_histogram_from_labels",
    "plot_class_histogram",
    "ASSETS_DIR",
    "DIGITS_CLASSIFIER_PATH",
    "MNIST_CLASSIFIER_PATH",
]
