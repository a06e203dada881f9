"""CUDA C++ backend of ``fastncsn.ops`` (``backend="cuda"``): wrappers over ``fastncsn._C``.

``fastncsn._C`` is built from ``csrc/`` by ``pip install --no-build-isolation .``
on a machine with CUDA (see ``build_ext_config.py``); loading it registers the
custom ops ``torch.ops.fastncsn_cuda``:

* ``cin_plus_fwd(x, level_index, weight, eps, activation, plan=-1) -> (out, mu, rstd)``
* ``cin_plus_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation, plan=-1) -> (grad_x, grad_weight)``
* ``langevin_step_(x!, score, step_size, seed, offset, noise?, mask?, known?, clamp_lo?, clamp_hi?)``
* ``langevin_noise(seed, offset, like) -> noise``

(schemas in ``csrc/ops.cpp``; ``plan``: -1 automatic, 0 one fused launch, 1 the
split two-launch plan).  This module adds their fake kernels (so
``torch.compile`` treats them as opaque ops) and the autograd of
``cin_plus_fwd``, and exposes the same functions as the Triton backend
(``fastncsn.kernels``).  Importing it never fails: without the extension,
``available(device)`` is ``(False, <how to build it>)``.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from fastncsn.reference import CIN_EPS, _check_cin_args

__all__ = ["available", "cond_instance_norm_plus", "langevin_step_", "langevin_noise", "REBUILD_HINT"]

REBUILD_HINT = ("fastncsn._C is not built: reinstall on a CUDA machine with "
                "`pip install --no-build-isolation .` (FASTNCSN_BUILD_CUDA=1 to force)")

try:
    _C = importlib.import_module("fastncsn._C")  # loading the library registers torch.ops.fastncsn_cuda
    _IMPORT_ERROR = ""
except ImportError as _exc:
    _C = None
    if isinstance(_exc, ModuleNotFoundError) and _exc.name == "fastncsn._C":
        _IMPORT_ERROR = REBUILD_HINT
    else:  # built, but does not load (e.g. for another torch): rebuild
        _IMPORT_ERROR = f"fastncsn._C could not be loaded ({_exc}); " + REBUILD_HINT.split(": ", 1)[1]

#: the dtypes the CUDA kernels take for activations (x, score)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available(device: torch.device | str) -> tuple[bool, str]:
    """Whether the CUDA extension can run on tensors of ``device``: ``(ok, reason if not)``."""
    device = torch.device(device)
    if _C is None:
        return False, _IMPORT_ERROR
    if device.type != "cuda":
        return False, f"the CUDA extension runs on CUDA tensors only, not {device.type} tensors"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    return True, ""


def _require(device: torch.device) -> None:
    ok, reason = available(device)
    if not ok:
        raise RuntimeError(f"fastncsn.cuda_ops: unavailable for {device} tensors: {reason}")


def _on_device(device: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (x's device), got {t.device}")


def _dense_format(x: torch.Tensor) -> torch.memory_format:
    """Layout of outputs made from ``x``: channels-last when ``x`` is channels-last dense and not contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def cond_instance_norm_plus(x: torch.Tensor, level_index: torch.Tensor, weight: torch.Tensor,
                            eps: float = CIN_EPS, activation: Optional[str] = None) -> torch.Tensor:
    """Conditional instance norm++ (NCSN appendix A) with an optional fused ELU, by the CUDA extension.

    Shapes: ``x`` ``[N, C, H, W]`` fp32/bf16/fp16, NCHW or channels-last (the output
    keeps the layout); ``level_index`` ``[N]`` int32/int64 with values in ``[0, L)``
    (not checked on the device); ``weight`` ``[L, 3C]`` (gamma | alpha | beta) or
    ``[L, 2C]``.  Statistics in fp32.  Formula: see
    ``fastncsn.reference.cond_instance_norm_plus_ref``.  Differentiable in ``x``
    and ``weight``; forward and backward are deterministic (bitwise).
    """
    _check_cin_args(x, level_index, weight, activation)
    _require(x.device)
    _on_device(x.device, level_index=level_index, weight=weight)
    if x.dtype not in DTYPES:
        raise TypeError(f"x: expected a float32, bfloat16 or float16 tensor, got {x.dtype}")
    out, _, _ = torch.ops.fastncsn_cuda.cin_plus_fwd(x, level_index, weight, float(eps),
                                                     "none" if activation is None else activation)
    return out


def _counter(v, name: str, device: torch.device) -> torch.Tensor:
    """A 0-d int64 tensor on ``device`` from an int or a one-element int64 tensor (kept as is: graph safe)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.dtype != torch.int64:
            raise TypeError(f"{name}: expected a one-element int64 tensor, got {v.dtype} of shape {tuple(v.shape)}")
        _on_device(device, **{name: v})
        return v.reshape(())
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{name}: expected an int or a one-element int64 tensor, got {type(v).__name__}")
    return torch.tensor(v, dtype=torch.int64, device=device)


def langevin_step_(x: torch.Tensor, score: torch.Tensor, step_size, seed, offset,
                   mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
                   clamp: Optional[tuple] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In place: ``x <- x + a/2 * score + sqrt(a) * z`` (NCSN eq. 4), then ``x <- known where
    mask`` and ``clamp``; returns ``x``.  Same contract as ``fastncsn.kernels.langevin_step_``.

    ``z`` is drawn inside the kernel from Philox(``seed``, ``offset``): storage position
    ``e`` takes component ``e % 4`` of Box-Muller on Philox4x32-10(seed, offset + e // 4),
    the stream of ``fastncsn.reference.langevin_noise_ref`` and of the Triton kernel, so
    both backends add the same noise (up to float rounding of log/sqrt).  Advance
    ``offset`` by ``langevin_noise_counters(x.numel())`` per step.  With ``noise``
    given, that tensor is added instead (``seed``/``offset`` may be None).

    Args:
        x: ``[N, ...]`` state, contiguous or channels-last, fp32 (bf16/fp16 also work).
        score: same shape as ``x``, fp32/bf16/fp16.
        step_size: ``a``: a one-element or ``[N]`` tensor read on the device (CUDA-graph
            safe), or a Python float (copied to the device).
        seed, offset: int64 one-element tensors on ``x``'s device (graph safe), or ints.
        mask, known: optional, shape of ``x`` or of one sample; nonzero mask keeps ``known``.
        clamp: optional ``(lo, hi)`` (either may be None).
        noise: optional explicit noise, shape of ``x``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point tensor [N, ...]")
    _require(x.device)
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        raise ValueError(f"score: expected a tensor of shape {tuple(x.shape)}, "
                         f"got {tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
    if isinstance(step_size, torch.Tensor):
        if step_size.numel() != 1 and step_size.shape != (x.shape[0],):
            raise ValueError(f"step_size: expected one element or shape [{x.shape[0]}], "
                             f"got {tuple(step_size.shape)}")
    else:
        step_size = torch.tensor(float(step_size), dtype=torch.float32, device=x.device)
    if noise is None:
        seed, offset = _counter(seed, "seed", x.device), _counter(offset, "offset", x.device)
    else:
        if noise.shape != x.shape:
            raise ValueError(f"noise: expected shape {tuple(x.shape)}, got {tuple(noise.shape)}")
        seed = offset = torch.zeros((), dtype=torch.int64, device=x.device)
    if (mask is None) != (known is None):
        raise ValueError("mask, known: pass both or neither")
    _on_device(x.device, score=score, step_size=step_size, noise=noise, mask=mask, known=known)
    lo, hi = (None, None) if clamp is None else clamp
    torch.ops.fastncsn_cuda.langevin_step_(x, score, step_size, seed, offset, noise, mask, known,
                                           None if lo is None else float(lo), None if hi is None else float(hi))
    return x


def langevin_noise(seed, offset, like: torch.Tensor) -> torch.Tensor:
    """The noise ``langevin_step_`` adds to a state laid out like ``like`` with this ``seed``/``offset``
    (float32, ``like``'s shape and layout), written by the CUDA kernel.  For tests."""
    _require(like.device)
    return torch.ops.fastncsn_cuda.langevin_noise(_counter(seed, "seed", like.device),
                                                  _counter(offset, "offset", like.device), like)


# --------------------------------------------------------------------------- fake kernels, autograd


def _register() -> None:
    """Fake (meta) kernels of the fastncsn_cuda ops and the autograd of cin_plus_fwd."""
    lib = "fastncsn_cuda::"

    @torch.library.register_fake(lib + "cin_plus_fwd")
    def _cin_fwd_fake(x, level_index, weight, eps, activation, plan=-1):
        stats = x.new_empty(x.shape[:2], dtype=torch.float32)
        return torch.empty_like(x, memory_format=_dense_format(x)), stats, torch.empty_like(stats)

    @torch.library.register_fake(lib + "cin_plus_bwd")
    def _cin_bwd_fake(grad_out, x, level_index, weight, mu, rstd, eps, activation, plan=-1):
        return torch.empty_like(x, memory_format=_dense_format(x)), weight.new_empty(weight.shape)

    @torch.library.register_fake(lib + "langevin_step_")
    def _step_fake(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi):
        return None

    @torch.library.register_fake(lib + "langevin_noise")
    def _noise_fake(seed, offset, like):
        dense = like.is_contiguous() or (like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last))
        if dense:
            return torch.empty_like(like, dtype=torch.float32, memory_format=_dense_format(like))
        return like.new_empty(like.shape, dtype=torch.float32)

    def setup_context(ctx, inputs, output):
        x, level_index, weight, eps, activation, *plan = inputs
        _, mu, rstd = output
        ctx.save_for_backward(x, level_index, weight, mu, rstd)
        ctx.eps, ctx.activation, ctx.plan = eps, activation, (plan[0] if plan else -1)
        ctx.mark_non_differentiable(mu, rstd)

    def backward(ctx, grad_out, _grad_mu, _grad_rstd):
        x, level_index, weight, mu, rstd = ctx.saved_tensors
        grad_x, grad_w = torch.ops.fastncsn_cuda.cin_plus_bwd(grad_out, x, level_index, weight, mu, rstd,
                                                              ctx.eps, ctx.activation, ctx.plan)
        return (grad_x if ctx.needs_input_grad[0] else None, None,
                grad_w if ctx.needs_input_grad[2] else None, None, None, None)

    torch.library.register_autograd(lib + "cin_plus_fwd", backward, setup_context=setup_context)


if _C is not None:
    _register()
