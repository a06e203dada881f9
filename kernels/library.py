"""``torch.library`` custom ops of the Triton kernels (namespace ``fastncsn``).

* ``fastncsn::cin_plus_fwd(x, level_index, weight, eps, activation) -> (out, mu, rstd)``
* ``fastncsn::cin_plus_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation) -> (grad_x, grad_weight)``
* ``fastncsn::langevin_step_(x!, score, step_size, seed, offset, noise?, mask?, known?, clamp_lo?, clamp_hi?)``

Each op has the Triton launch as its CUDA kernel, a CPU kernel, a fake
(meta) implementation and -- for ``cin_plus_fwd`` -- autograd, so that
``torch.library.opcheck`` and ``torch.compile(fullgraph=True)`` work with the
ops on any device.  (``torch.library.triton_op`` would be more transparent to
Inductor on a GPU, but fails opcheck and compile on a machine without one.)

The CPU kernel follows ``CPU_IMPL``: ``"auto"`` (default) runs the Triton
kernels when they were built by the interpreter (``TRITON_INTERPRET=1``) --
that is how CI checks the kernels -- and the PyTorch reference math otherwise;
``"triton"`` and ``"reference"`` force one of the two (tests use this to check
the registration of both).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from fastncsn import reference

from .cond_instance_norm import acc_dtype, dense_format, interpreting, launch_cin_bwd, launch_cin_fwd
from .langevin import launch_langevin_step_

#: what the CPU kernels run: "auto" | "triton" | "reference" (see the module docstring)
CPU_IMPL = "auto"


def cpu_runs_triton() -> bool:
    """Whether the CPU kernels of the ops launch the Triton kernels (else the reference math)."""
    if CPU_IMPL not in ("auto", "triton", "reference"):
        raise ValueError(f"CPU_IMPL: expected 'auto', 'triton' or 'reference', got {CPU_IMPL!r}")
    return CPU_IMPL == "triton" or (CPU_IMPL == "auto" and interpreting())


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


def _activation(activation: str) -> Optional[str]:
    if activation not in ("none", "elu"):
        raise ValueError(f"activation: expected 'none' or 'elu', got {activation!r}")
    return None if activation == "none" else activation


# --------------------------------------------------------------------------- CIN++ forward


@torch.library.custom_op("fastncsn::cin_plus_fwd", mutates_args=(), device_types="cuda")
def cin_plus_fwd(x: Tensor, level_index: Tensor, weight: Tensor, eps: float,
                 activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """CIN++ forward; returns ``(out, mu, rstd)`` with ``mu``/``rstd`` ``[N, C]`` saved for the backward."""
    return launch_cin_fwd(x, level_index, weight, eps, activation)


@cin_plus_fwd.register_kernel("cpu")
def _cin_plus_fwd_cpu(x, level_index, weight, eps, activation):
    if cpu_runs_triton():
        return launch_cin_fwd(x, level_index, weight, eps, activation)
    ref = reference.cond_instance_norm_plus_ref(x, level_index, weight, eps, _activation(activation))
    out = torch.empty_like(x, memory_format=dense_format(x)).copy_(ref)
    var, mu = torch.var_mean(x.to(acc_dtype(x.dtype)), dim=(2, 3), unbiased=False)
    return out, mu, torch.rsqrt(var + eps)


@cin_plus_fwd.register_fake
def _cin_plus_fwd_fake(x, level_index, weight, eps, activation):
    n, c = x.shape[:2]
    stats = x.new_empty((n, c), dtype=acc_dtype(x.dtype))
    return torch.empty_like(x, memory_format=dense_format(x)), stats, torch.empty_like(stats)


def _cin_setup_context(ctx, inputs, output):
    x, level_index, weight, eps, activation = inputs
    _, mu, rstd = output
    ctx.save_for_backward(x, level_index, weight, mu, rstd)
    ctx.eps, ctx.activation = eps, activation
    ctx.mark_non_differentiable(mu, rstd)


def _cin_backward(ctx, grad_out, _grad_mu, _grad_rstd):
    x, level_index, weight, mu, rstd = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    grad_x, grad_weight = cin_plus_bwd(grad_out, x, level_index, weight, mu, rstd, ctx.eps, ctx.activation)
    return (grad_x if ctx.needs_input_grad[0] else None, None,
            grad_weight if ctx.needs_input_grad[2] else None, None, None)


cin_plus_fwd.register_autograd(_cin_backward, setup_context=_cin_setup_context)


# --------------------------------------------------------------------------- CIN++ backward


@torch.library.custom_op("fastncsn::cin_plus_bwd", mutates_args=(), device_types="cuda")
def cin_plus_bwd(grad_out: Tensor, x: Tensor, level_index: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor,
                 eps: float, activation: str) -> tuple[Tensor, Tensor]:
    """Gradients of ``cin_plus_fwd`` with respect to ``x`` and ``weight`` (deterministic)."""
    return launch_cin_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation)


def cin_plus_bwd_torch(grad_out: Tensor, x: Tensor, level_index: Tensor, weight: Tensor, mu: Tensor,
                       rstd: Tensor, eps: float, activation: str) -> tuple[Tensor, Tensor]:
    """The backward of CIN++ written out in PyTorch (the formulas of ``cond_instance_norm``'s
    docstring); the CPU kernel of ``cin_plus_bwd`` when it does not run Triton.  (Autograd cannot
    run inside a custom op's kernel, so this is the reference math in closed form; the tests
    compare it with autograd of ``cond_instance_norm_plus_ref``.)"""
    act = _activation(activation)
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    xf, dy = x.to(acc), grad_out.to(acc)
    mu, rstd = mu.to(acc)[:, :, None, None], rstd.to(acc)[:, :, None, None]
    rows = weight.to(acc)[level_index]
    gamma, alpha = rows[:, :c, None, None], rows[:, c:2 * c, None, None]
    beta = rows[:, 2 * c:, None, None] if rows.shape[1] == 3 * c else torch.zeros_like(gamma)
    if c > 1:
        m = mu.mean(dim=1, keepdim=True)
        q = torch.rsqrt(mu.var(dim=1, keepdim=True, unbiased=True) + eps)
        t = (mu - m) * q
    else:
        q = torch.zeros_like(mu)
        t = torch.zeros_like(mu)
    hn = (xf - mu) * rstd
    if act == "elu":
        y = gamma * (hn + alpha * t) + beta
        dy = torch.where(y > 0, dy, dy * torch.exp(y.clamp(max=0)))
    s = dy.sum(dim=(2, 3), keepdim=True)
    p = (dy * hn).sum(dim=(2, 3), keepdim=True)
    dt = gamma * alpha * s
    dmu = torch.zeros_like(dt)
    if c > 1:
        dmu = q * (dt - dt.mean(dim=1, keepdim=True) - t * (dt * t).sum(dim=1, keepdim=True) / (c - 1))
    inv = 1.0 / (h * w)
    grad_x = rstd * gamma * (dy - s * inv - hn * (p * inv)) + dmu * inv
    part = torch.cat([p + alpha * t * s, gamma * t * s] + ([s] if weight.shape[1] == 3 * c else []), dim=1)
    grad_w = torch.zeros((weight.shape[0], weight.shape[1]), dtype=acc, device=x.device)
    grad_w.index_add_(0, level_index, part.reshape(n, -1))
    out = torch.empty_like(x, memory_format=dense_format(x)).copy_(grad_x)
    return out, grad_w.to(weight.dtype)


@cin_plus_bwd.register_kernel("cpu")
def _cin_plus_bwd_cpu(grad_out, x, level_index, weight, mu, rstd, eps, activation):
    if cpu_runs_triton():
        return launch_cin_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation)
    return cin_plus_bwd_torch(grad_out, x, level_index, weight, mu, rstd, eps, activation)


@cin_plus_bwd.register_fake
def _cin_plus_bwd_fake(grad_out, x, level_index, weight, mu, rstd, eps, activation):
    return (torch.empty_like(x, memory_format=dense_format(x)),
            weight.new_empty(weight.shape))


# --------------------------------------------------------------------------- Langevin step


@torch.library.custom_op("fastncsn::langevin_step_", mutates_args=("x",), device_types="cuda")
def langevin_step_op(x: Tensor, score: Tensor, step_size: Tensor, seed: Tensor, offset: Tensor,
                     noise: Optional[Tensor], mask: Optional[Tensor], known: Optional[Tensor],
                     clamp_lo: Optional[float], clamp_hi: Optional[float]) -> None:
    """In-place ``x += a/2 * score + sqrt(a) * z`` (+ blend, clamp) with z from Philox(seed, offset) or ``noise``."""
    launch_langevin_step_(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi)


@langevin_step_op.register_kernel("cpu")
def _langevin_step_cpu(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi):
    if cpu_runs_triton():
        launch_langevin_step_(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi)
        return
    z = noise if noise is not None else reference.langevin_noise_ref(seed, offset, x)
    a = step_size.reshape(()) if step_size.numel() == 1 else step_size.reshape(-1)
    clamp = None if clamp_lo is None and clamp_hi is None else (clamp_lo, clamp_hi)
    x.copy_(reference.langevin_step_ref(x, score, a, z, mask=mask, known=known, clamp=clamp))


@langevin_step_op.register_fake
def _langevin_step_fake(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi):
    return None
