"""Backends of the fused ops and the ``auto`` choice.

This module is the only place that knows about backends.  The ops
(``fastncsn.ops.cond_instance_norm_plus``, ``fastncsn.ops.langevin_step_``) take
``backend="auto" | "triton" | "cuda" | "torch"`` and resolve it here:

* ``"torch"``  -- the pure-PyTorch reference (the ``*_ref`` function of the op's
  file in ``fastncsn.ops``); runs anywhere.
* ``"triton"`` -- Triton kernels (``fastncsn.ops.triton``); CUDA tensors, or CPU
  tensors when ``TRITON_INTERPRET=1`` is set (that is how CI checks them).
* ``"cuda"``   -- the CUDA C++ extension (``fastncsn._C``, wrapped by
  ``fastncsn.ops.cuda``); CUDA tensors only, built by ``pip install .`` on a
  machine with CUDA.
* ``"auto"``   -- the fastest backend available for the tensor's device
  (``AUTO_PREFERENCE``); on the CPU that is ``"torch"``.  If a preferred
  backend is missing for a CUDA tensor, ``auto`` falls back and warns once.

Explicitly requesting an unavailable backend raises ``BackendUnavailableError``
with the reason (never a silent fallback).

Every backend module exposes the ops under their public names
(``cond_instance_norm_plus``, ``langevin_step_``, ``langevin_noise``) plus
``available(device) -> (bool, reason)``; ``backend_module(name)`` imports it lazily
(importing ``fastncsn.ops`` never imports triton or the extension).
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

__all__ = [
    "BACKENDS",
    "AUTO_PREFERENCE",
    "BackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "backend_module",
]

#: every value of a ``backend`` argument (and of the CLI's ``--backend``)
BACKENDS = ("auto", "triton", "cuda", "torch")

#: order in which ``auto`` tries backends for CUDA tensors, per op; also the backends that
#: implement the op (an explicit request for another one raises).  Keep in
#: sync with the measured figures in ``benchmarks/results``: on the H100
#: (``h100-2026-11-22-cuda-ops.json``) the CUDA C++ op took, as a geometric mean
#: over the 24 (CIN++) or 8 (Langevin) benchmarked shapes, 0.81x (CIN++ forward),
#: 0.70x (CIN++ backward) and 0.28x (Langevin step) the Triton kernel's time, so
#: ``cuda`` comes first where the extension is built (Triton stays faster on the
#: largest fp32 NCHW CIN++ shapes; a per-shape choice is future work).
AUTO_PREFERENCE = {
    "cond_instance_norm_plus": ("cuda", "triton", "torch"),
    # the fused bias/residual forms (bias=, add_cond_instance_norm_plus): the extension has none
    "cond_instance_norm_plus_glue": ("triton", "torch"),
    "langevin_step_": ("cuda", "triton", "torch"),
    # no CUDA C++ version; Triton not yet measured against F.avg_pool2d (benchmarks/NOTES.md)
    "avg_pool5x5": ("triton", "torch"),
}

_BACKEND_MODULES = {"triton": "fastncsn.ops.triton", "cuda": "fastncsn.ops.cuda"}
_module_cache: dict = {}
_warned: set = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


def backend_module(name: str):
    """Import the module of backend ``name`` ("triton" | "cuda") lazily; return (module or None, reason)."""
    if name not in _module_cache:
        try:
            _module_cache[name] = (importlib.import_module(_BACKEND_MODULES[name]), "")
        except Exception as exc:  # ImportError, or triton failing to initialise
            _module_cache[name] = (None, f"{_BACKEND_MODULES[name]} could not be imported: {exc}")
    return _module_cache[name]


def _backend_ok(name: str, device: torch.device) -> tuple[bool, str]:
    if name == "torch":
        return True, ""
    mod, reason = backend_module(name)
    if mod is None:
        return False, reason
    return mod.available(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this process (``"torch"`` always)."""
    device = torch.device(device)
    return [b for b in BACKENDS if b != "auto" and _backend_ok(b, device)[0]]


def resolve_backend(backend: str, device: torch.device | str, op: str = "cond_instance_norm_plus") -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend for ``device``.

    Raises ``ValueError`` for an unknown name and ``BackendUnavailableError``
    when an explicitly requested backend cannot run on ``device``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    if backend != "auto":
        if backend != "torch" and op in AUTO_PREFERENCE and backend not in AUTO_PREFERENCE[op]:
            raise BackendUnavailableError(f"backend={backend!r}: {op} has no {backend!r} implementation "
                                          f"(it has {AUTO_PREFERENCE[op]})")
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
