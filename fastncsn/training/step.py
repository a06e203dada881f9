"""The one denoising-score-matching training step, for every precision and compile option.

``train`` (reference fp32 and fast paths, regional compile or not, one process or
DDP), :func:`fastncsn.toy.train_toy` and the benchmarks all take their step from
:func:`dsm_step`.  The fast options prepare the model beforehand
(:mod:`fastncsn.training.fast`); the step only applies ``precision`` (bf16 autocast
around the network) and channels-last inputs.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from ..losses import ScoreLoss, dsm_loss
from .fast import PRECISIONS

__all__ = ["dsm_step"]


def _autocast(device: torch.device, precision: str):
    # no weight-cast cache: each weight is cast once per forward anyway, and a cache that outlives
    # a CUDA-graph capture is unsafe (fastncsn.training.graph_step captures this step)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (EMA keys without ``module.``)."""
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def dsm_step(net, x: torch.Tensor, sigmas: torch.Tensor, level: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, *, precision: str = "fp32", channels_last: Optional[bool] = None,
             anneal_power: float = 2.0, generator: Optional[torch.Generator] = None,
             optimizer: Optional[torch.optim.Optimizer] = None, grad_clip: Optional[float] = None,
             ema=None) -> ScoreLoss:
    """One DSM step: forward, loss and backward, and with ``optimizer`` the update too.

    Shapes: ``x`` ``[N, C, H, W]`` (or ``[N, D]``) clean data (fp32), ``sigmas`` ``[L]``,
    ``level`` ``[N]`` int64 noise-level indices, ``noise`` ``z`` like ``x`` (both drawn
    from ``generator`` when None, levels first, as :func:`fastncsn.losses.dsm_loss`).
    Loss per sample (seed 003 eq. 5-6 with ``lambda = sigma^2``), then the batch mean::

        x~ = x + sigma_i z,     l = 1/2 || sigma_i s(x~, i) + z ||^2

    ``precision="bf16"`` runs the network under bf16 autocast; its output is cast to
    fp32 and the loss is formed in fp32 outside autocast.  ``"fp32"`` is the reference
    step.  ``channels_last`` (default: on CUDA) feeds the network a channels-last input.

    Without ``optimizer`` the gradients accumulate in ``.grad`` and the caller zeroes
    them and steps.  With it: gradients zeroed before the forward, the gradient norm
    clipped to ``grad_clip`` (if given), ``optimizer.step()``, then ``ema.update`` (if
    given) on the model (unwrapped from DDP).  No host sync.

    Returns:
        :class:`fastncsn.losses.ScoreLoss` (mean loss, per-level means, levels).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if channels_last is None:
        channels_last = x.device.type == "cuda"
    cast = _autocast(x.device, precision)

    def score_fn(xt: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        if channels_last and xt.dim() == 4:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with cast:
            s = net(xt, lv)
        return s.float()

    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    out = dsm_loss(score_fn, x, sigmas, level_index=level, noise=noise, anneal_power=anneal_power,
                   generator=generator)
    out.loss.backward()
    if optimizer is not None:
        model = _unwrap(net)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
    return out
