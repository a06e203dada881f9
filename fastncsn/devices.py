"""Device arguments: one check shared by :func:`fastncsn.sample` and the ``fastncsn`` command.

Accepted forms: ``None`` (the caller's default), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a
``torch.device`` of those types.  A CUDA device on a machine without CUDA, an index
beyond the device count, or any other name (``"gpu"``, ``"cuda:x"``) raises a
``ValueError`` naming the argument -- before anything is loaded or computed.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["DEVICE_FORMS", "check_device"]

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
