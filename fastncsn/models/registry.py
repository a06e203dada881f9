"""The model registry: score-model classes by name, so checkpoints can rebuild them.

A leaf module (it imports no model module at import time): model modules, the
toy models included, import :func:`register` from here.
"""
from __future__ import annotations

import importlib

MODEL_REGISTRY: dict = {}

#: modules whose import registers their models (imported by name on the first lookup)
MODEL_MODULES = ("fastncsn.models.refinenet", "fastncsn.models.ncsnv2", "fastncsn.toy")


def register(cls):
    """Class decorator: make ``cls`` loadable from checkpoints by its name."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


def get_model_class(name: str):
    """Return the registered class ``name`` (importing the model modules first)."""
    for mod in MODEL_MODULES:
        importlib.import_module(mod)  # registration side effect
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model class: expected one of {sorted(MODEL_REGISTRY)}, got {name!r}")
    return MODEL_REGISTRY[name]
