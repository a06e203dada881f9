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
``torch.compile`` treats them as opaque ops; the CIN++ ones and the autograd of
``cin_plus_fwd`` are those of ``fastncsn/ops/cond_instance_norm.py``, shared with the
Triton backend), and exposes the same functions as the Triton backend
(``fastncsn.ops.triton``); the argument checks are the op files'.  Importing it never
fails: without the extension, ``available(device)`` is ``(False, <how to build it>)``.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from .common import dense_format, is_dense, require, scalar_tensor
from .cond_instance_norm import CIN_EPS, cin_bwd_fake, cin_fwd_fake, register_cin_autograd, run_backend_forward
from .langevin import check_step_args

__all__ = ["available", "cond_instance_norm_plus", "langevin_step_", "langevin_noise", "REBUILD_HINT"]

REBUILD_HINT = ("fastncsn._C is not built: reinstall on a CUDA machine with "
                "`pip install --no-build-isolation .` (FASTNCSN_BUILD_CUDA=1 to force)")

try:
    _C = importlib.import_module("fastncsn._C")  # loading the library registers torch.ops.fastncsn_cuda
    IMPORT_ERROR = ""
except ImportError as _exc:
    _C = None
    if isinstance(_exc, ModuleNotFoundError) and _exc.name == "fastncsn._C":
        IMPORT_ERROR = REBUILD_HINT
    else:  # built, but does not load (e.g. for another torch): rebuild
        IMPORT_ERROR = f"fastncsn._C could not be loaded ({_exc}); " + REBUILD_HINT.split(": ", 1)[1]

#: the dtypes the CUDA kernels take for activations (x, score)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def available(device: torch.device | str) -> tuple[bool, str]:
    """Whether the CUDA extension can run on tensors of ``device``: ``(ok, reason if not)``."""
    device = torch.device(device)
    if _C is None:
        return False, IMPORT_ERROR
    if device.type != "cuda":
        return False, f"the CUDA extension runs on CUDA tensors only, not {device.type} tensors"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    return True, ""


def cond_instance_norm_plus(x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor,
                            eps: float = CIN_EPS, activation: Optional[str] = None) -> torch.Tensor:
    """Conditional instance norm++ (NCSN appendix A) with an optional fused ELU, by the CUDA extension.

    Shapes: ``x`` ``[N, C, H, W]`` fp32/bf16/fp16, NCHW or channels-last (the output
    keeps the layout); ``level`` ``[N]`` int32/int64 with values in ``[0, L)``
    (not checked on the device); ``weight`` ``[L, 3C]`` (gamma | alpha | beta) or
    ``[L, 2C]``.  Statistics in fp32.  Formula: see
    ``fastncsn.ops.cond_instance_norm_plus_ref``.  Differentiable in ``x``
    and ``weight``; forward and backward are deterministic (bitwise).
    """
    return run_backend_forward("fastncsn_cuda", x, level, weight, eps, activation,
                               available, "fastncsn.ops.cuda", DTYPES)


def langevin_step_(x: torch.Tensor, score: torch.Tensor, step_size, seed, offset,
                   mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
                   clamp: Optional[tuple] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In place: ``x <- x + a/2 * score + sqrt(a) * z`` (NCSN eq. 4), then ``x <- known where
    mask`` and ``clamp``; returns ``x``.  Same contract as ``fastncsn.ops.triton.langevin_step_``.

    ``z`` is drawn inside the kernel from Philox(``seed``, ``offset``): storage position
    ``e`` takes component ``e % 4`` of Box-Muller on Philox4x32-10(seed, offset + e // 4),
    the stream of ``fastncsn.ops.langevin_noise_ref`` and of the Triton kernel, so
    both backends add the same noise (up to float rounding of log/sqrt).  Advance
    ``offset`` by ``langevin_noise_counters(x.numel())`` per step.  With ``noise``
    given, that tensor is added instead (``seed``/``offset`` may be None).  Arguments as the Triton
    backend's (``x`` fp32, bf16 or fp16 here), checked by ``fastncsn.ops.langevin.check_step_args``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x: expected a floating-point tensor [N, ...]")
    require(available, "fastncsn.ops.cuda", x.device)
    step_size, seed, offset = check_step_args(x, score, step_size, seed, offset, noise, mask, known, torch.float32)
    lo, hi = (None, None) if clamp is None else clamp
    torch.ops.fastncsn_cuda.langevin_step_(x, score, step_size, seed, offset, noise, mask, known,
                                           None if lo is None else float(lo), None if hi is None else float(hi))
    return x


def langevin_noise(seed, offset, like: torch.Tensor) -> torch.Tensor:
    """The noise ``langevin_step_`` adds to a state laid out like ``like`` with this ``seed``/``offset``
    (float32, ``like``'s shape and layout), written by the CUDA kernel.  For tests."""
    require(available, "fastncsn.ops.cuda", like.device)
    return torch.ops.fastncsn_cuda.langevin_noise(scalar_tensor(seed, "seed", like.device),
                                                  scalar_tensor(offset, "offset", like.device), like)


# --------------------------------------------------------------------------- fake kernels, autograd


def _register() -> None:
    """Fake (meta) kernels of the fastncsn_cuda ops and the autograd of cin_plus_fwd."""
    lib = "fastncsn_cuda::"
    torch.library.register_fake(lib + "cin_plus_fwd")(cin_fwd_fake)
    torch.library.register_fake(lib + "cin_plus_bwd")(cin_bwd_fake)

    @torch.library.register_fake(lib + "langevin_step_")
    def _step_fake(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi):
        return None

    @torch.library.register_fake(lib + "langevin_noise")
    def _noise_fake(seed, offset, like):
        if is_dense(like):
            return torch.empty_like(like, dtype=torch.float32, memory_format=dense_format(like))
        return like.new_empty(like.shape, dtype=torch.float32)

    register_cin_autograd(lib + "cin_plus_fwd", torch.ops.fastncsn_cuda.cin_plus_bwd)


if _C is not None:
    _register()
