"""The network a sampler evaluates: memory layout and precision of its input and weights (issue 15, item 2).

:class:`GraphSampler` calls the score network once per step, hundreds of times per
sample, so the format the network runs in is chosen once, when the sampler is built,
never per step.  Two switches, each keeping the old behaviour as the default until a
GPU run has measured both (benchmarks/NOTES.md, "Layout and precision"):

``layout`` -- the memory format of the network input (and of the weights):

* ``"channels_last"`` (old default): ``x.contiguous(memory_format=torch.channels_last)``
  per step, the user's weights as they are.  For one channel (MNIST) this is a no-op:
  a ``[N, 1, H, W]`` NCHW tensor counts as channels-last too, so the network runs NCHW.
* ``"channels_last_strict"``: the input has NHWC strides even for ``C = 1`` (a view of
  the state when no cast is needed, else a static NHWC buffer written each step) and
  the network is a private copy whose 4-D weights have NHWC strides (again for
  ``C_in = 1`` too, where ``Tensor.to(memory_format=torch.channels_last)`` leaves them
  NCHW), converted once.
* ``"contiguous"``: NCHW (``channels_last=False`` of the sampler).

``weights`` -- how the network gets to bf16 when ``precision="bf16"``:

* ``"autocast"`` (old default): the user's fp32 weights under ``torch.autocast``, which
  re-casts every weight in every step (the sampler's autocast has ``cache_enabled=False``:
  a cache would not survive graph replay) and runs some ops (e.g. CUDA's
  ``upsample_bilinear2d``) and everything downstream of them in fp32.
* ``"bf16_once"``: a private bf16 copy of the network's parameters, made once; the
  network runs without autocast on a bf16 input, so every op between the input cast
  and the output is bf16 (CIN++ still keeps its statistics in fp32 inside the op);
  the score is cast back into the fp32 score buffer.  Buffers (e.g. NCSNv2's
  ``sigmas``) keep their dtype.

**The user's model is never changed.**  Either option (``layout="channels_last_strict"``
or ``weights="bf16_once"``) makes a private copy (``copy.deepcopy``, no gradients); the
model itself keeps its parameters' dtype, memory format and storage.  The copy is
refreshed from the model by :meth:`SamplerNetwork.refresh` (``copy_`` into the existing
tensors, so captured graphs stay valid), which :meth:`GraphSampler.sample` calls at the
start of every call: in-place updates of the model (an optimizer step,
``load_state_dict``) are seen by the next ``sample()``, as with the old path.  A refresh
reads and writes the weights once -- small next to the L*T network evaluations of a call.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

from ..nn import fused_op_modules

__all__ = ["LAYOUTS", "WEIGHT_MODES", "SamplerNetwork", "nhwc_strides", "to_nhwc", "is_nhwc"]

#: memory formats of the network input (and weights), old default first
LAYOUTS = ("channels_last", "channels_last_strict", "contiguous")
#: how the network's weights reach bf16 under ``precision="bf16"``, old default first
WEIGHT_MODES = ("autocast", "bf16_once")


def nhwc_strides(shape) -> tuple:
    """Strides of a dense NHWC (channels-last) tensor of 4-D ``shape`` ``[N, C, H, W]``."""
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def is_nhwc(t: torch.Tensor) -> bool:
    """True iff ``t`` (4-D) has exactly the NHWC strides (stricter than ``is_contiguous(channels_last)``,
    which a ``C = 1`` NCHW tensor also passes)."""
    return t.dim() == 4 and tuple(t.stride()) == nhwc_strides(t.shape)


def to_nhwc(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A copy of 4-D ``t`` (cast to ``dtype``) with NHWC strides, whatever its channel count."""
    out = torch.empty_strided(tuple(t.shape), nhwc_strides(t.shape), dtype=dtype or t.dtype, device=t.device)
    return out.copy_(t)


def check_format(layout: str, weights: str, precision: str, model) -> None:
    """ValueError/TypeError for a bad ``layout`` / ``weights`` combination."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights: expected one of {WEIGHT_MODES}, got {weights!r}")
    if weights == "bf16_once" and precision != "bf16":
        raise ValueError(f"weights: 'bf16_once' needs precision='bf16', got precision={precision!r}")
    if (layout == "channels_last_strict" or weights == "bf16_once") and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: layout={layout!r} / weights={weights!r} convert the network's weights and need "
                        f"a torch.nn.Module, got {type(model).__name__}; use layout='channels_last', "
                        f"weights='autocast'")


class SamplerNetwork:
    """The score network as a sampler evaluates it: ``net(x, levels) -> score`` for the fp32 state ``x``.

    Args:
        model: the user's score function (an ``nn.Module`` for a private copy).
        layout: one of :data:`LAYOUTS`.
        weights: one of :data:`WEIGHT_MODES` (``"bf16_once"`` needs ``precision="bf16"``).
        precision: ``"fp32"`` or ``"bf16"``.
        state: the sampler's static fp32 state buffer ``[B, *data_shape]`` (the input of every call).

    ``module`` is what runs: the user's model, or the private copy (``copied`` is True).
    """

    def __init__(self, model: Callable, layout: str, weights: str, precision: str, state: torch.Tensor):
        check_format(layout, weights, precision, model)
        self.model, self.layout, self.weights, self.precision = model, layout, weights, precision
        self.dtype = torch.bfloat16 if weights == "bf16_once" else torch.float32
        self.autocast = precision == "bf16" and weights == "autocast"
        self.copied = layout == "channels_last_strict" or weights == "bf16_once"
        self.module = self._private_copy() if self.copied else model
        self._input = self._input_fn(state)

    # ---------------------------------------------------------------- build (once)

    def _private_copy(self) -> torch.nn.Module:
        """A copy of the model in eval mode, no gradients, its parameters in ``self.dtype`` (and NHWC when
        strict); ``_pairs`` maps every copied parameter/buffer to the model's, for :meth:`refresh`."""
        net = copy.deepcopy(self.model).eval()
        strict = self.layout == "channels_last_strict"
        for p in net.parameters():
            p.requires_grad_(False)
            p.grad = None
            if p.is_floating_point():
                p.data = to_nhwc(p.data, self.dtype) if strict and p.dim() == 4 else p.data.to(self.dtype)
        src = dict(self.model.named_parameters(remove_duplicate=False))
        src.update(self.model.named_buffers(remove_duplicate=False))
        dst = dict(net.named_parameters(remove_duplicate=False))
        dst.update(net.named_buffers(remove_duplicate=False))
        self._pairs = [(dst[name], src[name]) for name in dst]
        src_mods = dict(self.model.named_modules(remove_duplicate=False))
        fused = {id(m) for m in fused_op_modules(net)}
        self._backend_pairs = [(m, src_mods[name]) for name, m in net.named_modules(remove_duplicate=False)
                               if id(m) in fused]
        return net

    def _input_fn(self, state: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The per-step map state -> network input (static buffers are made here, once)."""
        if state.dim() != 4 or self.layout == "contiguous":
            return lambda x: x if self.dtype == x.dtype else x.to(self.dtype)
        if self.layout == "channels_last":
            # exactly the old path: ``contiguous`` (not ``to(memory_format=...)``, which re-strides C = 1)
            return lambda x: x.contiguous(memory_format=torch.channels_last).to(self.dtype)
        if self.dtype == state.dtype and state.shape[1] == 1:
            # one channel: the NHWC strides describe the same memory -- a view, no copy
            view = state.as_strided(tuple(state.shape), nhwc_strides(state.shape))
            return lambda x: view if x is state else to_nhwc(x, self.dtype)
        buf = to_nhwc(state, self.dtype)
        return lambda x: buf.copy_(x) if x is state else to_nhwc(x, self.dtype)

    # ---------------------------------------------------------------- per call / per step

    def refresh(self) -> None:
        """Copy the model's current weights and its norms' backends into the private copy, in place (the
        captured graphs keep reading the same tensors).  No-op without a copy.  The sampler calls it
        where the model's backend is already the run's (inside ``use_backend``)."""
        if not self.copied:
            return
        with torch.no_grad():
            for dst, src in self._pairs:
                dst.copy_(src)
        for dst_mod, src_mod in self._backend_pairs:
            dst_mod.backend = src_mod.backend

    def __call__(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """The network's score at the fp32 state ``x`` (in the network's dtype and layout)."""
        xin = self._input(x)
        if self.autocast:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
                return self.module(xin, levels)
        return self.module(xin, levels)
