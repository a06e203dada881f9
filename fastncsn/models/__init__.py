"""Score networks.

Every model follows one contract: ``forward(x, level_index) -> score`` (same
shape as ``x``), a float32 buffer ``sigmas`` (the decreasing noise ladder it is
trained for), a JSON-serialisable ``config`` dict of constructor arguments, a
``data_shape`` tuple, and registration in ``MODEL_REGISTRY`` so checkpoints can
rebuild it by class name.
"""
from __future__ import annotations

MODEL_REGISTRY: dict = {}


def register(cls):
    """Class decorator: make ``cls`` loadable from checkpoints by its name."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


def __getattr__(name):
    # lazy: importing fastncsn.models must stay cheap and never touch CUDA
    if name in ("CondRefineNetDilated",):
        from .refinenet import CondRefineNetDilated
        return CondRefineNetDilated
    if name in ("NCSNv2",):
        from .ncsnv2 import NCSNv2
        return NCSNv2
    if name in ("ToyScoreNet",):
        from ..toy import ToyScoreNet
        return ToyScoreNet
    raise AttributeError(f"module 'fastncsn.models' has no attribute {name!r}")


def get_model_class(name: str):
    """Return the registered class ``name`` (importing the model modules first)."""
    import importlib
    for mod in ("fastncsn.models.refinenet", "fastncsn.models.ncsnv2", "fastncsn.toy"):
        importlib.import_module(mod)  # registration side effect
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model class: expected one of {sorted(MODEL_REGISTRY)}, got {name!r}")
    return MODEL_REGISTRY[name]
