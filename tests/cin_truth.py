"""Yardsticks for the CIN++ fast-path tests: the reference's gradients, a float64
evaluation, and the rule "kernel error <= 2 x the error of a same-precision
PyTorch run + atol" (errors measured against float64).

``fastncsn.ops.cond_instance_norm_plus_ref`` computes in float32 whatever the input dtype (it is the
fp32 truth); these helpers give the float64 answer for ill-conditioned inputs
(e.g. CIN++ with nearly equal channel means) and large shapes, where a fixed
relative tolerance would judge rounding rather than the kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import TOL
from fastncsn.ops import cond_instance_norm_plus_ref


def ref_grads(x, y, w, dy, act):
    """(out, grad x, grad weight) of the reference (float32 math) for the output gradient ``dy``."""
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out = cond_instance_norm_plus_ref(xr, y, wr, activation=act)
    out.backward(dy)
    return out.detach(), xr.grad, wr.grad


def cin_fp64(x, y, w, act):
    """CIN++ in float64 (the formula of cond_instance_norm_plus_ref without its float32 cast);
    differentiable in ``x`` and ``w``."""
    c = x.shape[1]
    xd = x.double()
    mu = xd.mean(dim=(2, 3))
    h = (xd - mu[..., None, None]) * torch.rsqrt(xd.var(dim=(2, 3), unbiased=False) + 1e-5)[..., None, None]
    if c > 1:
        t = (mu - mu.mean(1, keepdim=True)) / torch.sqrt(mu.var(1, keepdim=True) + 1e-5)
    else:
        t = torch.zeros_like(mu)
    rows = w.double()[y]
    out = rows[:, :c, None, None] * (h + (rows[:, c:2 * c] * t)[..., None, None])
    if rows.shape[1] == 3 * c:
        out = out + rows[:, 2 * c:, None, None]
    return F.elu(out) if act == "elu" else out


def cin_fp64_grads(x, y, w, dy, act):
    """(out, grad x, grad weight) of ``cin_fp64`` for the output gradient ``dy``."""
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    out = cin_fp64(xd, y, wd, act)
    out.backward(dy.double())
    return out.detach(), xd.grad, wd.grad


def assert_within_2x(kernel, torch_run, truth, dtype, what):
    """max|kernel - truth| <= 2 max|torch_run - truth| + TOL[dtype]['atol']."""
    err_k = (kernel.double() - truth).abs().max().item()
    err_t = (torch_run.double() - truth).abs().max().item()
    assert err_k <= 2 * err_t + TOL[dtype]["atol"], f"{what}: kernel error {err_k:.3g} vs torch {err_t:.3g}"
