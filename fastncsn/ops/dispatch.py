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
* ``"auto"``   -- the fastest backend available for the tensor's device; on the
  CPU that is ``"torch"``.  For a CUDA tensor, ``auto`` first looks up the
  committed table ``auto_table.json`` (per op, per shape class: dtype, layout
  and a size bound; written by ``scripts/auto_table.py`` from op timings taken
  inside CUDA graphs on the device the table names) and, where no row matches
  (another device, dtype or layout, or an empty table), uses the fixed order
  ``AUTO_PREFERENCE``.  If a preferred backend is missing for a CUDA tensor,
  ``auto`` falls back and warns once.  ``FASTNCSN_AUTO_TABLE=<path>`` (read
  at import; ``load_auto_table`` re-reads) uses another table,
  ``FASTNCSN_AUTO_TABLE=0`` none (the old behaviour).

Explicitly requesting an unavailable backend raises ``BackendUnavailableError``
with the reason (never a silent fallback).

Every backend module exposes the ops under their public names
(``cond_instance_norm_plus``, ``langevin_step_``, ``langevin_noise``) plus
``available(device) -> (bool, reason)``; ``backend_module(name)`` imports it lazily
(importing ``fastncsn.ops`` never imports triton or the extension).
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from typing import Optional

import torch

__all__ = [
    "BACKENDS",
    "AUTO_PREFERENCE",
    "BackendUnavailableError",
    "available_backends",
    "resolve_backend",
    "backend_module",
    "auto_table",
    "load_auto_table",
    "table_choice",
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
#: largest fp32 NCHW CIN++ shapes).  Those were eager per-call timings: this order is
#: only the fallback of ``auto``'s per-shape table (``auto_table.json``), which takes graph timings alone.
AUTO_PREFERENCE = {
    "cond_instance_norm_plus": ("cuda", "triton", "torch"),
    # the fused bias/residual forms (bias=, add_cond_instance_norm_plus): the extension has none
    "cond_instance_norm_plus_glue": ("triton", "torch"),
    "langevin_step_": ("cuda", "triton", "torch"),
    # no CUDA C++ version; Triton not yet measured against F.avg_pool2d (benchmarks/NOTES.md)
    "avg_pool5x5": ("triton", "torch"),
}

#: the committed table of ``auto``'s per-shape choices (scripts/auto_table.py writes it)
AUTO_TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "auto_table.json")
_device_names: dict = {}

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


def _read_table(path: str) -> dict:
    if path in ("0", "off", ""):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def load_auto_table(path: Optional[str] = None) -> dict:
    """(Re)read the table ``auto`` uses from ``path`` (default: ``FASTNCSN_AUTO_TABLE``, else the committed
    ``auto_table.json``; "0" or "off": no table) and make it the active one; returns it."""
    global _ACTIVE_TABLE
    _ACTIVE_TABLE = _read_table(os.environ.get("FASTNCSN_AUTO_TABLE", AUTO_TABLE_PATH) if path is None else path)
    return _ACTIVE_TABLE


def auto_table() -> dict:
    """The active table of ``auto`` (read once, at import, so that nothing reads a file while
    ``torch.compile`` traces an op); ``{}`` when tables are off or the file is missing.

    Format: ``{"device": torch.cuda.get_device_name(), "date": ..., "source": <ops JSON>,
    "ops": {op: [{"dtype": "bfloat16", "layout": "channels_last" | "nchw", "numel_max": int | None,
    "backend": "triton" | "cuda" | "torch", ...}, ...]}}``; ``op`` is a dispatch op name
    (``cond_instance_norm_plus``, ``cond_instance_norm_plus:train`` for forward + backward,
    ``langevin_step_``); rows of one (op, dtype, layout) in increasing ``numel_max``."""
    return _ACTIVE_TABLE


_ACTIVE_TABLE: dict = {}
load_auto_table()

#: dtype names of the table rows
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
                torch.float64: "float64"}


def tensor_layout(x: torch.Tensor) -> str:
    """"channels_last" for a 4-d channels-last (not also contiguous) tensor, else "nchw"."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "nchw"


def _device_name(device: torch.device) -> Optional[str]:
    index = device.index if device.index is not None else 0
    if index not in _device_names:
        if torch.compiler.is_compiling():      # read outside tracing only (the eager warm-up fills it)
            return None
        _device_names[index] = torch.cuda.get_device_name(index)
    return _device_names[index]


def table_choice(op: str, like: torch.Tensor, table: Optional[dict] = None,
                 device_name: Optional[str] = None) -> Optional[str]:
    """The backend the table lists for ``op`` at the shape class of ``like`` (dtype, layout, the
    first row whose ``numel_max`` is None or >= ``like.numel()``), or None (no table for this
    device, no row for this op, dtype and layout)."""
    table = auto_table() if table is None else table
    rows = table.get("ops", {}).get(op)
    if not rows:
        return None
    if device_name is None:
        device_name = _device_name(like.device)
    if device_name is None or device_name != table.get("device"):
        return None
    dtype, layout, numel = _DTYPE_NAMES.get(like.dtype), tensor_layout(like), like.numel()
    for row in rows:
        if row["dtype"] == dtype and row["layout"] == layout and (row["numel_max"] is None
                                                                   or numel <= row["numel_max"]):
            return row["backend"]
    return None


def resolve_backend(backend: str, device: torch.device | str, op: str = "cond_instance_norm_plus",
                    like: Optional[torch.Tensor] = None, table_op: Optional[str] = None) -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend for ``device``.

    ``like``: a tensor of the call (for ``auto``'s table: its dtype, layout and size pick the row of
    ``table_op``, default ``op``); without it ``auto`` uses ``AUTO_PREFERENCE``.
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
    order = AUTO_PREFERENCE.get(op, ("triton", "cuda", "torch"))
    if like is not None:
        pick = table_choice(table_op or op, like)
        if pick is not None:
            order = (pick, *(b for b in order if b != pick))
    for cand in order:
        ok, reason = _backend_ok(cand, device)
        if ok:
            return cand
        key = (op, cand)
        if key not in _warned and os.environ.get("FASTNCSN_QUIET_FALLBACK") != "1":
            _warned.add(key)
            warnings.warn(f"fastncsn: backend 'auto' skips {cand!r} for {op} ({reason}); "
                          f"falling back to the next backend", RuntimeWarning, stacklevel=3)
    return "torch"
