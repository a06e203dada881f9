"""fastncsn: fast, tested Noise Conditional Score Networks for PyTorch.

The public API is short:

* ``fastncsn.sample(model=None, n=64, ...)`` -- annealed Langevin samples
  (the bundled digits model when ``model`` is None);
* ``fastncsn.train(...)``                   -- denoising score matching training;
* ``fastncsn.load(path, **config)`` / ``fastncsn.save(model, path, ...)``;
* ``fastncsn.models``, ``fastncsn.schedules`` -- networks and noise ladders.

Importing fastncsn never touches CUDA; heavy submodules load on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY_FUNCS = {
    "sample": ("fastncsn.sampling.api", "sample"),
    "train": ("fastncsn.training", "train"),
    "load": ("fastncsn.checkpoint", "load"),
    "save": ("fastncsn.checkpoint", "save"),
}
_LAZY_MODULES = ("models", "schedules", "sampling", "losses", "toy", "ops", "nn",
                 "data", "training", "checkpoint", "metrics")

__all__ = ["sample", "train", "load", "save", "models", "schedules", "__version__"]


def __getattr__(name):
    if name in _LAZY_FUNCS:
        mod, attr = _LAZY_FUNCS[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"fastncsn.{name}")
    raise AttributeError(f"module 'fastncsn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_FUNCS) + list(_LAZY_MODULES))
