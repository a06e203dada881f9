"""Triton kernels of fastncsn (installed as ``fastncsn.kernels``).

Backend module of ``fastncsn.ops`` (``backend="triton"``); models and samplers
call ``fastncsn.ops``, not this module.  Files:

* ``cond_instance_norm.py`` -- CIN++ forward/backward kernels and their launches;
* ``langevin.py`` -- the Langevin step with in-kernel Philox noise;
* ``library.py`` -- the ``torch.library`` custom ops ``fastncsn::cin_plus_fwd``,
  ``fastncsn::cin_plus_bwd`` and ``fastncsn::langevin_step_``.

The kernels run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1``
was set before this package was imported (slow; that is how CI tests them).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastncsn.reference import ACTIVATIONS, CIN_EPS, _check_cin_args

try:
    import triton  # noqa: F401
    from . import library as _library
    from .cond_instance_norm import interpreting
    from .langevin import is_dense, launch_langevin_noise
    _IMPORT_ERROR = ""
except Exception as exc:  # triton missing or failing to initialise
    _library = None
    _IMPORT_ERROR = f"triton could not be imported ({type(exc).__name__}: {exc}); install it with `pip install triton`"

__all__ = ["available", "cond_instance_norm_plus", "langevin_step_", "langevin_noise"]


def available(device: torch.device | str) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors of ``device``: ``(ok, reason if not)``."""
    device = torch.device(device)
    if _library is None:
        return False, _IMPORT_ERROR
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "torch.cuda.is_available() is False"
        return True, ""
    if device.type == "cpu":
        if interpreting():
            return True, ""
        return False, ("the Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                       "before fastncsn.kernels is imported (the interpreter; slow, for tests)")
    return False, f"no Triton kernels for {device.type} tensors"


def _require(device: torch.device) -> None:
    ok, reason = available(device)
    if not ok:
        raise RuntimeError(f"fastncsn.kernels: unavailable for {device} tensors: {reason}")


def _same_device(device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (x's device), got {t.device}")


def cond_instance_norm_plus(x: torch.Tensor, level_index: torch.Tensor, weight: torch.Tensor,
                            eps: float = CIN_EPS, activation: Optional[str] = None) -> torch.Tensor:
    """Conditional instance norm++ (NCSN appendix A) with an optional fused ELU, by Triton kernels.

    Shapes: ``x`` ``[N, C, H, W]`` fp32/bf16/fp16 (fp64 computes in fp64), NCHW or
    channels-last (the output keeps the layout); ``level_index`` ``[N]`` int32/int64
    with values in ``[0, L)`` (not checked on the device); ``weight`` ``[L, 3C]``
    (gamma | alpha | beta) or ``[L, 2C]``.  Statistics in fp32.  Formula: see
    ``fastncsn.reference.cond_instance_norm_plus_ref``.  Differentiable in ``x``
    and ``weight``; the backward is deterministic.
    """
    _check_cin_args(x, level_index, weight, activation)
    _require(x.device)
    _same_device(x.device, level_index=level_index, weight=weight)
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    out, _, _ = torch.ops.fastncsn.cin_plus_fwd(x, level_index, weight, float(eps),
                                                "none" if activation is None else activation)
    return out


def _scalar_tensor(v, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name}: expected one element, got shape {tuple(v.shape)}")
        if v.dtype != dtype:
            raise TypeError(f"{name}: expected a {dtype} tensor, got {v.dtype}")
        _same_device(device, **{name: v})
        return v.reshape(())
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a one-element {dtype} tensor, got {type(v).__name__}")
    return torch.tensor(v, dtype=dtype, device=device)


def langevin_step_(x: torch.Tensor, score: torch.Tensor, step_size, seed, offset,
                   mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
                   clamp: Optional[tuple] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In place: ``x <- x + a/2 * score + sqrt(a) * z`` (NCSN eq. 4), then the inpainting
    blend ``x <- known where mask`` and ``clamp``; returns ``x``.

    ``z`` is drawn inside the kernel from Philox(``seed``, ``offset``): the element at
    storage position ``e`` uses counter ``offset + e // 4`` (the stream of
    ``fastncsn.reference.langevin_noise_ref``); advance ``offset`` by
    ``fastncsn.reference.langevin_noise_counters(x.numel())`` per step.  With
    ``noise`` given, that tensor is added instead (``seed``/``offset`` may be None).

    Args:
        x: ``[N, ...]`` state, contiguous or channels-last (fp32 in the samplers).
        score: same shape as ``x``, fp32/bf16/fp16.
        step_size: ``a``: a 0-d/1-element tensor or a ``[N]`` tensor (one per sample),
            read on the device (CUDA-graph safe); a Python float is copied to a tensor.
        seed, offset: int64 one-element tensors on ``x``'s device (graph safe), or ints.
        mask: optional, shape of ``x`` or of one sample; nonzero keeps ``known``.
        known: required with ``mask``; shape of ``x`` or of one sample.
        clamp: optional ``(lo, hi)`` (either may be None).
        noise: optional explicit noise, shape of ``x``.
    """
    _require(x.device)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point tensor [N, ...]")
    if not is_dense(x):
        raise ValueError("x: expected a contiguous or channels-last tensor (the update is in place)")
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        raise ValueError(f"score: expected a tensor of shape {tuple(x.shape)}, "
                         f"got {tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(step_size, torch.Tensor):
        if step_size.numel() != 1 and step_size.shape != (x.shape[0],):
            raise ValueError(f"step_size: expected one element or shape [{x.shape[0]}], got {tuple(step_size.shape)}")
        _same_device(x.device, step_size=step_size)
    else:
        step_size = torch.tensor(float(step_size), dtype=acc, device=x.device)
    if noise is None:
        seed = _scalar_tensor(seed, "seed", torch.int64, x.device)
        offset = _scalar_tensor(offset, "offset", torch.int64, x.device)
    else:
        if noise.shape != x.shape:
            raise ValueError(f"noise: expected shape {tuple(x.shape)}, got {tuple(noise.shape)}")
        seed = offset = torch.zeros((), dtype=torch.int64, device=x.device)
    if (mask is None) != (known is None):
        raise ValueError("mask, known: pass both or neither")
    _same_device(x.device, score=score, noise=noise, mask=mask, known=known)
    lo, hi = (None, None) if clamp is None else clamp
    torch.ops.fastncsn.langevin_step_(x, score, step_size, seed, offset, noise, mask, known,
                                      None if lo is None else float(lo), None if hi is None else float(hi))
    return x


def langevin_noise(seed, offset, like: torch.Tensor) -> torch.Tensor:
    """The noise ``langevin_step_`` adds to a state laid out like ``like`` with this ``seed``/``offset``,
    written by a Triton kernel (float32, ``like``'s shape and strides).  For tests."""
    _require(like.device)
    out = torch.empty_like(like if is_dense(like) else like.contiguous(), dtype=torch.float32)
    return launch_langevin_noise(_scalar_tensor(seed, "seed", torch.int64, like.device),
                                 _scalar_tensor(offset, "offset", torch.int64, like.device), out)
