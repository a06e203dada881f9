"""The Langevin step op: one update ``x <- x + a/2 * score + sqrt(a) * z`` (NCSN eq. 4,
Algorithm 1 line 6) with the Gaussian noise ``z`` drawn from a counter-based (Philox) stream.

* ``langevin_step_ref`` -- the pure-PyTorch reference of the update (out of place);
* ``langevin_noise_ref`` / ``langevin_noise_counters`` -- the Philox stream the fused
  kernels draw from a seed and an offset, in pure PyTorch, so every backend adds the same ``z``;
* ``check_step_args`` -- the argument checks and conversions of both fast backends;
* ``langevin_step_`` -- the public, in-place op with backend dispatch.

The Triton kernel is ``fastncsn.ops.triton.langevin``, the CUDA kernel ``csrc/langevin.cu``
(wrapped by ``fastncsn.ops.cuda``); both are tested against the functions here.
"""
from __future__ import annotations

from typing import Optional

import torch

from .common import check_same_device, cpu_runs_triton, is_dense, scalar_tensor
from .dispatch import backend_module, resolve_backend

__all__ = [
    "langevin_step_",
    "langevin_step_ref",
    "langevin_noise_ref",
    "langevin_noise_counters",
    "philox4x32",
    "check_step_args",
]


def langevin_step_ref(x: torch.Tensor, score: torch.Tensor, step_size: torch.Tensor | float,
                      noise: torch.Tensor, mask: Optional[torch.Tensor] = None,
                      known: Optional[torch.Tensor] = None, clamp: Optional[tuple] = None) -> torch.Tensor:
    """One Langevin update (NCSN eq. 4, Algorithm 1 line 6), out of place.

    ``x_new = x + a/2 * score + sqrt(a) * noise`` with ``a = step_size``; where
    ``mask`` is 1 (known pixels of an inpainting problem) ``x_new = known``;
    finally ``x_new`` is clamped to ``clamp = (lo, hi)`` if given.

    Args:
        x: ``[N, ...]`` sample state (fp32 in the fast sampler).
        score: same shape as ``x`` (any float dtype, upcast to ``x``'s dtype).
        step_size: ``a`` as a Python float, a 0-d tensor or a ``[N]`` tensor
            (one step size per sample).
        noise: standard normal noise, same shape as ``x``.
        mask: optional, broadcastable to ``x``; 1 keeps ``known``.
        known: required with ``mask``; the (noised) known values.
        clamp: optional ``(lo, hi)``.
    """
    if score.shape != x.shape:
        raise ValueError(f"score: expected shape {tuple(x.shape)}, got {tuple(score.shape)}")
    if noise.shape != x.shape:
        raise ValueError(f"noise: expected shape {tuple(x.shape)}, got {tuple(noise.shape)}")
    a = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    if a.dim() == 1:
        if a.shape[0] != x.shape[0]:
            raise ValueError(f"step_size: expected a scalar or shape [{x.shape[0]}], got {tuple(a.shape)}")
        a = a.view(-1, *([1] * (x.dim() - 1)))
    elif a.dim() != 0:
        raise ValueError(f"step_size: expected a scalar or shape [{x.shape[0]}], got {tuple(a.shape)}")
    out = x + a / 2 * score.to(x.dtype) + torch.sqrt(a) * noise.to(x.dtype)
    if mask is not None:
        if known is None:
            raise ValueError("known: required when mask is given")
        out = torch.where(mask.bool(), known.to(x.dtype), out)
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    return out


# ----------------------------------------------------------------------------- Philox noise

_M32 = 0xFFFFFFFF


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` (``a`` a 32-bit constant, ``b`` int64 holding uint32)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low = ((a_hi * b_lo + a_lo * b_hi) << 16) + a_lo * b_lo      # < 2**50: no int64 overflow
    return (a_hi * b_hi + (low >> 32)) & _M32, low & _M32


def philox4x32(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, rounds: int = 10):
    """Philox4x32 (Salmon et al. 2011) with key = the 64-bit ``seed``, counter ``(c0, c1, 0, 0)``,
    as ``triton.language.randint4x`` computes it."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(0xCD9E8D57, c2)
        hi_a, lo_a = _mul_hi_lo(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def _uint32_to_uniform(v: torch.Tensor) -> torch.Tensor:
    """uint32 (held in int64) -> float32 in [0, 1), Triton's ``uint_to_uniform_float``."""
    v = torch.where(v >= 2 ** 31, v - 2 ** 32, v)               # reinterpret as int32
    v = torch.where(v < 0, -v - 1, v)
    return v.to(torch.float32) * 4.6566127342e-10


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.sqrt(-2.0 * torch.log(torch.clamp(u1, min=1.0e-7)))
    theta = u2 * 6.283185307179586
    return r * torch.cos(theta), r * torch.sin(theta)


def langevin_noise_counters(numel: int) -> int:
    """Philox counters one Langevin step of ``numel`` elements consumes: ``ceil(numel / 4)``.

    Advance the offset by this much per step to get fresh, non-overlapping noise."""
    return (int(numel) + 3) // 4


def langevin_noise_ref(seed: torch.Tensor | int, offset: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """The standard normal noise ``z`` of the fused Langevin step, in pure PyTorch.

    The element at storage position ``e`` of ``like`` (its row-major index when
    ``like`` is contiguous) gets component ``e % 4`` of four normals made from
    the four uniforms of Triton's ``rand4x(seed, offset + e // 4)``
    (Philox4x32-10 keyed by the 64-bit ``seed`` with counter
    ``offset + e // 4``) by Box-Muller on the pairs (u0, u1) and (u2, u3):
    ``(r cos 2 pi u, r sin 2 pi u)``, ``r = sqrt(-2 log max(u', 1e-7))``.  The
    uniforms are bitwise those of the kernel; the normals agree to about 1e-6
    (float32 rounding of ``log``/``cos``/``sin``, which the kernel evaluates
    its own way).

    Args:
        seed: int64 0-d/1-element tensor (on ``like``'s device: no host sync) or int.
        offset: int64 0-d/1-element tensor or int: the first Philox counter.
        like: a contiguous or channels-last tensor; gives shape, layout and device.

    Returns:
        float32 tensor with ``like``'s shape and strides.
    """
    out = torch.empty_like(like if is_dense(like) else like.contiguous(), dtype=torch.float32)
    numel = out.numel()
    dev = out.device
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=dev).reshape(())
    counters = torch.as_tensor(offset, dtype=torch.int64, device=dev).reshape(()) + \
        torch.arange(langevin_noise_counters(numel), dtype=torch.int64, device=dev)
    words = philox4x32(seed_t, counters & _M32, (counters >> 32) & _M32)
    u = [_uint32_to_uniform(w) for w in words]
    z0, z1 = _box_muller(u[0], u[1])
    z2, z3 = _box_muller(u[2], u[3])
    z = torch.stack([z0, z1, z2, z3], dim=1).reshape(-1)[:numel]
    out.as_strided((numel,), (1,)).copy_(z)
    return out


# ----------------------------------------------------------------------------- the op


def check_step_args(x: torch.Tensor, score: torch.Tensor, step_size, seed, offset,
                    noise: Optional[torch.Tensor], mask: Optional[torch.Tensor], known: Optional[torch.Tensor],
                    step_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the arguments of a fast backend's ``langevin_step_`` (the contract of ``langevin_step_``);
    return ``(step_size, seed, offset)`` as tensors on ``x``'s device: a float ``step_size`` becomes a
    0-d ``step_dtype`` tensor, ``seed``/``offset`` 0-d int64 tensors (zeros when ``noise`` is given)."""
    if not isinstance(score, torch.Tensor) or score.shape != x.shape:
        raise ValueError(f"score: expected a tensor of shape {tuple(x.shape)}, "
                         f"got {tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
    if isinstance(step_size, torch.Tensor):
        if step_size.numel() != 1 and step_size.shape != (x.shape[0],):
            raise ValueError(f"step_size: expected one element or shape [{x.shape[0]}], "
                             f"got {tuple(step_size.shape)}")
    else:
        step_size = torch.tensor(float(step_size), dtype=step_dtype, device=x.device)
    if noise is None:
        seed, offset = scalar_tensor(seed, "seed", x.device), scalar_tensor(offset, "offset", x.device)
    else:
        if noise.shape != x.shape:
            raise ValueError(f"noise: expected shape {tuple(x.shape)}, got {tuple(noise.shape)}")
        seed = offset = torch.zeros((), dtype=torch.int64, device=x.device)
    if (mask is None) != (known is None):
        raise ValueError("mask, known: pass both or neither")
    check_same_device(x.device, score=score, step_size=step_size, noise=noise, mask=mask, known=known)
    return step_size, seed, offset


def langevin_step_(x: torch.Tensor, score: torch.Tensor, step_size, seed=None, offset=None, *,
                   noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                   mask: Optional[torch.Tensor] = None, known: Optional[torch.Tensor] = None,
                   clamp: Optional[tuple] = None, backend: str = "auto") -> torch.Tensor:
    """One Langevin update in place (NCSN eq. 4, Algorithm 1 line 6); returns ``x``.

    ``x <- x + a/2 * score + sqrt(a) * z`` with ``a = step_size``, then
    ``x <- known`` where ``mask`` is nonzero (inpainting) and ``x <- clamp(x, lo, hi)``.

    Shapes: ``x`` ``[N, ...]`` (contiguous or channels-last; fp32 in the
    samplers), ``score`` like ``x`` (fp32/bf16/fp16), ``step_size`` a 0-d
    tensor, a ``[N]`` tensor (one step size per sample) or a float; ``mask`` and
    ``known`` the shape of ``x`` or of one sample.

    The noise ``z`` comes from exactly one source:

    * ``seed=``, ``offset=`` (int64 one-element tensors on ``x``'s device, or
      ints): counter-based Philox noise, the same on every backend (up to
      float32 rounding of log/cos/sin): the element at storage position ``e``
      of ``x`` gets component ``e % 4`` of Philox4x32-10(key ``seed``, counter
      ``offset + e // 4``) through Box-Muller (``langevin_noise_ref``).  The
      fast backends draw it inside the kernel and read seed, offset and step
      size on the device, so a captured CUDA graph draws fresh noise on every
      replay if the caller advances the offset tensor on the device by
      ``langevin_noise_counters(x.numel())`` after each step (steps that share
      an offset share their noise).
    * ``noise=``: an explicit standard-normal tensor shaped like ``x``.
    * ``generator=``: a ``torch.Generator`` on ``x``'s device; ``z`` is drawn
      with ``torch.randn`` (not graph safe, different stream from Philox).

    ``backend``: "auto" | "triton" | "cuda" | "torch" (see ``fastncsn.ops.resolve_backend``).
    """
    given = [name for name, v in (("noise", noise), ("generator", generator)) if v is not None]
    if seed is not None or offset is not None:
        if seed is None or offset is None:
            raise ValueError("seed, offset: pass both (or use noise= / generator=)")
        given.append("seed/offset")
    if len(given) != 1:
        raise ValueError(f"noise source: expected exactly one of seed= and offset=, noise= or generator=, "
                         f"got {given or 'none'}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x: expected a floating-point tensor [N, ...]")
    if isinstance(step_size, (int, float)) and not step_size > 0:
        raise ValueError(f"step_size: expected a positive step size, got {step_size}")
    if generator is not None:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device)
    b = resolve_backend(backend, x.device, "langevin_step_", like=score if isinstance(score, torch.Tensor) else None)
    if b == "torch":
        z = noise if noise is not None else langevin_noise_ref(seed, offset, x)
        x.copy_(langevin_step_ref(x, score, step_size, z, mask=mask, known=known, clamp=clamp))
        return x
    mod, _ = backend_module(b)
    extra = {} if noise is None else {"noise": noise}
    mod.langevin_step_(x, score, step_size, seed, offset, mask=mask, known=known, clamp=clamp, **extra)
    return x


# --------------------------------------------------------------------------- the Triton backend's custom op
#
#   fastncsn::langevin_step_(x!, score, step_size, seed, offset, noise?, mask?, known?, clamp_lo?, clamp_hi?)
#
# the Triton launch as its CUDA kernel, a CPU kernel (the Triton kernel under TRITON_INTERPRET=1, else
# the reference math; see fastncsn.ops.common.CPU_IMPL) and a fake kernel, so that opcheck and
# torch.compile(fullgraph=True) work on any device.


def _launch_step(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi) -> None:
    from .triton.langevin import launch_langevin_step_   # lazy: importing the ops never imports triton
    launch_langevin_step_(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi)


@torch.library.custom_op("fastncsn::langevin_step_", mutates_args=("x",), device_types="cuda")
def langevin_step_op(x: torch.Tensor, score: torch.Tensor, step_size: torch.Tensor, seed: torch.Tensor,
                     offset: torch.Tensor, noise: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                     known: Optional[torch.Tensor], clamp_lo: Optional[float], clamp_hi: Optional[float]) -> None:
    """In-place ``x += a/2 * score + sqrt(a) * z`` (+ blend, clamp) with z from Philox(seed, offset) or ``noise``."""
    _launch_step(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi)


@langevin_step_op.register_kernel("cpu")
def _langevin_step_cpu(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi):
    if cpu_runs_triton():
        _launch_step(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi)
        return
    z = noise if noise is not None else langevin_noise_ref(seed, offset, x)
    a = step_size.reshape(()) if step_size.numel() == 1 else step_size.reshape(-1)
    clamp = None if clamp_lo is None and clamp_hi is None else (clamp_lo, clamp_hi)
    x.copy_(langevin_step_ref(x, score, a, z, mask=mask, known=known, clamp=clamp))


@langevin_step_op.register_fake
def _langevin_step_fake(x, score, step_size, seed, offset, noise, mask, known, clamp_lo, clamp_hi):
    return None
