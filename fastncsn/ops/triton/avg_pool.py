"""The 5x5 stride-1 zero-padded average pool (``count_include_pad=True``) in Triton.

The truth is ``fastncsn.ops.avg_pool5x5_ref``: ``out[h, w] = 1/25 sum_{|i|,|j|<=2} x[h+i, w+j]``
with zeros outside the image, per sample and channel.

Design: one read, one write
---------------------------
A program owns a column strip of the output -- ``BLOCK_W`` columns x ``BLOCK_C`` channels of one
sample -- over a chunk of ``rows_per_prog`` rows, and walks down the rows with a sliding window
(separable sum, vertical part kept in registers):

* for each input row ``r`` it forms the horizontal 5-tap sums ``s_r[w] = sum_j x[r, w + j]`` from
  five shifted masked loads of the row (the shifted loads touch the same cache lines: one DRAM read,
  the other four from L1/L2; only the 2-column halo at each side of the strip is fetched twice);
* it keeps the last five row sums ``s_{r-4} .. s_r`` in registers (rotated each step) and writes
  output row ``r - 2`` as ``(s_{r-4} + ... + s_r) / 25`` (four adds, no running-sum subtraction, so no
  rounding drift along the column).

So every input element is loaded 5 times (not 25) and read from DRAM about once (plus a halo of 4
rows per row chunk and 4 columns per strip), every output written once.  Arithmetic is in fp32
(fp64 for fp64 inputs), the input upcast before any add; one rounding to the output dtype.

Layouts: the tile is ``[BLOCK_W, BLOCK_C]`` addressed through the strides, so the same kernel reads
NCHW (``stride_w == 1``; tiles wide in W, several channels per program for narrow images) and
channels-last (``stride_c == 1``; tiles wide in C, the contiguous axis) without copies.
Grid: ``(N * channel blocks, column strips, row chunks)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..common import dense_format

#: most elements of one [BLOCK_W, BLOCK_C] tile on a GPU (each of the 5 held row sums and the
#: loads are one tile: 4 warps x 32 threads x 8 values per tile array at 1024)
TILE = 1024
#: under TRITON_INTERPRET=1 every program instance costs milliseconds: bigger tiles, fewer programs
TILE_INTERPRETED = 4096
#: rows of one program's chunk on a GPU (halo: 4 extra rows read per chunk, from L2 mostly)
ROWS = 16

__all__ = ["PoolPlan", "pool_plan", "launch_avg_pool5x5", "TILE", "ROWS"]


@triton.jit
def _row_sum5(row_ptr, offs_w, cmask, row_ok, W, stride_w, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
              ACC: tl.constexpr):
    """Horizontal 5-tap sums ``sum_{j=-2..2} x[w + j]`` of one input row for the strip's columns
    ``offs_w`` (zeros outside ``[0, W)``, for channels outside ``cmask`` and where not ``row_ok``, a
    ``[BLOCK_W]`` block: the Triton 3.9 interpreter refuses masks built from scalar booleans)."""
    acc = tl.zeros([BLOCK_W, BLOCK_C], ACC)
    for j in tl.static_range(5):
        ws = offs_w + (j - 2)
        m = ((ws >= 0) & (ws < W) & row_ok)[:, None] & cmask
        acc += tl.load(row_ptr + ws[:, None] * stride_w, mask=m, other=0.0).to(ACC)
    return acc


@triton.jit
def _avg_pool5x5_kernel(
    x_ptr,            # [N, C, H, W] input, element (n, c, h, w) at n*stride_n + c*stride_c + h*stride_h + w*stride_w
    out_ptr,          # output, same shape, strides and dtype as x
    C,                # channels
    H,                # rows
    W,                # columns
    stride_n,         # x/out stride of the batch dim (elements)
    stride_c,         # x/out stride of the channel dim (1 for channels-last)
    stride_h,         # x/out stride of the row dim
    stride_w,         # x/out stride of the column dim (1 for NCHW)
    rows_per_prog,    # output rows of one program (grid axis 2 covers H in chunks of this)
    BLOCK_W: tl.constexpr,    # columns per tile (a power of two)
    BLOCK_C: tl.constexpr,    # channels per tile (a power of two)
    ACC: tl.constexpr,        # accumulation dtype (fp32, or fp64 for fp64 inputs)
):
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // c_blocks
    cs = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    h_lo = tl.program_id(2) * rows_per_prog
    h_hi = tl.minimum(H, h_lo + rows_per_prog)
    base = n.to(tl.int64) * stride_n            # int64: the batch may exceed 2**31 elements (one sample may not)
    cmask = (cs < C)[None, :]
    tile = offs_w[:, None] * stride_w + cs[None, :] * stride_c     # [BLOCK_W, BLOCK_C] offsets in a row
    out_mask = (offs_w < W)[:, None] & cmask
    s0 = tl.zeros([BLOCK_W, BLOCK_C], ACC)    # row sums of rows r-4 .. r (s4 the newest)
    s1 = tl.zeros([BLOCK_W, BLOCK_C], ACC)
    s2 = tl.zeros([BLOCK_W, BLOCK_C], ACC)
    s3 = tl.zeros([BLOCK_W, BLOCK_C], ACC)
    s4 = tl.zeros([BLOCK_W, BLOCK_C], ACC)
    for r in range(h_lo - 2, h_hi + 2):
        # row conditions as [BLOCK_W] blocks, not scalars: a scalar bool in a mask is an int32 array
        # under the Triton 3.9 interpreter ("mask has unsupported dtype"); compiled, it is the same code
        rows = r + tl.zeros([BLOCK_W], tl.int32)
        row_ok = (rows >= 0) & (rows < H)
        row_ptr = x_ptr + base + r * stride_h + cs[None, :] * stride_c
        s0, s1, s2, s3 = s1, s2, s3, s4
        s4 = _row_sum5(row_ptr, offs_w, cmask, row_ok, W, stride_w, BLOCK_W, BLOCK_C, ACC)
        o = r - 2                                  # the output row centred in the window
        y = (s0 + s1 + s2 + s3 + s4) * (1.0 / 25.0)
        tl.store(out_ptr + base + o * stride_h + tile, y.to(out_ptr.dtype.element_ty),
                 mask=out_mask & (rows - 2 >= h_lo)[:, None])


# --------------------------------------------------------------------------- launch

_TL_ACC = {torch.float32: tl.float32, torch.bfloat16: tl.float32, torch.float16: tl.float32,
           torch.float64: tl.float64}


def interpreting() -> bool:
    """True when the kernels of this module were built by the Triton interpreter."""
    interp = getattr(getattr(triton.runtime, "interpreter", None), "InterpretedFunction", None)
    return interp is not None and isinstance(_avg_pool5x5_kernel, interp)


@dataclass(frozen=True)
class PoolPlan:
    """How a launch tiles ``x`` (see the module docstring)."""

    block_w: int
    block_c: int
    rows_per_prog: int
    num_warps: int

    def grid(self, n: int, c: int, h: int, w: int) -> tuple[int, int, int]:
        return (n * triton.cdiv(c, self.block_c), triton.cdiv(w, self.block_w), triton.cdiv(h, self.rows_per_prog))


def pool_plan(x: torch.Tensor, tile: int | None = None, rows: int | None = None) -> PoolPlan:
    """Tiling of a dense ``x`` ``[N, C, H, W]``: channels-last tiles take up to 128 channels (the
    contiguous axis) and fill the rest with columns; NCHW tiles take the row's columns (up to the
    tile) and fill the rest with channels.  ``tile``/``rows`` override the caps (tests shrink them to
    exercise the strip and chunk edges).  Sizes from the register budget, not yet from timings."""
    _, c, h, w = x.shape
    tile = tile or (TILE_INTERPRETED if interpreting() else TILE)
    rows = rows or (1 << 30 if interpreting() else ROWS)
    p2 = triton.next_power_of_2
    if x.stride(1) == 1 and c > 1:             # channels-last
        block_c = min(p2(c), 128, tile)
        block_w = min(p2(w), max(1, tile // block_c))
    else:
        block_w = min(p2(w), tile)
        block_c = min(p2(c), max(1, tile // block_w))
    return PoolPlan(block_w, block_c, max(1, min(rows, h)), 4 if block_w * block_c <= 1024 else 8)


def launch_avg_pool5x5(x: torch.Tensor, tile: int | None = None, rows: int | None = None) -> torch.Tensor:
    """Run the pool kernel on ``x`` ``[N, C, H, W]`` (CUDA, or CPU under ``TRITON_INTERPRET=1``);
    returns the output like ``x`` (dtype, and layout by ``dense_format``).  A non-dense ``x`` is
    copied to NCHW first."""
    if x.dtype not in _TL_ACC:
        raise ValueError(f"x: expected float32, bfloat16, float16 or float64, got {x.dtype}")
    if not x.is_contiguous(memory_format=dense_format(x)):
        x = x.contiguous()
    out = torch.empty_like(x, memory_format=dense_format(x))
    n, c, h, w = x.shape
    if x.numel() == 0:
        return out
    plan = pool_plan(x, tile, rows)
    _avg_pool5x5_kernel[plan.grid(n, c, h, w)](
        x, out, c, h, w, x.stride(0), x.stride(1), x.stride(2), x.stride(3), plan.rows_per_prog,
        BLOCK_W=plan.block_w, BLOCK_C=plan.block_c, ACC=_TL_ACC[x.dtype], num_warps=plan.num_warps)
    return out
