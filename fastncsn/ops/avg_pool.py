"""The 5x5 stride-1 average pool of the RefineNet's chained residual pooling (``CRPBlock``).

``F.avg_pool2d(x, 5, stride=1, padding=2)`` with ``count_include_pad=True``: every output is the sum
of the zero-padded 5x5 window around its pixel divided by 25 (also at the borders).

* ``avg_pool5x5_ref`` -- the pure-PyTorch reference ("truth");
* ``check_pool_args`` -- the argument checks of every backend;
* ``avg_pool5x5`` -- the public op with backend dispatch ("triton" or "torch"; there is no
  CUDA C++ version, so ``backend="cuda"`` raises ``BackendUnavailableError``);
* the ``torch.library`` registration of the Triton backend's op ``fastncsn::avg_pool5x5(x) -> out``:
  the Triton launch as its CUDA kernel, a CPU kernel (the Triton kernel under ``TRITON_INTERPRET=1``,
  else the reference math; see ``fastncsn.ops.common.CPU_IMPL``), a fake kernel (tracing on fake
  tensors, ``torch.compile``) and autograd.

Backward: the pool is the correlation of the zero-padded input with a symmetric 5x5 box of
weights 1/25; its adjoint is the correlation of the zero-padded ``grad_out`` with the flipped box,
i.e. the same box.  So ``grad_x = avg_pool5x5(grad_out)`` exactly (the autograd of the op calls
the op again, which makes it twice differentiable too); the tests check this against autograd of
the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import acc_dtype, cpu_runs_triton, dense_format
from .dispatch import backend_module, resolve_backend

__all__ = ["POOL_KERNEL", "check_pool_args", "avg_pool5x5", "avg_pool5x5_ref"]

#: window side of the pool (stride 1, padding POOL_KERNEL // 2)
POOL_KERNEL = 5


def check_pool_args(x: torch.Tensor) -> None:
    """Check the argument of ``avg_pool5x5`` (every backend): a 4-D floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a 4-D floating-point tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor (float32, bfloat16, float16, float64), got {x.dtype}")


def avg_pool5x5_ref(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 5, stride=1, padding=2)`` (``count_include_pad=True``), the reference.

    ``out[n, c, h, w] = 1/25 * sum_{|i|,|j| <= 2} x[n, c, h + i, w + j]`` with ``x = 0`` outside the
    image (RefineNet's chained residual pooling, Lin et al. 2017, as the reference NCSN code
    computes it with ``nn.AvgPool2d(5, 1, 2)``).

    Precision: the sum is computed in ``acc_dtype(x.dtype)`` (float32; float64 for float64
    inputs) and rounded to ``x``'s dtype once at the end, as the Triton kernel does; a bf16/fp16
    ``F.avg_pool2d`` run (the "same-precision PyTorch run" of the tests) may round differently.

    Args:
        x: ``[N, C, H, W]`` floating-point tensor, any layout.

    Returns:
        ``[N, C, H, W]`` tensor of ``x``'s dtype; channels-last when ``x`` is (``dense_format``).
    """
    check_pool_args(x)
    out = F.avg_pool2d(x.to(acc_dtype(x.dtype)), POOL_KERNEL, stride=1, padding=POOL_KERNEL // 2)
    return torch.empty_like(x, memory_format=dense_format(x)).copy_(out)


def avg_pool5x5(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """5x5 stride-1 zero-padded average pool (``count_include_pad=True``) of ``x`` ``[N, C, H, W]``.

    Same result as ``F.avg_pool2d(x, 5, stride=1, padding=2)`` (formula: ``avg_pool5x5_ref``),
    computed in float32 (float64 for float64) whatever the input dtype.  NCHW or channels-last;
    the output keeps the layout.  Differentiable (the backward is the same pool of ``grad_out``).
    ``backend``: "auto" | "triton" | "torch" (see ``fastncsn.ops.resolve_backend``; there is no
    "cuda" version of this op: asking for it raises ``BackendUnavailableError``).
    """
    check_pool_args(x)
    b = resolve_backend(backend, x.device, "avg_pool5x5")
    if b == "torch":
        return avg_pool5x5_ref(x)
    mod, _ = backend_module(b)
    return mod.avg_pool5x5(x)


# --------------------------------------------------------------------------- the Triton backend's custom op


def _launch_pool(x):
    from .triton.avg_pool import launch_avg_pool5x5   # lazy: importing the ops never imports triton
    return launch_avg_pool5x5(x)


@torch.library.custom_op("fastncsn::avg_pool5x5", mutates_args=(), device_types="cuda")
def avg_pool5x5_op(x: Tensor) -> Tensor:
    """5x5 stride-1 zero-padded average pool (``count_include_pad=True``) by the Triton kernel."""
    return _launch_pool(x)


@avg_pool5x5_op.register_kernel("cpu")
def _avg_pool5x5_cpu(x):
    if cpu_runs_triton():
        return _launch_pool(x)
    return avg_pool5x5_ref(x)


@avg_pool5x5_op.register_fake
def _avg_pool5x5_fake(x):
    return torch.empty_like(x, memory_format=dense_format(x))


def _pool_setup_context(ctx, inputs, output):
    pass


def _pool_backward(ctx, grad_out):
    # the adjoint of the symmetric zero-padded box filter is the same box filter (module docstring)
    return torch.ops.fastncsn.avg_pool5x5(grad_out)


torch.library.register_autograd("fastncsn::avg_pool5x5", _pool_backward, setup_context=_pool_setup_context)
