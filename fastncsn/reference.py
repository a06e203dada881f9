"""Pure-PyTorch reference ("truth") for every fused op in fastncsn.

Every fast path (Triton kernels in ``fastncsn.kernels``, the CUDA extension
``fastncsn._C``) is tested against the functions in this module.  They are
written for clarity, follow the reference NCSN implementation operation for
operation, and run on any device (CPU included).

Functions
---------
``cond_instance_norm_plus_ref``
    Conditional instance normalisation++ (CIN++), NCSN (seed 003) appendix A,
    exactly as the reference code computes it.
``langevin_step_ref``
    One Langevin update ``x + a/2 * s + sqrt(a) * z`` (NCSN eq. 4 /
    Algorithm 1) with optional inpainting blend and clamp.
``langevin_noise_ref``
    The counter-based (Philox) Gaussian noise the fused Langevin kernels draw
    from a seed and an offset, so every backend can add the same ``z``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "CIN_EPS",
    "cond_instance_norm_plus_ref",
    "langevin_step_ref",
    "langevin_noise_ref",
    "langevin_noise_counters",
    "ACTIVATIONS",
]

#: epsilon of both the instance-norm variance and the channel-mean variance
#: (``nn.InstanceNorm2d`` default and the literal ``1e-5`` of the reference code)
CIN_EPS = 1e-5

#: activations that may be fused into CIN++
ACTIVATIONS = (None, "elu")


def _check_cin_args(x: torch.Tensor, level_index: torch.Tensor, weight: torch.Tensor,
                    activation: Optional[str]) -> int:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    n, c = x.shape[:2]
    if not isinstance(level_index, torch.Tensor) or level_index.dtype not in (torch.int64, torch.int32):
        raise TypeError("level_index: expected an integer tensor of shape [N]")
    if level_index.shape != (n,):
        raise ValueError(f"level_index: expected shape [{n}], got {tuple(level_index.shape)}")
    if weight.dim() != 2 or weight.shape[1] not in (2 * c, 3 * c):
        raise ValueError(f"weight: expected [num_levels, 3*C] (gamma|alpha|beta) or [num_levels, 2*C] "
                         f"(gamma|alpha) with C={c}, got {tuple(weight.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return c


def cond_instance_norm_plus_ref(x: torch.Tensor, level_index: torch.Tensor, weight: torch.Tensor,
                                eps: float = CIN_EPS, activation: Optional[str] = None) -> torch.Tensor:
    """Conditional instance normalisation++ as the reference NCSN code computes it.

    With ``mu[n, c]`` the spatial mean of channel ``c``, ``s[n, c]`` its (biased)
    spatial standard deviation, ``m[n]`` and ``v[n]`` the mean and the *unbiased*
    variance of ``mu[n, :]`` over channels, and ``h = (x - mu) / sqrt(s^2 + eps)``::

        out = gamma[l] * (h + alpha[l] * (mu - m) / sqrt(v + eps)) + beta[l]

    where ``l = level_index[n]`` selects one row of the per-level embedding
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
        level_index: ``[N]`` integer noise-level index per sample.
        weight: ``[L, 3C]`` rows ``gamma | alpha | beta``, or ``[L, 2C]``
            (``gamma | alpha``, no bias: the reference's ``bias=False``).
        eps: variance epsilon (1e-5 in the reference).
        activation: ``None`` or ``"elu"`` applied to the output.

    Returns:
        ``[N, C, H, W]`` tensor of ``x``'s dtype.
    """
    c = _check_cin_args(x, level_index, weight, activation)
    xf = x.float()
    mu = xf.mean(dim=(2, 3))                                   # [N, C]
    var = xf.var(dim=(2, 3), unbiased=False)                   # [N, C]
    h = (xf - mu[:, :, None, None]) * torch.rsqrt(var + eps)[:, :, None, None]
    if c > 1:
        m = mu.mean(dim=1, keepdim=True)
        v = mu.var(dim=1, keepdim=True, unbiased=True)
        mean_term = (mu - m) / torch.sqrt(v + eps)             # [N, C]
    else:
        mean_term = torch.zeros_like(mu)
    rows = weight.float()[level_index]                         # [N, 2C or 3C]
    gamma, alpha = rows[:, :c], rows[:, c:2 * c]
    out = gamma[:, :, None, None] * (h + (alpha * mean_term)[:, :, None, None])
    if rows.shape[1] == 3 * c:
        out = out + rows[:, 2 * c:, None, None]
    if activation == "elu":
        out = F.elu(out)
    return out.to(x.dtype)


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


def _philox4x32(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, rounds: int = 10):
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
    dense = like.is_contiguous() or (like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last))
    out = torch.empty_like(like if dense else like.contiguous(), dtype=torch.float32)
    numel = out.numel()
    dev = out.device
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=dev).reshape(())
    counters = torch.as_tensor(offset, dtype=torch.int64, device=dev).reshape(()) + \
        torch.arange(langevin_noise_counters(numel), dtype=torch.int64, device=dev)
    words = _philox4x32(seed_t, counters & _M32, (counters >> 32) & _M32)
    u = [_uint32_to_uniform(w) for w in words]
    z0, z1 = _box_muller(u[0], u[1])
    z2, z3 = _box_muller(u[2], u[3])
    z = torch.stack([z0, z1, z2, z3], dim=1).reshape(-1)[:numel]
    out.as_strided((numel,), (1,)).copy_(z)
    return out
