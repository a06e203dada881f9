"""Helpers shared by the op files and both fast backends (``triton/``, ``cuda.py``).

One copy of each: the device check of the tensor arguments, the int64 scalar tensors
(Philox seed and offset), the dense layouts the kernels read and write, and the
"backend unavailable" error of a backend function called directly, and the switch between
Triton and reference math in the CPU kernels of the ``torch.ops.fastncsn`` custom ops.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

__all__ = ["check_same_device", "scalar_tensor", "is_dense", "dense_format", "acc_dtype", "require",
           "CPU_IMPL", "cpu_runs_triton", "cpu_impl", "triton_interpreting"]


def check_same_device(device: torch.device, **tensors) -> None:
    """Raise ``ValueError`` naming the first tensor argument that is not on ``device`` (``None``s are skipped)."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (x's device), got {t.device}")


def scalar_tensor(v, name: str, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A 0-d ``dtype`` tensor on ``device`` from a Python int or a one-element tensor (a tensor is kept
    as is, not copied: a seed/offset tensor advanced on the device stays CUDA-graph safe)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name}: expected one element, got shape {tuple(v.shape)}")
        if v.dtype != dtype:
            raise TypeError(f"{name}: expected a {dtype} tensor, got {v.dtype}")
        check_same_device(device, **{name: v})
        return v.reshape(())
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a one-element {dtype} tensor, got {type(v).__name__}")
    return torch.tensor(v, dtype=dtype, device=device)


def is_dense(x: torch.Tensor) -> bool:
    """Contiguous, or channels-last contiguous (4-D): the layouts the kernels read without a copy."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def dense_format(x: torch.Tensor) -> torch.memory_format:
    """Memory format of an output/gradient made from ``x``: channels-last when ``x`` is channels-last
    dense and not also plain contiguous, else contiguous.  Kernels and fake kernels use this rule
    (``csrc/ops.cpp`` too)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the statistics (``mu``, ``rstd``) and of all in-kernel arithmetic for an input dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def require(available: Callable[[torch.device], tuple[bool, str]], what: str, device: torch.device) -> None:
    """Raise ``RuntimeError`` with the reason when ``available(device)`` says the backend cannot run."""
    ok, reason = available(device)
    if not ok:
        raise RuntimeError(f"{what}: unavailable for {device} tensors: {reason}")


# --------------------------------------------------------------------------- CPU kernels of the custom ops

#: what the CPU kernels of the ``torch.ops.fastncsn`` custom ops run: "auto" | "triton" | "reference".
#: "auto" (default) runs the Triton kernels when they were built by the interpreter
#: (``TRITON_INTERPRET=1``: that is how CI checks them) and the PyTorch reference math otherwise;
#: "triton" and "reference" force one of the two (tests use this to check both registrations).
CPU_IMPL = "auto"


def triton_interpreting() -> bool:
    """True when triton imports and its kernels are built by the interpreter (``TRITON_INTERPRET=1``)."""
    try:
        from .triton.cond_instance_norm import interpreting
    except Exception:  # triton missing or failing to initialise
        return False
    return interpreting()


def cpu_runs_triton() -> bool:
    """Whether the CPU kernels of the custom ops launch the Triton kernels (else the reference math)."""
    if CPU_IMPL not in ("auto", "triton", "reference"):
        raise ValueError(f"CPU_IMPL: expected 'auto', 'triton' or 'reference', got {CPU_IMPL!r}")
    return CPU_IMPL == "triton" or (CPU_IMPL == "auto" and triton_interpreting())


@contextlib.contextmanager
def cpu_impl(name: str):
    """Temporarily set ``CPU_IMPL`` (``"auto" | "triton" | "reference"``)."""
    global CPU_IMPL
    old, CPU_IMPL = CPU_IMPL, name
    try:
        cpu_runs_triton()
        yield
    finally:
        CPU_IMPL = old
