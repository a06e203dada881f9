"""Score networks.

Every model follows one contract: ``forward(x, level_index) -> score`` (same
shape as ``x``), a float32 buffer ``sigmas`` (the decreasing noise ladder it is
trained for), a JSON-serialisable ``config`` dict of constructor arguments, a
``data_shape`` tuple, and registration in ``MODEL_REGISTRY`` so checkpoints can
rebuild it by class name
(:mod:`fastncsn.models.registry`; the toy models of :mod:`fastncsn.toy` register there too).
"""
from __future__ import annotations

from .registry import MODEL_REGISTRY, get_model_class, register

__all__ = ["MODEL_REGISTRY", "get_model_class", "register", "CondRefineNetDilated", "NCSNv2"]


def __getattr__(name):
    # lazy: importing fastncsn.models must stay cheap and never touch CUDA
    if name in ("CondRefineNetDilated",):
        from .refinenet import CondRefineNetDilated
        return CondRefineNetDilated
    if name in ("NCSNv2",):
        from .ncsnv2 import NCSNv2
        return NCSNv2
    raise AttributeError(f"module 'fastncsn.models' has no attribute {name!r}")

