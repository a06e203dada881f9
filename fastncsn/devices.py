"""Device helpers: one check of a device argument (:func:`fastncsn.sample`, the ``fastncsn`` command)
and the device/graphs resolution shared by the CUDA-graph executors (the graph sampler and the
whole-step training graph).

Accepted device forms: ``None`` (the caller's default), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
``torch.device`` of those types.  A CUDA device on a machine without CUDA, an index
beyond the device count, or any other name (``"gpu"``, ``"cuda:x"``) raises a
``ValueError`` naming the argument -- before anything is loaded or computed.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["DEVICE_FORMS", "check_device", "resolve_graph_device"]

DEVICE_FORMS = "'cpu', 'cuda' or 'cuda:N'"


def check_device(device, name: str = "device") -> Optional[torch.device]:
    """``device`` as a ``torch.device`` (``None`` stays ``None``) if it can be used here, else ``ValueError``."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            dev = None
    else:
        raise TypeError(f"{name}: expected {DEVICE_FORMS} (a str or torch.device), got {type(device).__name__}")
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected {DEVICE_FORMS}, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {device!r} requested but CUDA is not available here "
                             "(torch.cuda.is_available() is False); use 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{name}: {device!r} requested but this machine has {count} CUDA device(s) "
                             f"(cuda:0..cuda:{count - 1})")
    return dev


def resolve_graph_device(device, use_graphs: Optional[bool]) -> tuple:
    """``(device, use_graphs)``: ``device`` with its CUDA index filled in (the current device) and
    ``use_graphs`` defaulted to "on CUDA devices".

    Raises:
        ValueError: naming ``use_graphs`` when graphs are asked for off CUDA.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if use_graphs is None:
        use_graphs = device.type == "cuda"
    if use_graphs and device.type != "cuda":
        raise ValueError(f"use_graphs: CUDA graphs need a CUDA device, got {device}")
    return device, bool(use_graphs)
