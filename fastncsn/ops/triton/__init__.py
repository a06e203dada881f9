"""Triton backend of ``fastncsn.ops`` (``backend="triton"``).

Models and samplers call ``fastncsn.ops``, not this package.  Files:

* ``cond_instance_norm.py`` -- CIN++ forward/backward kernels and their launches;
* ``langevin.py`` -- the Langevin step with in-kernel Philox noise;
* ``avg_pool.py`` -- the 5x5 stride-1 average pool of the chained residual pooling.

The custom ops that run these launches (``torch.ops.fastncsn.cin_plus_fwd``,
``cin_plus_bwd``, ``langevin_step_``, ``avg_pool5x5``) are registered by the op files
``fastncsn/ops/cond_instance_norm.py``, ``langevin.py`` and ``avg_pool.py``; the argument
checks are theirs too.

The kernels run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1``
was set before triton was imported (slow; that is how CI tests them).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..avg_pool import check_pool_args
from ..common import acc_dtype, is_dense, require, scalar_tensor
from ..cond_instance_norm import CIN_EPS, run_backend_forward, run_glue_forward
from ..langevin import check_step_args

try:
    import triton  # noqa: F401
    from .cond_instance_norm import interpreting
    from .langevin import launch_langevin_noise
    IMPORT_ERROR = ""
except Exception as exc:  # triton missing or failing to initialise
    IMPORT_ERROR = f"triton could not be imported ({type(exc).__name__}: {exc}); install it with `pip install triton`"

#: the dtypes of ``x`` the CIN++ kernels take (fp64 computes in fp64: for gradcheck)
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

#: the dtypes of ``x`` the pool kernel takes (fp64 computes in fp64: for gradcheck)
POOL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

__all__ = ["available", "cond_instance_norm_plus", "cin_plus_glue", "langevin_step_", "langevin_noise", "avg_pool5x5"]


def available(device: torch.device | str) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors of ``device``: ``(ok, reason if not)``."""
    device = torch.device(device)
    if IMPORT_ERROR:
        return False, IMPORT_ERROR
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "torch.cuda.is_available() is False"
        return True, ""
    if device.type == "cpu":
        if interpreting():
            return True, ""
        return False, ("the Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                       "before triton is imported (the interpreter; slow, for tests)")
    return False, f"no Triton kernels for {device.type} tensors"


def cond_instance_norm_plus(x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor,
                            eps: float = CIN_EPS, activation: Optional[str] = None) -> torch.Tensor:
    """Conditional instance norm++ (NCSN appendix A) with an optional fused ELU, by Triton kernels.

    Shapes: ``x`` ``[N, C, H, W]`` fp32/bf16/fp16 (fp64 computes in fp64), NCHW or
    channels-last (the output keeps the layout); ``level`` ``[N]`` int32/int64
    with values in ``[0, L)`` (not checked on the device); ``weight`` ``[L, 3C]``
    (gamma | alpha | beta) or ``[L, 2C]``.  Statistics in fp32.  Formula: see
    ``fastncsn.ops.cond_instance_norm_plus_ref``.  Differentiable in ``x``
    and ``weight``; the backward is deterministic.
    """
    return run_backend_forward("fastncsn", x, level, weight, eps, activation,
                               available, "fastncsn.ops.triton", DTYPES)


def cin_plus_glue(x: torch.Tensor, residual: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                  level: torch.Tensor, weight: torch.Tensor, eps: float = CIN_EPS,
                  activation: Optional[str] = None) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """CIN++ with the glue fused, by Triton kernels: ``(s, out)`` with ``s = x + residual`` (None
    without a residual) and ``out = CIN++((x + residual) + bias)`` (each term optional).  The
    public forms are ``fastncsn.ops.cond_instance_norm_plus(..., bias=)`` and
    ``fastncsn.ops.add_cond_instance_norm_plus``; shapes and dtypes as ``cond_instance_norm_plus``."""
    return run_glue_forward(x, residual, bias, level, weight, eps, activation,
                            available, "fastncsn.ops.triton", DTYPES)


def langevin_step_(x: torch.Tensor, score: torch.Tensor, step_size, seed, offset,
                   mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
                   clamp: Optional[tuple] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In place: ``x <- x + a/2 * score + sqrt(a) * z`` (NCSN eq. 4), then the inpainting
    blend ``x <- known where mask`` and ``clamp``; returns ``x``.

    ``z`` is drawn inside the kernel from Philox(``seed``, ``offset``): the element at
    storage position ``e`` uses counter ``offset + e // 4`` (the stream of
    ``fastncsn.ops.langevin_noise_ref``); advance ``offset`` by
    ``fastncsn.ops.langevin_noise_counters(x.numel())`` per step.  With
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
    require(available, "fastncsn.ops.triton", x.device)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point tensor [N, ...]")
    if not is_dense(x):
        raise ValueError("x: expected a contiguous or channels-last tensor (the update is in place)")
    step_size, seed, offset = check_step_args(x, score, step_size, seed, offset, noise, mask, known,
                                              acc_dtype(x.dtype))
    lo, hi = (None, None) if clamp is None else clamp
    torch.ops.fastncsn.langevin_step_(x, score, step_size, seed, offset, noise, mask, known,
                                      None if lo is None else float(lo), None if hi is None else float(hi))
    return x


def langevin_noise(seed, offset, like: torch.Tensor) -> torch.Tensor:
    """The noise ``langevin_step_`` adds to a state laid out like ``like`` with this ``seed``/``offset``,
    written by a Triton kernel (float32, ``like``'s shape and strides).  For tests."""
    require(available, "fastncsn.ops.triton", like.device)
    out = torch.empty_like(like if is_dense(like) else like.contiguous(), dtype=torch.float32)
    return launch_langevin_noise(scalar_tensor(seed, "seed", like.device),
                                 scalar_tensor(offset, "offset", like.device), out)


def avg_pool5x5(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 5, stride=1, padding=2)`` (``count_include_pad=True``) by one Triton kernel
    that reads ``x`` once and writes the output once (``fastncsn.ops.triton.avg_pool``).

    Shapes: ``x`` ``[N, C, H, W]`` fp32/bf16/fp16 (fp64 computes in fp64), NCHW or channels-last
    (the output keeps the layout).  Sums in fp32.  Formula: ``fastncsn.ops.avg_pool5x5_ref``.
    Differentiable (the backward is the same pool of ``grad_out``).
    """
    check_pool_args(x)
    require(available, "fastncsn.ops.triton", x.device)
    if x.dtype not in POOL_DTYPES:
        raise ValueError(f"x: expected a tensor of dtype {', '.join(str(d) for d in POOL_DTYPES)}, got {x.dtype}")
    return torch.ops.fastncsn.avg_pool5x5(x)
