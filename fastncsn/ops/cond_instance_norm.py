"""The CIN++ op: conditional instance normalisation++ (NCSN, seed 003 appendix A), optionally with a fused ELU.

* ``cond_instance_norm_plus_ref`` -- the pure-PyTorch reference ("truth"), as the
  reference NCSN code computes it; ``cin_plus_bwd_ref`` its backward in closed form;
* ``check_cin_args`` -- the argument checks of every backend;
* ``cond_instance_norm_plus`` -- the public op with backend dispatch;
* the glue fused into it (issue 15 item 3): ``bias=`` folds a per-channel bias added to the
  input (a conv's bias) into the norm, and ``add_cond_instance_norm_plus`` normalises the
  sum of two tensors and also returns the sum (a fused residual add); their references are
  the plain compositions (``cond_instance_norm_plus_ref(x, ..., bias=b)``,
  ``add_cond_instance_norm_plus_ref``), and ``fastncsn::cin_plus_glue_fwd`` is their op;
* the ``torch.library`` registration: the custom ops ``fastncsn::cin_plus_fwd`` and
  ``fastncsn::cin_plus_bwd`` of the Triton backend (the Triton launch as the CUDA kernel,
  a CPU kernel, a fake kernel and autograd), and the fake kernels and the autograd shared
  with the CUDA extension's ``fastncsn_cuda::cin_plus_fwd`` (``register_cin_autograd``).

Schemas (``level_index`` is the ``[N]`` noise-level index, called ``level`` in the Python API)::

    fastncsn::cin_plus_fwd(x, level_index, weight, eps, activation) -> (out, mu, rstd)
    fastncsn::cin_plus_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation) -> (grad_x, grad_weight)
    fastncsn::cin_plus_glue_fwd(x, residual?, bias?, level_index, weight, eps, activation) -> (sum, out, mu, rstd)

The glue op normalises ``z = (x + residual) + bias`` (``sum = x + residual``, an empty tensor
without a residual; ``mu``/``rstd`` are ``z``'s); its backward recomputes ``z`` and reuses
``cin_plus_bwd``.  Only the Triton backend (and the reference) have it: the CUDA extension's
``backend="cuda"`` raises ``BackendUnavailableError`` for the fused forms.

Fake kernels and autograd make ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``
work with the ops on any device.  (``torch.library.triton_op`` would be more transparent to
Inductor on a GPU, but fails opcheck and compile on a machine without one.)  The CPU kernels
follow ``fastncsn.ops.common.CPU_IMPL`` (the Triton kernels under ``TRITON_INTERPRET=1``, else the
reference math).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import acc_dtype, check_same_device, cpu_runs_triton, dense_format, require
from .dispatch import BackendUnavailableError, backend_module, resolve_backend

__all__ = [
    "CIN_EPS",
    "ACTIVATIONS",
    "check_cin_args",
    "cond_instance_norm_plus",
    "cond_instance_norm_plus_ref",
    "add_cond_instance_norm_plus",
    "add_cond_instance_norm_plus_ref",
    "check_glue_args",
    "run_glue_forward",
    "cin_plus_bwd_ref",
    "cin_fwd_fake",
    "cin_bwd_fake",
    "register_cin_autograd",
    "run_backend_forward",
]

#: epsilon of both the instance-norm variance and the channel-mean variance
#: (``nn.InstanceNorm2d`` default and the literal ``1e-5`` of the reference code)
CIN_EPS = 1e-5

#: activations that may be fused into CIN++
ACTIVATIONS = (None, "elu")


def check_cin_args(x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor,
                   activation: Optional[str]) -> int:
    """Check the arguments of CIN++ (every backend); returns the channel count ``C``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    n, c = x.shape[:2]
    if not isinstance(level, torch.Tensor) or level.dtype not in (torch.int64, torch.int32):
        raise TypeError("level: expected an integer tensor of shape [N]")
    if level.shape != (n,):
        raise ValueError(f"level: expected shape [{n}], got {tuple(level.shape)}")
    if weight.dim() != 2 or weight.shape[1] not in (2 * c, 3 * c):
        raise ValueError(f"weight: expected [num_levels, 3*C] (gamma|alpha|beta) or [num_levels, 2*C] "
                         f"(gamma|alpha) with C={c}, got {tuple(weight.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return c


def check_glue_args(x: torch.Tensor, residual: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> None:
    """Check the fused-glue arguments (after ``check_cin_args``): ``residual`` like ``x``, ``bias`` ``[C]``."""
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != x.shape:
            got = tuple(residual.shape) if isinstance(residual, torch.Tensor) else type(residual).__name__
            raise ValueError(f"residual: expected a tensor of x's shape {tuple(x.shape)}, got {got}")
        if residual.dtype != x.dtype:
            raise TypeError(f"residual: expected x's dtype {x.dtype}, got {residual.dtype}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (x.shape[1],):
            raise ValueError(f"bias: expected a tensor of shape [{x.shape[1]}] (one value per channel), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if not bias.is_floating_point():
            raise TypeError(f"bias: expected a floating-point tensor, got {bias.dtype}")


def _spatial_var(xf: torch.Tensor, centred: torch.Tensor) -> torch.Tensor:
    """Biased variance over (H, W) of ``xf`` ``[N, C, H, W]`` -> ``[N, C]``, given ``centred = xf - mean``.

    On the CPU the mean of ``centred**2`` (two passes; as accurate as Welford): ``torch.var`` over
    (H, W) is ~8x slower there and was the slowest op of a CPU forward.  Elsewhere ``torch.var``,
    one kernel, as the reference NCSN code computes it (the GPU reference path is the baseline
    the benchmarks compare against and stays as it was).
    """
    if xf.device.type == "cpu":
        return centred.square().mean(dim=(2, 3))
    return xf.var(dim=(2, 3), unbiased=False)


def cond_instance_norm_plus_ref(x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor,
                                eps: float = CIN_EPS, activation: Optional[str] = None,
                                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Conditional instance normalisation++ as the reference NCSN code computes it.

    With ``mu[n, c]`` the spatial mean of channel ``c``, ``s[n, c]`` its (biased)
    spatial standard deviation, ``m[n]`` and ``v[n]`` the mean and the *unbiased*
    variance of ``mu[n, :]`` over channels, and ``h = (x - mu) / sqrt(s^2 + eps)``::

        out = gamma[l] * (h + alpha[l] * (mu - m) / sqrt(v + eps)) + beta[l]

    where ``l = level[n]`` selects one row of the per-level embedding
    ``weight = [gamma | alpha | beta]``.

    This places ``alpha`` *inside* ``gamma``.  The formula printed in seed 004
    (eq. 10), ``z = gamma * (x - mu)/s + beta + alpha * (mu - m)/v``, places the
    mean term outside ``gamma`` (and divides by ``v`` where the code divides by
    ``sqrt(v + eps)``); the two parameterisations describe the same family
    (``alpha_004 = gamma * alpha_code``), but checkpoints of the reference code
    follow the form implemented here.

    Channel count 1: the unbiased variance over one channel is undefined
    (``torch.var`` gives NaN); here ``mu - m`` is exactly 0 and the mean term is
    defined as 0, which the fused kernels reproduce.

    Args:
        x: ``[N, C, H, W]`` input (any float dtype; statistics in fp32).
        level: ``[N]`` integer noise-level index per sample.
        weight: ``[L, 3C]`` rows ``gamma | alpha | beta``, or ``[L, 2C]``
            (``gamma | alpha``, no bias: the reference's ``bias=False``).
        eps: variance epsilon (1e-5 in the reference).
        activation: ``None`` or ``"elu"`` applied to the output.
        bias: optional ``[C]`` added to ``x`` first (in ``x``'s dtype): the composition
            ``CIN++(x + bias)`` that the fused backends compute without writing ``x + bias``.

    Returns:
        ``[N, C, H, W]`` tensor of ``x``'s dtype.
    """
    c = check_cin_args(x, level, weight, activation)
    if bias is not None:
        check_glue_args(x, None, bias)
        x = x + bias.to(x.dtype)[None, :, None, None]
    xf = x.float()
    mu = xf.mean(dim=(2, 3))                                   # [N, C]
    d = xf - mu[:, :, None, None]
    h = d * torch.rsqrt(_spatial_var(xf, d) + eps)[:, :, None, None]
    if c > 1:
        m = mu.mean(dim=1, keepdim=True)
        v = mu.var(dim=1, keepdim=True, unbiased=True)
        mean_term = (mu - m) / torch.sqrt(v + eps)             # [N, C]
    else:
        mean_term = torch.zeros_like(mu)
    rows = weight.float()[level]                         # [N, 2C or 3C]
    gamma, alpha = rows[:, :c], rows[:, c:2 * c]
    out = gamma[:, :, None, None] * (h + (alpha * mean_term)[:, :, None, None])
    if rows.shape[1] == 3 * c:
        out = out + rows[:, 2 * c:, None, None]
    if activation == "elu":
        out = F.elu(out)
    return out.to(x.dtype)


def cond_instance_norm_plus(x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor,
                            eps: float = CIN_EPS, activation: Optional[str] = None,
                            backend: str = "auto", bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Conditional instance norm++ with an optional fused activation and folded input bias.

    Shapes: ``x`` ``[N, C, H, W]`` (NCHW or channels-last), ``level``
    ``[N]`` int64, ``weight`` ``[L, 3C]`` (gamma | alpha | beta) or ``[L, 2C]``,
    ``bias`` (optional) ``[C]``: the op is then ``CIN++(x + bias)`` (the bias of the conv
    that produced ``x``, folded into the norm: ``x + bias`` is never written).
    Formula: see ``cond_instance_norm_plus_ref`` (NCSN appendix A, as the
    reference code computes it).  Differentiable with respect to ``x``,
    ``weight`` and ``bias`` on every backend.  ``backend``: "auto" | "triton" | "cuda" | "torch"
    (see ``fastncsn.ops.resolve_backend``; with ``bias`` "cuda" raises and "auto" never picks it).
    """
    if bias is not None:
        return _glue(x, None, bias, level, weight, eps, activation, backend)[1]
    train = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    b = resolve_backend(backend, x.device, "cond_instance_norm_plus", like=x,
                        table_op="cond_instance_norm_plus:train" if train else None)
    if b == "torch":
        return cond_instance_norm_plus_ref(x, level, weight, eps, activation)
    mod, _ = backend_module(b)
    return mod.cond_instance_norm_plus(x, level, weight, eps, activation)


def add_cond_instance_norm_plus_ref(x: torch.Tensor, residual: torch.Tensor, level: torch.Tensor,
                                    weight: torch.Tensor, eps: float = CIN_EPS, activation: Optional[str] = None,
                                    bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference composition of the fused residual add: ``s = x + residual``,
    ``(s, cond_instance_norm_plus_ref(s, level, weight, eps, activation, bias))``."""
    check_cin_args(x, level, weight, activation)
    check_glue_args(x, residual, bias)
    s = x + residual
    return s, cond_instance_norm_plus_ref(s, level, weight, eps, activation, bias)


def add_cond_instance_norm_plus(x: torch.Tensor, residual: torch.Tensor, level: torch.Tensor,
                                weight: torch.Tensor, eps: float = CIN_EPS, activation: Optional[str] = None,
                                bias: Optional[torch.Tensor] = None,
                                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add fused into CIN++: returns ``(s, out)`` with ``s = x + residual`` and
    ``out = cond_instance_norm_plus(s [+ bias], level, weight, eps, activation)``.

    One pass reads ``x`` and ``residual`` and writes ``s`` and ``out`` (the fused add +
    layer-norm pattern); ``s`` is what the network keeps for its next skip connection.
    Shapes: ``x``, ``residual`` ``[N, C, H, W]`` of one dtype (NCHW or channels-last;
    ``s`` and ``out`` take ``x``'s layout), the rest as ``cond_instance_norm_plus``.
    Differentiable in ``x``, ``residual``, ``weight`` and ``bias``.  ``backend``: "auto" |
    "triton" | "torch" ("cuda" raises ``BackendUnavailableError``: the extension has no
    fused form; "auto" picks triton on CUDA tensors).
    """
    return _glue(x, residual, bias, level, weight, eps, activation, backend)


def _glue(x, residual, bias, level, weight, eps, activation, backend):
    """(s, out) of the fused forms on the resolved backend."""
    if backend == "cuda":
        raise BackendUnavailableError("backend='cuda': the CUDA extension has no fused bias/residual CIN++ "
                                      "(csrc/ implements the plain op only); use backend='triton' or 'auto'")
    b = resolve_backend(backend, x.device, "cond_instance_norm_plus_glue")
    if b == "torch":
        if residual is None:
            return None, cond_instance_norm_plus_ref(x, level, weight, eps, activation, bias)
        return add_cond_instance_norm_plus_ref(x, residual, level, weight, eps, activation, bias)
    mod, _ = backend_module(b)
    return mod.cin_plus_glue(x, residual, bias, level, weight, eps, activation)


def run_glue_forward(x: torch.Tensor, residual: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                     level: torch.Tensor, weight: torch.Tensor, eps: float, activation: Optional[str],
                     available, what: str, dtypes: tuple) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """``(s or None, out)`` of ``torch.ops.fastncsn.cin_plus_glue_fwd`` after the checks of
    ``run_backend_forward`` and ``check_glue_args`` (the Triton backend's fused forms)."""
    check_cin_args(x, level, weight, activation)
    check_glue_args(x, residual, bias)
    require(available, what, x.device)
    check_same_device(x.device, level=level, weight=weight, residual=residual, bias=bias)
    if x.dtype not in dtypes:
        raise TypeError(f"x: expected a tensor of dtype {', '.join(str(d) for d in dtypes)}, got {x.dtype}")
    s, out, _, _ = torch.ops.fastncsn.cin_plus_glue_fwd(x, residual, bias, level, weight, float(eps),
                                                        "none" if activation is None else activation)
    return (s if residual is not None else None), out


def run_backend_forward(namespace: str, x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor, eps: float,
                        activation: Optional[str], available, what: str, dtypes: tuple) -> torch.Tensor:
    """The public CIN++ function of a fast backend: check the arguments (then that the backend
    ``available``, named ``what``, runs on ``x``'s device, the devices and ``x.dtype in dtypes``) and
    return the output of its forward op ``torch.ops.<namespace>.cin_plus_fwd`` (autograd through it)."""
    check_cin_args(x, level, weight, activation)
    require(available, what, x.device)
    check_same_device(x.device, level=level, weight=weight)
    if x.dtype not in dtypes:
        raise TypeError(f"x: expected a tensor of dtype {', '.join(str(d) for d in dtypes)}, got {x.dtype}")
    out, _, _ = getattr(torch.ops, namespace).cin_plus_fwd(x, level, weight, float(eps), "none" if activation is None else activation)
    return out


# --------------------------------------------------------------------------- fake kernels, autograd (both backends)


def _activation_arg(activation: str) -> Optional[str]:
    """The op schemas' activation string ("none" | "elu") as the Python API's (None | "elu")."""
    if activation not in ("none", "elu"):
        raise ValueError(f"activation: expected 'none' or 'elu', got {activation!r}")
    return None if activation == "none" else activation


def cin_fwd_fake(x, level_index, weight, eps, activation, plan=-1):
    """Fake (meta) kernel of ``cin_plus_fwd`` (both backends; ``plan`` only in the CUDA schema)."""
    stats = x.new_empty(x.shape[:2], dtype=acc_dtype(x.dtype))
    return torch.empty_like(x, memory_format=dense_format(x)), stats, torch.empty_like(stats)


def cin_bwd_fake(grad_out, x, level_index, weight, mu, rstd, eps, activation, plan=-1):
    """Fake (meta) kernel of ``cin_plus_bwd`` (both backends)."""
    return torch.empty_like(x, memory_format=dense_format(x)), weight.new_empty(weight.shape)


def register_cin_autograd(fwd_op: str, bwd) -> None:
    """Register the autograd of the forward op ``fwd_op`` (qualified name), whose outputs are
    ``(out, mu, rstd)``, with ``bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation, *extra)``
    as its backward; ``extra`` are the forward's arguments after ``activation`` (the CUDA plan)."""

    def setup_context(ctx, inputs, output):
        x, level_index, weight, eps, activation, *extra = inputs
        _, mu, rstd = output
        ctx.save_for_backward(x, level_index, weight, mu, rstd)
        ctx.eps, ctx.activation, ctx.extra = eps, activation, tuple(extra)
        ctx.mark_non_differentiable(mu, rstd)

    def backward(ctx, grad_out, _grad_mu, _grad_rstd):
        x, level_index, weight, mu, rstd = ctx.saved_tensors
        none_extra = (None,) * len(ctx.extra)
        if grad_out is None:
            return (None,) * 5 + none_extra
        grad_x, grad_weight = bwd(grad_out, x, level_index, weight, mu, rstd, ctx.eps, ctx.activation, *ctx.extra)
        return (grad_x if ctx.needs_input_grad[0] else None, None,
                grad_weight if ctx.needs_input_grad[2] else None, None, None) + none_extra

    torch.library.register_autograd(fwd_op, backward, setup_context=setup_context)


# --------------------------------------------------------------------------- the Triton backend's custom ops


def _launch_cin_fwd(x, level, weight, eps, activation):
    from .triton.cond_instance_norm import launch_cin_fwd   # lazy: importing the ops never imports triton
    return launch_cin_fwd(x, level, weight, eps, activation)


def _launch_cin_bwd(grad_out, x, level, weight, mu, rstd, eps, activation):
    from .triton.cond_instance_norm import launch_cin_bwd
    return launch_cin_bwd(grad_out, x, level, weight, mu, rstd, eps, activation)


@torch.library.custom_op("fastncsn::cin_plus_fwd", mutates_args=(), device_types="cuda")
def cin_plus_fwd(x: Tensor, level_index: Tensor, weight: Tensor, eps: float,
                 activation: str) -> tuple[Tensor, Tensor, Tensor]:
    """CIN++ forward; returns ``(out, mu, rstd)`` with ``mu``/``rstd`` ``[N, C]`` saved for the backward."""
    return _launch_cin_fwd(x, level_index, weight, eps, activation)


@cin_plus_fwd.register_kernel("cpu")
def _cin_plus_fwd_cpu(x, level_index, weight, eps, activation):
    if cpu_runs_triton():
        return _launch_cin_fwd(x, level_index, weight, eps, activation)
    ref = cond_instance_norm_plus_ref(x, level_index, weight, eps, _activation_arg(activation))
    out = torch.empty_like(x, memory_format=dense_format(x)).copy_(ref)
    xf = x.to(acc_dtype(x.dtype))
    mu = xf.mean(dim=(2, 3))
    return out, mu, torch.rsqrt(_spatial_var(xf, xf - mu[:, :, None, None]) + eps)


@torch.library.custom_op("fastncsn::cin_plus_bwd", mutates_args=(), device_types="cuda")
def cin_plus_bwd(grad_out: Tensor, x: Tensor, level_index: Tensor, weight: Tensor, mu: Tensor, rstd: Tensor,
                 eps: float, activation: str) -> tuple[Tensor, Tensor]:
    """Gradients of ``cin_plus_fwd`` with respect to ``x`` and ``weight`` (deterministic)."""
    return _launch_cin_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation)


def cin_plus_bwd_ref(grad_out: Tensor, x: Tensor, level: Tensor, weight: Tensor, mu: Tensor,
                       rstd: Tensor, eps: float, activation: str) -> tuple[Tensor, Tensor]:
    """The backward of CIN++ written out in PyTorch (the formulas of the docstring of
    ``fastncsn.ops.triton.cond_instance_norm``); the CPU kernel of ``cin_plus_bwd`` when it does not run Triton.  (Autograd cannot
    run inside a custom op's kernel, so this is the reference math in closed form; the tests
    compare it with autograd of ``cond_instance_norm_plus_ref``.)"""
    act = _activation_arg(activation)
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    xf, dy = x.to(acc), grad_out.to(acc)
    mu, rstd = mu.to(acc)[:, :, None, None], rstd.to(acc)[:, :, None, None]
    rows = weight.to(acc)[level]
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
    grad_w.index_add_(0, level, part.reshape(n, -1))
    out = torch.empty_like(x, memory_format=dense_format(x)).copy_(grad_x)
    return out, grad_w.to(weight.dtype)


@cin_plus_bwd.register_kernel("cpu")
def _cin_plus_bwd_cpu(grad_out, x, level_index, weight, mu, rstd, eps, activation):
    if cpu_runs_triton():
        return _launch_cin_bwd(grad_out, x, level_index, weight, mu, rstd, eps, activation)
    return cin_plus_bwd_ref(grad_out, x, level_index, weight, mu, rstd, eps, activation)


cin_plus_fwd.register_fake(cin_fwd_fake)
cin_plus_bwd.register_fake(cin_bwd_fake)
register_cin_autograd("fastncsn::cin_plus_fwd", cin_plus_bwd)


# --------------------------------------------------------------------------- the fused glue (Triton backend)


@torch.library.custom_op("fastncsn::cin_plus_glue_fwd", mutates_args=(), device_types="cuda")
def cin_plus_glue_fwd(x: Tensor, residual: Optional[Tensor], bias: Optional[Tensor], level_index: Tensor,
                      weight: Tensor, eps: float, activation: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIN++ of ``z = (x + residual) + bias``; returns ``(s, out, mu, rstd)`` (``s = x + residual``, or an
    empty tensor without a residual; ``mu``/``rstd`` are ``z``'s, saved for the backward)."""
    from .triton.cond_instance_norm import launch_cin_glue_fwd
    return launch_cin_glue_fwd(x, residual, bias, level_index, weight, eps, activation)


@cin_plus_glue_fwd.register_kernel("cpu")
def _cin_plus_glue_fwd_cpu(x, residual, bias, level_index, weight, eps, activation):
    if cpu_runs_triton():
        from .triton.cond_instance_norm import launch_cin_glue_fwd
        return launch_cin_glue_fwd(x, residual, bias, level_index, weight, eps, activation)
    fmt = dense_format(x)
    s = x.new_empty(0) if residual is None else torch.empty_like(x, memory_format=fmt).copy_(x + residual)
    z = _glue_input(x if residual is None else s, bias)
    out, mu, rstd = _cin_plus_fwd_cpu(z, level_index, weight, eps, activation)
    return s, torch.empty_like(x, memory_format=fmt).copy_(out), mu, rstd


@cin_plus_glue_fwd.register_fake
def _cin_plus_glue_fwd_fake(x, residual, bias, level_index, weight, eps, activation):
    out, mu, rstd = cin_fwd_fake(x, level_index, weight, eps, activation)
    return (x.new_empty(0) if residual is None else torch.empty_like(out)), out, mu, rstd


def _glue_input(s: Tensor, bias: Optional[Tensor]) -> Tensor:
    """The normalised input ``z = s + bias`` as the Triton kernel forms it: ``bias`` rounded to ``s``'s
    dtype, the sum in ``acc_dtype`` (not rounded: the saved statistics are of this ``z``); ``s``
    itself without a bias."""
    if bias is None:
        return s
    acc = acc_dtype(s.dtype)
    return s.to(acc) + bias.to(s.dtype).to(acc)[None, :, None, None]


def _glue_setup_context(ctx, inputs, output):
    x, residual, bias, level_index, weight, eps, activation = inputs
    s, _, mu, rstd = output
    ctx.save_for_backward(x if residual is None else s, bias, level_index, weight, mu, rstd)
    ctx.eps, ctx.activation, ctx.has_residual = eps, activation, residual is not None
    ctx.mark_non_differentiable(mu, rstd)


def _glue_backward(ctx, grad_s, grad_out, _grad_mu, _grad_rstd):
    """Reuses ``cin_plus_bwd`` on the recomputed ``z``: grad_z; then grad_x = grad_residual =
    grad_s + grad_z, grad_bias = sum of grad_z over n, h, w."""
    s, bias, level_index, weight, mu, rstd = ctx.saved_tensors
    if grad_out is None:
        grad_z = torch.zeros_like(s)
        grad_w = None
    else:
        grad_z, grad_w = cin_plus_bwd(grad_out, _glue_input(s, bias), level_index, weight, mu, rstd,
                                      ctx.eps, ctx.activation)
        grad_z = grad_z.to(s.dtype)     # with a bias, z (and grad_z) are in fp32 (_glue_input)
    grad_x = grad_z if grad_s is None or not ctx.has_residual else grad_z + grad_s
    grad_b = None
    if bias is not None and ctx.needs_input_grad[2]:
        grad_b = grad_z.sum(dim=(0, 2, 3), dtype=acc_dtype(grad_z.dtype)).to(bias.dtype)
    return (grad_x if ctx.needs_input_grad[0] else None,
            grad_x if ctx.has_residual and ctx.needs_input_grad[1] else None, grad_b, None,
            grad_w if ctx.needs_input_grad[4] else None, None, None)


torch.library.register_autograd("fastncsn::cin_plus_glue_fwd", _glue_backward, setup_context=_glue_setup_context)
