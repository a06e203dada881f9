"""The Langevin update in Triton, with the Gaussian noise drawn inside the kernel.

One step of (annealed) Langevin dynamics (NCSN eq. 4, Algorithm 1 line 6)::

    x <- x + a/2 * score + sqrt(a) * z,      z ~ N(0, I)

followed, optionally, by the inpainting blend ``x <- known where mask`` and a
clamp.  The update is in place; the reference is
``fastncsn.ops.langevin_step_ref``.

CUDA-graph safety: the step size ``a`` (one value or one per sample), the
Philox ``seed`` and ``offset`` are *read from device tensors* inside the
kernel.  A captured graph therefore draws new noise on every replay as long as
the caller advances the offset tensor on the device
(``offset += langevin_noise_counters(x.numel())``), and a new step size is a
``copy_`` into the step tensor.

Noise stream (the same in ``fastncsn.ops.langevin_noise_ref``): the
element at storage position ``e`` of ``x`` gets component ``e % 4`` of four
normals made from ``tl.rand4x(seed, offset + e // 4)`` -- Philox4x32-10 keyed
by the 64-bit seed, counter ``offset + e//4`` split in two 32-bit words, four
uniforms -- by Box-Muller on the pairs (u0, u1) and (u2, u3), i.e. what
``tl.randn4x`` computes, with a cheaper sin/cos (``_box_muller``).  One Philox
evaluation per four normals and the polynomial sin/cos keep the kernel
memory-bound: about 70 instructions per element (ptxas, sm_90) against the
roughly 100 an H100 can issue per element while streaming 10 bytes of it at
the copy bandwidth; ``tl.randn`` per element would need about twice that.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..common import is_dense
from .cond_instance_norm import interpreting

#: elements per program on a GPU (8 per thread with 8 warps)
BLOCK = 2048
#: elements per program under TRITON_INTERPRET=1 (fewer, larger programs)
BLOCK_INTERPRETED = 16384


@triton.jit
def _box_muller(u1, u2):
    """(r cos 2 pi u2, r sin 2 pi u2) with r = sqrt(-2 log max(u1, 1e-7)), as Triton's
    ``pair_uniform_to_normal``, but with sin/cos evaluated by polynomials after an exact
    reduction in turns (libdevice's sinf/cosf cost about twice the instructions, and the
    kernel must stay memory-bound).  Agrees with exact sin/cos to about 1e-7."""
    r = tl.sqrt(-2.0 * tl.log(tl.maximum(u1, 1.0e-7)))
    v = u2 - 0.5                               # angle 2 pi u2 = 2 pi v + pi, v in [-1/2, 1/2)
    k = tl.floor(4.0 * v + 0.5)                # quadrant of 2 pi v: k in {-2, ..., 2}
    a = (v - 0.25 * k) * 6.283185307179586    # a in [-pi/4, pi/4]
    a2 = a * a
    sin_a = a * (1.0 + a2 * (-1.6666666666666666e-1 + a2 * (8.333333333333333e-3 + a2 * (
        -1.984126984126984e-4 + a2 * 2.755731922398589e-6))))
    cos_a = 1.0 + a2 * (-0.5 + a2 * (4.1666666666666664e-2 + a2 * (
        -1.388888888888889e-3 + a2 * 2.48015873015873e-5)))
    odd = (k == 1.0) | (k == -1.0)
    half = (k == 2.0) | (k == -2.0) | (k == -1.0)    # quadrants where sin(k pi/2 + .) flips sign
    sin_v = tl.where(odd, cos_a, sin_a)
    cos_v = tl.where(odd, sin_a, cos_a)
    sin_v = tl.where(half, -sin_v, sin_v)
    cos_v = tl.where((k == 2.0) | (k == -2.0) | (k == 1.0), -cos_v, cos_v)
    return -r * cos_v, -r * sin_v              # cos/sin(x + pi) = -cos/sin(x)


@triton.jit
def _normal_block(seed_ptr, offset_ptr, pid, BLOCK: tl.constexpr):
    """Standard normals of the storage positions ``pid*BLOCK + [0, BLOCK)`` (see the module docstring)."""
    seed = tl.load(seed_ptr)
    counters = tl.load(offset_ptr) + pid.to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    u0, u1, u2, u3 = tl.rand4x(seed, counters)
    z0, z1 = _box_muller(u0, u1)
    z2, z3 = _box_muller(u2, u3)
    # element 4j + i takes component i of counter j
    return tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))


@triton.jit
def _langevin_step_kernel(
    x_ptr,            # state (dense), updated in place
    score_ptr,        # score, same strides as x (bf16/fp16/fp32)
    noise_ptr,        # explicit noise, same strides as x (read only if HAS_NOISE)
    step_ptr,         # step size a: one value, or one per sample (PER_SAMPLE_STEP)
    seed_ptr,         # int64 Philox seed (read unless HAS_NOISE)
    offset_ptr,       # int64 Philox counter of storage position 0 (read unless HAS_NOISE)
    mask_ptr,         # inpainting mask (nonzero keeps `known`), uint8 or float (HAS_MASK)
    known_ptr,        # known values (HAS_MASK)
    numel,            # elements of x
    per_sample,       # elements per sample (numel // N); the batch dim is outermost in storage
    clamp_lo,         # lower clamp bound (CLAMP_LO)
    clamp_hi,         # upper clamp bound (CLAMP_HI)
    PER_SAMPLE_STEP: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    MASK_BCAST: tl.constexpr,   # mask holds one sample, shared by the batch
    KNOWN_BCAST: tl.constexpr,  # known holds one sample, shared by the batch
    CLAMP_LO: tl.constexpr,
    CLAMP_HI: tl.constexpr,
    ACC: tl.constexpr,          # arithmetic dtype (fp32; fp64 for fp64 states)
    BLOCK: tl.constexpr,        # elements per program (multiple of 4)
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < numel
    x = tl.load(x_ptr + offs, mask=inb, other=0.0).to(ACC)
    s = tl.load(score_ptr + offs, mask=inb, other=0.0).to(ACC)
    if PER_SAMPLE_STEP or MASK_BCAST or KNOWN_BCAST:
        # sample index without a 64-bit division per element: a block spans at most two
        # samples when a sample has at least BLOCK elements
        n0 = (pid.to(tl.int64) * BLOCK) // per_sample
        if per_sample >= BLOCK:
            sample = n0 + (offs >= (n0 + 1) * per_sample).to(tl.int64)
        else:
            sample = offs // per_sample
        within = offs - sample * per_sample
    if PER_SAMPLE_STEP:
        a = tl.load(step_ptr + sample, mask=inb, other=0.0).to(ACC)
    else:
        a = tl.load(step_ptr).to(ACC)
    if HAS_NOISE:
        z = tl.load(noise_ptr + offs, mask=inb, other=0.0).to(ACC)
    else:
        z = _normal_block(seed_ptr, offset_ptr, pid, BLOCK).to(ACC)
    if ACC == tl.float32:
        sqrt_a = tl.sqrt_rn(a)     # IEEE rounding, as torch.sqrt
    else:
        sqrt_a = tl.sqrt(a)
    x = x + (a * 0.5) * s + sqrt_a * z
    if HAS_MASK:
        moffs = within if MASK_BCAST else offs
        koffs = within if KNOWN_BCAST else offs
        keep = tl.load(mask_ptr + moffs, mask=inb, other=0) != 0
        x = tl.where(keep, tl.load(known_ptr + koffs, mask=inb, other=0.0).to(ACC), x)
    if CLAMP_LO:
        x = tl.maximum(x, clamp_lo)
    if CLAMP_HI:
        x = tl.minimum(x, clamp_hi)
    tl.store(x_ptr + offs, x.to(x_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _langevin_noise_kernel(
    out_ptr,          # dense output: the noise the step kernel would add, in storage order
    seed_ptr,         # int64 Philox seed
    offset_ptr,       # int64 Philox counter of storage position 0
    numel,            # elements of out
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    z = _normal_block(seed_ptr, offset_ptr, pid, BLOCK)
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=offs < numel)


# --------------------------------------------------------------------------- launch helpers


def _block() -> int:
    return BLOCK_INTERPRETED if interpreting() else BLOCK


def _same_layout(t: torch.Tensor, x: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """``t`` with ``x``'s strides (copied only when they differ) and whether it holds a single
    sample broadcast over the batch (shape ``x.shape[1:]`` or ``[1, *x.shape[1:]]``)."""
    if t.shape == x.shape:
        return (t if t.stride() == x.stride() else torch.empty_like(x, dtype=t.dtype).copy_(t)), False
    one = x[:1]
    if x.shape[0] > 1 and t.shape in (x.shape[1:], one.shape):
        t = t.reshape(one.shape)
        if t.stride()[1:] != one.stride()[1:]:
            t = torch.empty_like(one, dtype=t.dtype).copy_(t)
        return t, True
    try:
        return torch.empty_like(x, dtype=t.dtype).copy_(t.expand_as(x)), False
    except RuntimeError as exc:
        raise ValueError(f"{name}: expected a shape broadcastable to {tuple(x.shape)}, got {tuple(t.shape)}") from exc


def launch_langevin_step_(x: torch.Tensor, score: torch.Tensor, step_size: torch.Tensor, seed: torch.Tensor,
                          offset: torch.Tensor, noise: Optional[torch.Tensor] = None,
                          mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
                          clamp_lo: Optional[float] = None, clamp_hi: Optional[float] = None) -> None:
    """Run the step kernel on ``x`` in place (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    ``x`` must be dense (``is_dense``); ``score``/``noise``/``mask``/``known``
    are brought to ``x``'s strides when they differ (a copy).  ``step_size``
    is a float tensor with 1 or ``N`` elements, ``seed``/``offset`` int64
    tensors with one element (ignored when ``noise`` is given).
    """
    if not is_dense(x):
        raise ValueError("x: expected a contiguous or channels-last tensor (the step is in place)")
    if x.numel() == 0:
        return
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    score, _ = _same_layout(score, x, "score")
    step = step_size.reshape(-1)
    per_sample = x.numel() // x.shape[0]
    has_mask = mask is not None
    mask_bcast = known_bcast = False
    if has_mask:
        if known is None:
            raise ValueError("known: required when mask is given")
        mask, mask_bcast = _same_layout(mask, x, "mask")
        known, known_bcast = _same_layout(known, x, "known")
        if mask.dtype == torch.bool:
            mask = mask.view(torch.uint8)
    if noise is not None:
        noise, bcast = _same_layout(noise, x, "noise")
        if bcast:
            raise ValueError(f"noise: expected shape {tuple(x.shape)}, got one sample")
    block = _block()
    _langevin_step_kernel[(triton.cdiv(x.numel(), block),)](
        x, score, x if noise is None else noise, step, seed, offset,
        mask if has_mask else x, known if has_mask else x,
        x.numel(), per_sample, float(clamp_lo or 0.0), float(clamp_hi or 0.0),
        PER_SAMPLE_STEP=step.numel() > 1,
        HAS_NOISE=noise is not None, HAS_MASK=has_mask, MASK_BCAST=mask_bcast, KNOWN_BCAST=known_bcast,
        CLAMP_LO=clamp_lo is not None, CLAMP_HI=clamp_hi is not None, ACC=acc, BLOCK=block, num_warps=8)


def launch_langevin_noise(seed: torch.Tensor, offset: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Fill the dense tensor ``out`` with the noise the step kernel draws for a state laid out like
    ``out`` (storage order) with the same ``seed``/``offset``; returns ``out``."""
    if not is_dense(out):
        raise ValueError("out: expected a contiguous or channels-last tensor")
    if out.numel():
        block = _block()
        _langevin_noise_kernel[(triton.cdiv(out.numel(), block),)](out, seed, offset, out.numel(),
                                                                  BLOCK=block, num_warps=8)
    return out
