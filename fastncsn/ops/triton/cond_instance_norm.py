"""Conditional instance normalisation++ (CIN++) in Triton: forward and backward.

The op (NCSN, seed 003 appendix A, as the reference code computes it; the truth
is ``fastncsn.ops.cond_instance_norm_plus_ref``): for sample ``n`` with
level ``l = level[n]`` and channel ``c`` over the ``M = H*W`` pixels,

    mu_c = mean_p x_cp            r_c = 1 / sqrt(var_p x_cp + eps)     (biased variance)
    m    = mean_c mu_c            q   = 1 / sqrt(var_c mu_c + eps)     (unbiased, q = 0 if C == 1)
    t_c  = (mu_c - m) q           y_cp = gamma_c ((x_cp - mu_c) r_c + alpha_c t_c) + beta_c

with ``gamma | alpha | beta`` the row ``l`` of ``weight`` and an optional
``ELU(y)`` fused on the output.

Design
------
``mu_c``/``r_c`` need one pass over a channel, but every output of a sample
needs ``m`` and ``q``, i.e. the means of *all* its channels.  Each kernel
therefore has two phases on a ``[BLOCK_C, BLOCK_P]`` tile grid of one sample:

* statistics (``STATS``): per channel block, loop over pixel chunks, combine
  the chunks' means and centred sums of squares with Chan's formula (exact
  two-pass statistics inside a chunk; no ``E[x^2] - E[x]^2`` cancellation),
  write ``mu``/``rstd`` ``[N, C]`` in fp32 (they are saved for the backward);
* apply (``APPLY``): read the sample's ``C`` means back, form ``m`` and ``q``,
  then normalise + mean term + gamma/alpha/beta + ELU and write the output.

Plans (``cin_plan``):

* ``ONE_TILE`` -- the whole sample fits one tile (padded ``C*H*W`` up to
  ``ONE_TILE_MAX`` elements: the 128x7x7 MNIST and 256x8x8 CIFAR-10 layers):
  x is read once and written once, the minimum traffic.
* fused (grid ``[N]``, both phases in one program with a CTA barrier between
  them): x is read twice and written once, but the second read of a sample
  follows the first within the same program, so on an H100 (50 MB L2) it is
  served from L2 while ``#resident programs * sample bytes`` fits
  (CIFAR-10 128x32x32 bf16 is 256 KB per sample).  Chosen when there are at
  least as many samples as SMs.
* split (grid ``[N, G]``, two launches: statistics, then apply): when the batch
  is too small to fill the GPU with one program per sample, ``G`` channel groups
  per sample give the parallelism; x is then read twice from DRAM.

All arithmetic is in fp32 (fp64 for fp64 inputs, which exists so that
``torch.autograd.gradcheck`` can check the kernels), whatever the input dtype;
NCHW and channels-last inputs are read through their strides without copies.

Backward (same phases): with ``g = dL/dy`` (times ``ELU'(y)``, recomputing
``y`` from x and the saved statistics), the per-channel sums
``S_c = sum_p g_cp`` and ``P_c = sum_p g_cp h_cp`` give the weight gradients of
the sample (``dgamma = P + alpha t S``, ``dalpha = gamma t S``, ``dbeta = S``)
and, with ``dt_c = gamma_c alpha_c S_c``,

    dmu_c = q (dt_c - mean_k dt_k - t_c sum_k(dt_k t_k) / (C - 1))
    dx_cp = r_c gamma_c (g_cp - S_c/M - h_cp P_c/M) + dmu_c / M.

Weight gradients are written per sample (``[N, K]``) and summed over the
samples of each level by ``_level_sum_kernel`` in a fixed order: the backward is
deterministic (no atomics).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..common import acc_dtype, dense_format

#: most elements in one [BLOCK_C, BLOCK_P] tile on a GPU (registers: 8 warps
#: hold 32 fp32 values per thread at this size)
TILE = 8192
#: most elements of a sample that one program keeps in registers (ONE_TILE plan, 16 warps):
#: the sample is then read once, e.g. the 256x8x8 CIFAR-10 and 128x7x7 MNIST layers
ONE_TILE_MAX = 16384
#: the backward holds two tiles (x and dy) and more per-channel coefficients: half the
#: sizes keep it near 100-170 registers per thread without spills (ptxas, sm_90)
TILE_BWD = 4096
ONE_TILE_MAX_BWD = 8192
#: the tile caps under TRITON_INTERPRET=1: each program instance costs milliseconds
#: there, so bigger tiles mean fewer, cheaper launches
TILE_INTERPRETED = 16384


def interpreting() -> bool:
    """True when the kernels of this module were built by the Triton interpreter."""
    interp = getattr(getattr(triton.runtime, "interpreter", None), "InterpretedFunction", None)
    return interp is not None and isinstance(_cin_fwd_kernel, interp)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _elu(y, PRECISE: tl.constexpr):
    """ELU(y): y for y > 0, expm1(y) otherwise.  ``PRECISE`` (fp32 outputs) evaluates expm1 by
    its Taylor series near 0, where exp(y) - 1 in fp32 cancels; bf16/fp16 outputs cannot see
    the difference."""
    neg = tl.exp(y) - 1.0
    if PRECISE:
        if y.dtype != tl.float64:
            taylor = y * (1.0 + y * (0.5 + y * (0.16666666666666666 + y * 0.041666666666666664)))
            neg = tl.where(y > -0.1, taylor, neg)
    return tl.where(y > 0, y, neg)


@triton.jit
def _affine_coeffs(w_row, cs, cmask, C, mean, rstd, m, q, HAS_BETA: tl.constexpr, ACC: tl.constexpr):
    """Per-channel ``scale``, ``bias`` with ``y = (x - mu) * scale + bias`` for channels ``cs``:
    ``scale = gamma r``, ``bias = gamma alpha t + beta``; also ``gamma``, ``alpha`` and ``t``."""
    gamma = tl.load(w_row + cs, mask=cmask, other=0.0).to(ACC)
    alpha = tl.load(w_row + C + cs, mask=cmask, other=0.0).to(ACC)
    t = tl.where(cmask, (mean - m) * q, 0.0)
    bias = gamma * alpha * t
    if HAS_BETA:
        bias += tl.load(w_row + 2 * C + cs, mask=cmask, other=0.0).to(ACC)
    return gamma * rstd, bias, gamma, alpha, t


@triton.jit
def _channel_mean_stats(mu_row, C, eps, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """Mean ``m`` of one sample's C channel means and ``q = 1/sqrt(unbiased var + eps)`` (0 if C == 1)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for c0 in range(0, C, BLOCK):
        acc += tl.load(mu_row + c0 + offs, mask=c0 + offs < C, other=0.0).to(ACC)
    m = tl.sum(acc, 0) / C
    acc = tl.zeros([BLOCK], ACC)
    for c0 in range(0, C, BLOCK):
        cmask = c0 + offs < C
        d = tl.where(cmask, tl.load(mu_row + c0 + offs, mask=cmask, other=0.0).to(ACC) - m, 0.0)
        acc += d * d
    q = m * 0.0
    if C > 1:
        q = 1.0 / tl.sqrt(tl.sum(acc, 0) / (C - 1) + eps)
    return m, q


@triton.jit
def _load_input(x_ptr, r_ptr, s_ptr, ptrs, mask, b, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                STORE_SUM: tl.constexpr, ACC: tl.constexpr):
    """A tile of the normalised input ``z = (x [+ r]) [+ b]`` in ``ACC``.  The sum ``s = x + r`` is rounded to
    x's dtype (it is an output; the statistics are those of the stored ``s``), ``z = s + b`` is not (the
    backward recomputes it in ``ACC``).  ``STORE_SUM`` writes ``s`` (read back from ``s_ptr`` otherwise)."""
    dt = x_ptr.dtype.element_ty
    if HAS_RESIDUAL:
        if STORE_SUM:
            z = (tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(ACC)
                 + tl.load(r_ptr + ptrs, mask=mask, other=0.0).to(ACC)).to(dt)
            tl.store(s_ptr + ptrs, z, mask=mask)
        else:
            z = tl.load(s_ptr + ptrs, mask=mask, other=0.0)
    else:
        z = tl.load(x_ptr + ptrs, mask=mask, other=0.0)
    if HAS_BIAS:       # masked lanes stay 0 (the statistics sum them)
        z = tl.where(mask, z.to(ACC) + b[:, None], 0.0)
    return z.to(ACC)


@triton.jit
def _cin_fwd_kernel(
    x_ptr,            # [N, C, H, W] input; element (n, c, p = h*W + w) at n*stride_n + c*stride_c + p*stride_p
    out_ptr,          # output, same shape, strides and dtype as x
    r_ptr,            # HAS_RESIDUAL: the residual, same shape, strides and dtype as x (else unused)
    s_ptr,            # HAS_RESIDUAL: the sum x + r (written by STATS, read by APPLY), strides of x
    b_ptr,            # HAS_BIAS: [C] per-channel bias in x's dtype, added to the input before the norm
    level_ptr,        # [N] int32/int64 noise-level index of each sample
    w_ptr,            # [L, 2C or 3C] rows gamma | alpha | beta, any float dtype
    mu_ptr,           # [N, C] ACC: spatial mean per channel (written by STATS, read by APPLY)
    rstd_ptr,         # [N, C] ACC: 1/sqrt(biased spatial variance + eps)
    C,                # channels
    HW,               # pixels per channel, H*W
    stride_n,         # x/out stride of the batch dim (elements)
    stride_c,         # x/out stride of the channel dim
    stride_p,         # x/out stride of the flattened pixel index (W's stride)
    w_stride,         # row stride of w
    chans_per_prog,   # channels handled by one program of grid axis 1 (a multiple of BLOCK_C)
    eps,              # epsilon of both variances
    HAS_BETA: tl.constexpr,   # w has a beta block (3C columns)
    ELU: tl.constexpr,        # apply ELU to the output
    HAS_RESIDUAL: tl.constexpr,  # normalise s = x + r and write s (fused residual add)
    HAS_BIAS: tl.constexpr,   # normalise x + b (folded conv bias; mu/rstd are those of x + b)
    STATS: tl.constexpr,      # run the statistics phase
    APPLY: tl.constexpr,      # run the normalise/affine phase
    ONE_TILE: tl.constexpr,   # the sample is one tile: read it once, both phases from registers
    BLOCK_C: tl.constexpr,    # channels per tile
    BLOCK_P: tl.constexpr,    # pixels per tile
    BLOCK_M: tl.constexpr,    # chunk of the per-sample loop over the C channel means
    ACC: tl.constexpr,        # accumulation dtype (fp32, or fp64 for fp64 inputs)
):
    n = tl.program_id(0)
    grp = tl.program_id(1)
    x_ptr += n.to(tl.int64) * stride_n
    out_ptr += n.to(tl.int64) * stride_n
    r_ptr += n.to(tl.int64) * stride_n
    s_ptr += n.to(tl.int64) * stride_n
    mu_ptr += n * C
    rstd_ptr += n * C
    w_row = w_ptr + tl.load(level_ptr + n) * w_stride
    offs_c = tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)

    if ONE_TILE:
        cmask = offs_c < C
        mask = cmask[:, None] & (offs_p < HW)[None, :]
        ptrs = offs_c[:, None] * stride_c + offs_p[None, :] * stride_p
        b = tl.zeros([BLOCK_C], ACC)
        if HAS_BIAS:
            b = tl.load(b_ptr + offs_c, mask=cmask, other=0.0).to(ACC)
        x = _load_input(x_ptr, r_ptr, s_ptr, ptrs, mask, b, HAS_RESIDUAL, HAS_BIAS, True, ACC)
        mean = tl.sum(x, 1) / HW
        x = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 1) / HW + eps)
        tl.store(mu_ptr + offs_c, mean, mask=cmask)
        tl.store(rstd_ptr + offs_c, rstd, mask=cmask)
        m = tl.sum(tl.where(cmask, mean, 0.0), 0) / C
        dm = tl.where(cmask, mean - m, 0.0)
        q = m * 0.0
        if C > 1:
            q = 1.0 / tl.sqrt(tl.sum(dm * dm, 0) / (C - 1) + eps)
        scale, bias, _, _, _ = _affine_coeffs(w_row, offs_c, cmask, C, mean, rstd, m, q, HAS_BETA, ACC)
        y = x * scale[:, None] + bias[:, None]
        if ELU:
            y = _elu(y, out_ptr.dtype.element_ty == tl.float32)
        tl.store(out_ptr + ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        c_lo = grp * chans_per_prog
        c_hi = tl.minimum(C, c_lo + chans_per_prog)
        if STATS:
            for c0 in range(c_lo, c_hi, BLOCK_C):
                cs = c0 + offs_c
                cmask = cs < c_hi
                b = tl.zeros([BLOCK_C], ACC)
                if HAS_BIAS:
                    b = tl.load(b_ptr + cs, mask=cmask, other=0.0).to(ACC)
                mean = tl.zeros([BLOCK_C], ACC)
                m2 = tl.zeros([BLOCK_C], ACC)
                for p0 in range(0, HW, BLOCK_P):
                    ps = p0 + offs_p
                    mask = cmask[:, None] & (ps < HW)[None, :]
                    x = _load_input(x_ptr, r_ptr, s_ptr, cs[:, None] * stride_c + ps[None, :] * stride_p, mask, b,
                                    HAS_RESIDUAL, HAS_BIAS, True, ACC)
                    cnt_b = tl.minimum(HW - p0, BLOCK_P).to(ACC)
                    mean_b = tl.sum(x, 1) / cnt_b
                    x = tl.where(mask, x - mean_b[:, None], 0.0)
                    # Chan et al.: merge (p0 pixels, mean, m2) with (cnt_b pixels, mean_b, sum d^2)
                    delta = mean_b - mean
                    cnt = p0 + cnt_b
                    mean += delta * (cnt_b / cnt)
                    m2 += tl.sum(x * x, 1) + delta * delta * (p0 * cnt_b / cnt)
                tl.store(mu_ptr + cs, mean, mask=cmask)
                tl.store(rstd_ptr + cs, 1.0 / tl.sqrt(m2 / HW + eps), mask=cmask)
        if STATS and APPLY:
            # the apply phase reads the means that other threads of this program just stored
            tl.debug_barrier()
        if APPLY:
            m, q = _channel_mean_stats(mu_ptr, C, eps, BLOCK_M, ACC)
            for c0 in range(c_lo, c_hi, BLOCK_C):
                cs = c0 + offs_c
                cmask = cs < c_hi
                mean = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
                rstd = tl.load(rstd_ptr + cs, mask=cmask, other=0.0)
                scale, bias, _, _, _ = _affine_coeffs(w_row, cs, cmask, C, mean, rstd, m, q, HAS_BETA, ACC)
                b = tl.zeros([BLOCK_C], ACC)
                if HAS_BIAS:
                    b = tl.load(b_ptr + cs, mask=cmask, other=0.0).to(ACC)
                for p0 in range(0, HW, BLOCK_P):
                    ps = p0 + offs_p
                    mask = cmask[:, None] & (ps < HW)[None, :]
                    ptrs = cs[:, None] * stride_c + ps[None, :] * stride_p
                    # the residual form reads back the sum STATS wrote (one read instead of two)
                    x = _load_input(x_ptr, r_ptr, s_ptr, ptrs, mask, b, HAS_RESIDUAL, HAS_BIAS, False, ACC)
                    y = (x - mean[:, None]) * scale[:, None] + bias[:, None]
                    if ELU:
                        y = _elu(y, out_ptr.dtype.element_ty == tl.float32)
                    tl.store(out_ptr + ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _output_grad(xc, dy, scale, bias, ELU: tl.constexpr):
    """g = dL/dy on a tile: the output gradient through the ELU, with y = xc*scale + bias recomputed
    from the centred input ``xc = x - mu``."""
    g = dy
    if ELU:
        y = xc * scale[:, None] + bias[:, None]
        g = tl.where(y > 0, dy, dy * tl.exp(tl.minimum(y, 0.0)))
    return g


@triton.jit
def _store_weight_grads(dw_row, cs, cmask, C, s, p, gamma, alpha, t, HAS_BETA: tl.constexpr):
    """One sample's dgamma = P + alpha t S, dalpha = gamma t S, dbeta = S for channels ``cs``."""
    tl.store(dw_row + cs, p + alpha * t * s, mask=cmask)
    tl.store(dw_row + C + cs, gamma * t * s, mask=cmask)
    if HAS_BETA:
        tl.store(dw_row + 2 * C + cs, s, mask=cmask)


@triton.jit
def _mean_term_grad_sums(w_row, mu_row, s_row, C, m, q, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """sum_c dt_c and sum_c dt_c t_c with dt_c = gamma_c alpha_c S_c, t_c = (mu_c - m) q."""
    offs = tl.arange(0, BLOCK)
    acc_dt = tl.zeros([BLOCK], ACC)
    acc_dtt = tl.zeros([BLOCK], ACC)
    for c0 in range(0, C, BLOCK):
        cs = c0 + offs
        cmask = cs < C
        gamma = tl.load(w_row + cs, mask=cmask, other=0.0).to(ACC)
        alpha = tl.load(w_row + C + cs, mask=cmask, other=0.0).to(ACC)
        dt = gamma * alpha * tl.load(s_row + cs, mask=cmask, other=0.0)
        t = (tl.load(mu_row + cs, mask=cmask, other=0.0) - m) * q
        acc_dt += dt
        acc_dtt += tl.where(cmask, dt * t, 0.0)
    return tl.sum(acc_dt, 0), tl.sum(acc_dtt, 0)


@triton.jit
def _dx_coeffs(scale, rstd, s, p, dmu, inv_hw):
    """(c1, c0) with dx = g*scale + (x - mu)*c1 + c0, i.e. r gamma (g - S/M - h P/M) + dmu/M."""
    return -scale * rstd * p * inv_hw, (dmu - scale * s) * inv_hw


@triton.jit
def _cin_bwd_kernel(
    x_ptr,            # [N, C, H, W] forward input (strides stride_n, stride_c, stride_p)
    dy_ptr,           # gradient of the output, same strides as x
    dx_ptr,           # gradient of x (written by APPLY), same strides as x
    level_ptr,        # [N] int32/int64 noise-level index
    w_ptr,            # [L, 2C or 3C] rows gamma | alpha | beta
    mu_ptr,           # [N, C] ACC saved spatial means
    rstd_ptr,         # [N, C] ACC saved 1/sqrt(var + eps)
    s_ptr,            # [N, C] ACC scratch: S_c = sum_p g (written by REDUCE)
    p_ptr,            # [N, C] ACC scratch: P_c = sum_p g h (written by REDUCE)
    dw_ptr,           # [N, K] ACC per-sample weight gradient rows dgamma | dalpha | dbeta (REDUCE)
    C,                # channels
    HW,               # pixels per channel
    stride_n,         # strides of x, dy, dx (elements)
    stride_c,
    stride_p,
    w_stride,         # row stride of w
    dw_stride,        # row stride of dw (K)
    chans_per_prog,   # channels per program along grid axis 1 (multiple of BLOCK_C)
    eps,              # epsilon of both variances
    HAS_BETA: tl.constexpr,
    ELU: tl.constexpr,
    REDUCE: tl.constexpr,     # phase 1: S, P and the weight-gradient rows
    APPLY: tl.constexpr,      # phase 2: dx (needs S of every channel of the sample)
    ONE_TILE: tl.constexpr,   # the sample is one tile: x and dy are read once
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    ACC: tl.constexpr,
):
    n = tl.program_id(0)
    grp = tl.program_id(1)
    x_ptr += n.to(tl.int64) * stride_n
    dy_ptr += n.to(tl.int64) * stride_n
    dx_ptr += n.to(tl.int64) * stride_n
    mu_ptr += n * C
    rstd_ptr += n * C
    s_ptr += n * C
    p_ptr += n * C
    dw_ptr += n.to(tl.int64) * dw_stride
    w_row = w_ptr + tl.load(level_ptr + n) * w_stride
    offs_c = tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)
    m, q = _channel_mean_stats(mu_ptr, C, eps, BLOCK_M, ACC)
    inv_hw = tl.full([], 1.0, ACC) / HW

    if ONE_TILE:
        cmask = offs_c < C
        mask = cmask[:, None] & (offs_p < HW)[None, :]
        ptrs = offs_c[:, None] * stride_c + offs_p[None, :] * stride_p
        mean = tl.load(mu_ptr + offs_c, mask=cmask, other=0.0)
        rstd = tl.load(rstd_ptr + offs_c, mask=cmask, other=0.0)
        scale, bias, gamma, alpha, t = _affine_coeffs(w_row, offs_c, cmask, C, mean, rstd, m, q, HAS_BETA, ACC)
        xc = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(ACC) - mean[:, None]
        g = _output_grad(xc, tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(ACC), scale, bias, ELU)
        s = tl.sum(g, 1)
        p = tl.sum(g * xc, 1) * rstd
        _store_weight_grads(dw_ptr, offs_c, cmask, C, s, p, gamma, alpha, t, HAS_BETA)
        dt = gamma * alpha * s
        dmu = dt * 0.0
        if C > 1:
            dmu = q * (dt - tl.sum(dt, 0) / C - t * (tl.sum(dt * t, 0) / (C - 1)))
        c1, c0 = _dx_coeffs(scale, rstd, s, p, dmu, inv_hw)
        dx = g * scale[:, None] + xc * c1[:, None] + c0[:, None]
        tl.store(dx_ptr + ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        c_lo = grp * chans_per_prog
        c_hi = tl.minimum(C, c_lo + chans_per_prog)
        if REDUCE:
            for c0 in range(c_lo, c_hi, BLOCK_C):
                cs = c0 + offs_c
                cmask = cs < c_hi
                mean = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
                rstd = tl.load(rstd_ptr + cs, mask=cmask, other=0.0)
                scale, bias, gamma, alpha, t = _affine_coeffs(w_row, cs, cmask, C, mean, rstd, m, q, HAS_BETA, ACC)
                # tile-shaped accumulators, reduced once after the loop: a reduction inside the loop
                # trips an assertion of Triton 3.6's OptimizeThreadLocality pass on sm_90 (ELU off)
                s2 = tl.zeros([BLOCK_C, BLOCK_P], ACC)
                p2 = tl.zeros([BLOCK_C, BLOCK_P], ACC)
                for p0 in range(0, HW, BLOCK_P):
                    ps = p0 + offs_p
                    mask = cmask[:, None] & (ps < HW)[None, :]
                    ptrs = cs[:, None] * stride_c + ps[None, :] * stride_p
                    xc = tl.where(mask, tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(ACC) - mean[:, None], 0.0)
                    g = _output_grad(xc, tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(ACC), scale, bias, ELU)
                    s2 += g
                    p2 += g * xc
                s = tl.sum(s2, 1)
                p = tl.sum(p2, 1) * rstd
                tl.store(s_ptr + cs, s, mask=cmask)
                tl.store(p_ptr + cs, p, mask=cmask)
                _store_weight_grads(dw_ptr, cs, cmask, C, s, p, gamma, alpha, t, HAS_BETA)
        if REDUCE and APPLY:
            # the apply phase reads S of every channel, stored by other threads of this program
            tl.debug_barrier()
        if APPLY:
            sum_dt, sum_dtt = _mean_term_grad_sums(w_row, mu_ptr, s_ptr, C, m, q, BLOCK_M, ACC)
            for c0 in range(c_lo, c_hi, BLOCK_C):
                cs = c0 + offs_c
                cmask = cs < c_hi
                mean = tl.load(mu_ptr + cs, mask=cmask, other=0.0)
                rstd = tl.load(rstd_ptr + cs, mask=cmask, other=0.0)
                scale, bias, gamma, alpha, t = _affine_coeffs(w_row, cs, cmask, C, mean, rstd, m, q, HAS_BETA, ACC)
                s = tl.load(s_ptr + cs, mask=cmask, other=0.0)
                dmu = s * 0.0
                if C > 1:
                    dmu = q * (gamma * alpha * s - sum_dt / C - t * (sum_dtt / (C - 1)))
                c1, c0 = _dx_coeffs(scale, rstd, s, tl.load(p_ptr + cs, mask=cmask, other=0.0), dmu, inv_hw)
                for p0 in range(0, HW, BLOCK_P):
                    ps = p0 + offs_p
                    mask = cmask[:, None] & (ps < HW)[None, :]
                    ptrs = cs[:, None] * stride_c + ps[None, :] * stride_p
                    xc = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(ACC) - mean[:, None]
                    g = _output_grad(xc, tl.load(dy_ptr + ptrs, mask=mask, other=0.0).to(ACC), scale, bias, ELU)
                    dx = g * scale[:, None] + xc * c1[:, None] + c0[:, None]
                    tl.store(dx_ptr + ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _level_sum_kernel(
    part_ptr,         # [N, K] ACC per-sample rows
    level_ptr,        # [N] int32/int64 level of each sample
    out_ptr,          # [L, K] ACC: out[l] = sum of part[n] over the samples with level l
    N,                # samples
    K,                # row length
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # one program per (column block, level); samples are summed in a fixed order, so the
    # result is bitwise reproducible (no atomics)
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    lvl = tl.program_id(1)
    kmask = ks < K
    offs_n = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_K], part_ptr.dtype.element_ty)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + offs_n
        sel = (ns < N) & (tl.load(level_ptr + ns, mask=ns < N, other=-1) == lvl)
        rows = tl.load(part_ptr + ns.to(tl.int64)[:, None] * K + ks[None, :],
                       mask=sel[:, None] & kmask[None, :], other=0.0)
        acc += tl.sum(rows, 0)
    tl.store(out_ptr + lvl * K + ks, acc, mask=kmask)


# --------------------------------------------------------------------------- launch helpers

_TL_ACC = {torch.float32: tl.float32, torch.float64: tl.float64}


def _as_dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when it is NCHW- or channels-last-dense, else an NCHW copy."""
    return x if x.is_contiguous(memory_format=dense_format(x)) else x.contiguous()


def _pixel_strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(stride_n, stride_c, stride_p) of a dense 4-D tensor, p = h*W + w the flattened pixel."""
    _, _, h, w = x.shape
    stride_p = x.stride(3) if w > 1 else x.stride(2) if h > 1 else 1
    return x.stride(0), x.stride(1), stride_p


def _pow2(v: int) -> int:
    return triton.next_power_of_2(max(int(v), 1))


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@dataclass(frozen=True)
class CinPlan:
    """How a CIN++ launch tiles one sample (see the module docstring)."""

    block_c: int
    block_p: int
    block_m: int
    chans_per_prog: int
    groups: int          # programs per sample along grid axis 1 (> 1 only when split)
    one_tile: bool
    split: bool          # two launches (phase 1, phase 2) instead of one fused program
    num_warps: int


def cin_plan(x: torch.Tensor, split: Optional[bool] = None, tile: Optional[int] = None,
             backward: bool = False) -> CinPlan:
    """Choose the tiling of ``x`` ``[N, C, H, W]`` (dense).

    ``split`` forces (True) or forbids (False) the two-launch split plan;
    ``None`` splits only when the batch has fewer samples than the GPU has
    SMs.  ``tile`` caps the elements of one tile (tests make it tiny to
    exercise the chunk loops); by default a sample of up to ``ONE_TILE_MAX``
    (padded) elements is one tile, larger ones are cut into ``TILE``-sized
    tiles (``ONE_TILE_MAX_BWD``, ``TILE_BWD`` for the ``backward``).  The sizes
    were chosen from ptxas register counts (sm_90), not yet from timings.  Channels-last tiles are wide in C, NCHW tiles
    wide in pixels, so that the fastest-moving tile axis is contiguous.
    """
    n, c, h, w = x.shape
    hw = h * w
    if interpreting():
        one_tile_max, tile = tile or TILE_INTERPRETED, tile or TILE_INTERPRETED
    else:
        one_tile_max = tile or (ONE_TILE_MAX_BWD if backward else ONE_TILE_MAX)
        tile = tile or (TILE_BWD if backward else TILE)
    channels_last = x.stride(1) == 1 and c > 1
    if not split and _pow2(c) * _pow2(hw) <= one_tile_max:
        block_c, block_p = _pow2(c), _pow2(hw)
    elif channels_last:
        block_c = min(_pow2(c), 128, tile)
        block_p = min(_pow2(hw), max(1, tile // block_c))
    else:
        block_p = min(_pow2(hw), tile)
        block_c = min(_pow2(c), max(1, tile // block_p))
    one_tile = block_c >= c and block_p >= hw and not split
    forced = split is not None
    if split is None:
        split = not one_tile and n < _num_sms(x.device)
    groups, chans_per_prog = 1, c
    if split:
        # aim at two programs per SM: `want` channel groups per sample
        want = max(2, triton.cdiv(2 * _num_sms(x.device), max(n, 1)))
        if channels_last and not forced:       # narrower channel blocks make room for the groups
            block_c = min(block_c, max(16, _pow2(triton.cdiv(c, want))))
            block_p = min(_pow2(hw), max(1, tile // block_c))
        groups = min(triton.cdiv(c, block_c), want)
        chans_per_prog = triton.cdiv(triton.cdiv(c, groups), block_c) * block_c
        groups = triton.cdiv(c, chans_per_prog)
        if groups == 1 and not forced:         # nothing to split: one fused launch is cheaper
            split, chans_per_prog = False, c
    num_warps = 4 if block_c * block_p <= 2048 else 8 if block_c * block_p <= 8192 else 16
    return CinPlan(block_c, block_p, min(_pow2(c), 1024), chans_per_prog, groups, one_tile, split, num_warps)


def _check_weight_layout(weight: torch.Tensor, c: int) -> bool:
    """True when ``weight`` has a beta block ([L, 3C]); validates [L, 2C or 3C]."""
    if weight.dim() != 2 or weight.shape[1] not in (2 * c, 3 * c):
        raise ValueError(f"weight: expected [num_levels, 3*C] or [num_levels, 2*C] with C={c}, "
                         f"got {tuple(weight.shape)}")
    return weight.shape[1] == 3 * c


def _launch_two_phase(kernel, phases: tuple[str, str], n: int, plan: CinPlan, args: tuple, has_beta: bool,
                      activation: str, acc: torch.dtype, **flags) -> None:
    """Launch ``kernel`` with both phases in one program, or (split plan) phase 1 then phase 2;
    ``flags`` are further constexpr arguments (the forward's HAS_RESIDUAL, HAS_BIAS)."""
    meta = dict(HAS_BETA=has_beta, ELU=activation == "elu", ONE_TILE=plan.one_tile, BLOCK_C=plan.block_c,
                BLOCK_P=plan.block_p, BLOCK_M=plan.block_m, ACC=_TL_ACC[acc], num_warps=plan.num_warps, **flags)
    first, second = phases
    if plan.split:
        kernel[(n, plan.groups)](*args, **{first: True, second: False}, **meta)
        kernel[(n, plan.groups)](*args, **{first: False, second: True}, **meta)
    else:
        kernel[(n, 1)](*args, **{first: True, second: True}, **meta)


def launch_cin_fwd(x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor, eps: float,
                   activation: str, split: Optional[bool] = None, tile: Optional[int] = None):
    """Run the forward kernels on ``x`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Returns ``(out, mu, rstd)``: ``out`` like ``x`` (dtype, and layout by
    ``dense_format``), ``mu``/``rstd`` ``[N, C]`` in ``acc_dtype(x.dtype)``.
    ``level`` values must lie in ``[0, num_levels)`` (not checked: that
    would need a host sync).
    """
    _, out, mu, rstd = launch_cin_glue_fwd(x, None, None, level, weight, eps, activation, split, tile)
    return out, mu, rstd


def launch_cin_glue_fwd(x: torch.Tensor, residual: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                        level: torch.Tensor, weight: torch.Tensor, eps: float, activation: str,
                        split: Optional[bool] = None, tile: Optional[int] = None):
    """The forward with the glue fused: CIN++ of ``z = (x + residual) + bias`` (each term optional).

    Returns ``(s, out, mu, rstd)``: ``s = x + residual`` laid out like ``out`` (an empty
    ``[0]`` tensor without a residual), ``out`` as ``launch_cin_fwd``'s, ``mu``/``rstd`` the
    statistics of ``z``.  The residual is read in ``x``'s layout (copied into it if it
    differs); ``bias`` is ``[C]``, rounded to ``x``'s dtype like the unfused add (``x + bias`` itself is kept in fp32).
    """
    n, c, h, w = x.shape
    has_beta = _check_weight_layout(weight, c)
    out = torch.empty_like(x, memory_format=dense_format(x))
    s = torch.empty_like(out) if residual is not None else x.new_empty(0)
    acc = acc_dtype(x.dtype)
    mu = torch.empty((n, c), dtype=acc, device=x.device)
    rstd = torch.empty((n, c), dtype=acc, device=x.device)
    if x.numel() == 0:
        return s, out, mu, rstd
    x = _as_dense(x)
    if residual is not None and residual.stride() != x.stride():
        residual = torch.empty_like(x).copy_(residual)
    level = level.contiguous()
    weight = weight.contiguous()
    plan = cin_plan(x, split, tile)
    args = (x, out, x if residual is None else residual, out if residual is None else s,
            x if bias is None else bias.to(x.dtype).contiguous(), level, weight, mu, rstd, c, h * w, *_pixel_strides(x),
            weight.stride(0), plan.chans_per_prog, float(eps))
    _launch_two_phase(_cin_fwd_kernel, ("STATS", "APPLY"), n, plan, args, has_beta, activation, acc,
                      HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None)
    return s, out, mu, rstd


def level_sum(part: torch.Tensor, level: torch.Tensor, num_levels: int) -> torch.Tensor:
    """``out[l] = sum(part[n] for n with level[n] == l)``, ``[L, K]``, deterministic order."""
    n, k = part.shape
    out = torch.empty((num_levels, k), dtype=part.dtype, device=part.device)
    if num_levels == 0 or k == 0:
        return out
    block_k = min(_pow2(k), 1024 if interpreting() else 256)
    block_n = min(_pow2(n), 64 if interpreting() else 16)
    _level_sum_kernel[(triton.cdiv(k, block_k), num_levels)](
        part, level.contiguous(), out, n, k, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return out


def launch_cin_bwd(grad_out: torch.Tensor, x: torch.Tensor, level: torch.Tensor, weight: torch.Tensor,
                   mu: torch.Tensor, rstd: torch.Tensor, eps: float, activation: str,
                   split: Optional[bool] = None, tile: Optional[int] = None):
    """Gradients of the forward with respect to ``x`` and ``weight``.

    ``grad_out`` may have any strides (autograd hands in expanded stride-0
    tensors); it is copied into ``x``'s layout when they differ.  Returns
    ``(grad_x, grad_weight)``: ``grad_x`` like ``x``, ``grad_weight`` like
    ``weight`` (summed over the samples of each level in a fixed order).
    """
    n, c, h, w = x.shape
    has_beta = _check_weight_layout(weight, c)
    grad_x = torch.empty_like(x, memory_format=dense_format(x))
    acc = acc_dtype(x.dtype)
    if x.numel() == 0:
        return grad_x, torch.zeros_like(weight, memory_format=torch.contiguous_format)
    x = _as_dense(x)
    if grad_out.stride() != x.stride():
        grad_out = torch.empty_like(x, dtype=grad_out.dtype).copy_(grad_out)
    level = level.contiguous()
    weight = weight.contiguous()
    k = weight.shape[1]
    sums = torch.empty((2, n, c), dtype=acc, device=x.device)
    part = torch.empty((n, k), dtype=acc, device=x.device)
    plan = cin_plan(x, split, tile, backward=True)
    args = (x, grad_out, grad_x, level, weight, mu.contiguous(), rstd.contiguous(), sums[0], sums[1], part,
            c, h * w, *_pixel_strides(x), weight.stride(0), k, plan.chans_per_prog, float(eps))
    _launch_two_phase(_cin_bwd_kernel, ("REDUCE", "APPLY"), n, plan, args, has_beta, activation, acc)
    grad_weight = level_sum(part, level, weight.shape[0]).to(weight.dtype)
    return grad_x, grad_weight
