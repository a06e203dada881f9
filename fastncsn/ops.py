"""Public fused ops and backend dispatch.

This module is the only place that knows about backends.  Models and samplers
call the functions here with ``backend="auto" | "triton" | "cuda" | "torch"``:

* ``"torch"``  -- the pure-PyTorch reference (``fastncsn.reference``); runs anywhere.
* ``"triton"`` -- Triton kernels (``fastncsn.kernels``); CUDA tensors, or CPU
  tensors when ``TRITON_INTERPRET=1`` is set (that is how CI checks them).
* ``"cuda"``   -- the CUDA C++ extension (``fastncsn._C``, wrapped by
  ``fastncsn.cuda_ops``); CUDA tensors only, built by ``pip install .`` on a
  machine with CUDA.
* ``"auto"``   -- the fastest backend available for the tensor's device
  (``AUTO_PREFERENCE``); on the CPU that is ``"torch"``.  If a preferred
  backend is missing for a CUDA tensor, ``auto`` falls back and warns once.

Explicitly requesting an unavailable backend raises ``BackendUnavailableError``
with the reason (never a silent fallback).

Every backend module exposes the same function names as this module
(``cond_instance_norm_plus`` ...), plus ``available(device) -> (bool, reason)``.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

import torch

from . import reference
from .reference import langevin_noise_counters

__all__ = [
    "BACKENDS",
    "AUTO_PREFERENCE",
    "BackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "cond_instance_norm_plus",
    "langevin_step_",
    "langevin_noise_counters",
]

BACKENDS = ("auto", "triton", "cuda", "torch")

#: order in which ``auto`` tries backends for CUDA tensors, per op.  Keep in
#: sync with the measured figures in ``benchmarks/results``: on the H100
#: (``h100-2026-11-22-cuda-ops.json``) the CUDA C++ op took, as a geometric mean
#: over the 24 (CIN++) or 8 (Langevin) benchmarked shapes, 0.81x (CIN++ forward),
#: 0.70x (CIN++ backward) and 0.28x (Langevin step) the Triton kernel's time, so
#: ``cuda`` comes first where the extension is built (Triton stays faster on the
#: largest fp32 NCHW CIN++ shapes; a per-shape choice is future work).
AUTO_PREFERENCE = {
    "cond_instance_norm_plus": ("cuda", "triton", "torch"),
    "langevin_step_": ("cuda", "triton", "torch"),
}

_BACKEND_MODULES = {"triton": "fastncsn.kernels", "cuda": "fastncsn.cuda_ops"}
_module_cache: dict = {}
_warned: set = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def _backend_module(name: str):
    """Import a backend module lazily; return (module or None, reason)."""
    if name not in _module_cache:
        try:
            _module_cache[name] = (importlib.import_module(_BACKEND_MODULES[name]), "")
        except Exception as exc:  # ImportError, or triton failing to initialise
            _module_cache[name] = (None, f"{_BACKEND_MODULES[name]} could not be imported: {exc}")
    return _module_cache[name]


def _backend_ok(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "torch":
        return True, ""
    mod, reason = _backend_module(name)
    if mod is None:
        return False, reason
    return mod.available(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this process (``"torch"`` always)."""
    device = torch.device(device)
    return [b for b in ("triton", "cuda", "torch") if _backend_ok(b, device)[0]]


def resolve_backend(backend: str, device: torch.device | str, op: str = "cond_instance_norm_plus") -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend for ``device``.

    Raises ``ValueError`` for an unknown name and ``BackendUnavailableError``
    when an explicitly requested backend cannot run on ``device``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend != "auto":
        ok, reason = _backend_ok(backend, device)
        if not ok:
            raise BackendUnavailableError(f"backend={backend!r} is unavailable for {device} tensors: {reason}")
        return backend
    if device.type != "cuda":
        return "torch"
    for cand in AUTO_PREFERENCE.get(op, ("triton", "cuda", "torch")):
        ok, reason = _backend_ok(cand, device)
        if ok:
            return cand
        key = (op, cand)
        if key not in _warned and os.environ.get("FASTNCSN_QUIET_FALLBACK") != "1":
            _warned.add(key)
            warnings.warn(f"fastncsn: backend 'auto' skips {cand!r} for {op} ({reason}); "
                          f"falling back to the next backend", RuntimeWarning, stacklevel=3)
    return "torch"


def cond_instance_norm_plus(x: torch.Tensor, level_index: torch.Tensor, weight: torch.Tensor,
                            eps: float = reference.CIN_EPS, activation: Optional[str] = None,
                            backend: str = "auto") -> torch.Tensor:
    """Conditional instance norm++ with an optional fused activation.

    Shapes: ``x`` ``[N, C, H, W]`` (NCHW or channels-last), ``level_index``
    ``[N]`` int64, ``weight`` ``[L, 3C]`` (gamma | alpha | beta) or ``[L, 2C]``.
    Formula: see ``fastncsn.reference.cond_instance_norm_plus_ref`` (NCSN
    appendix A, as the reference code computes it).  Differentiable with
    respect to ``x`` and ``weight`` on every backend.
    """
    b = resolve_backend(backend, x.device, "cond_instance_norm_plus")
    if b == "torch":
        return reference.cond_instance_norm_plus_ref(x, level_index, weight, eps, activation)
    mod, _ = _backend_module(b)
    return mod.cond_instance_norm_plus(x, level_index, weight, eps, activation)


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
      ``offset + e // 4``) through Box-Muller
      (``fastncsn.reference.langevin_noise_ref``).  The Triton backend draws it
      inside the kernel and reads seed, offset and step size on the device, so
      a captured CUDA graph draws fresh noise on every replay if the caller
      advances the offset tensor on the device by
      ``langevin_noise_counters(x.numel())`` after each step (steps that share
      an offset share their noise).
    * ``noise=``: an explicit standard-normal tensor shaped like ``x``.
    * ``generator=``: a ``torch.Generator`` on ``x``'s device; ``z`` is drawn
      with ``torch.randn`` (not graph safe, different stream from Philox).

    ``backend``: "auto" | "triton" | "cuda" | "torch" (see ``resolve_backend``).
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
    b = resolve_backend(backend, x.device, "langevin_step_")
    if b == "torch":
        z = noise if noise is not None else reference.langevin_noise_ref(seed, offset, x)
        x.copy_(reference.langevin_step_ref(x, score, step_size, z, mask=mask, known=known, clamp=clamp))
        return x
    mod, _ = _backend_module(b)
    extra = {} if noise is None else {"noise": noise}
    mod.langevin_step_(x, score, step_size, seed, offset, mask=mask, known=known, clamp=clamp, **extra)
    return x
