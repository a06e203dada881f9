"""The fast training step: fused CIN++, bf16 autocast, channels-last, regional ``torch.compile``.

:func:`fastncsn.training.train` uses this module when ``fast=True`` (the default on
CUDA).  One step is the same denoising-score-matching step as the reference path
(seed 003 eq. 5-6, ``lambda(sigma) = sigma^2``)::

    x~ = x + sigma_i z,     l = 1/2 || sigma_i s(x~, i) + z ||^2      (per sample, then the batch mean)

computed as follows:

* **Network in bf16, loss in fp32.**  Only the network forward runs under
  ``torch.autocast(bfloat16)``; the score is cast to fp32 and the loss terms
  ``sigma * s + z`` are formed outside autocast in fp32
  (:func:`fastncsn.losses.dsm_loss`).  In the sigma^2-weighted form every term
  is O(1) whatever the level, so nothing under- or overflows; the literal form
  ``||s + z / sigma||^2 sigma^2`` would carry terms of size 1/sigma^2.
* **Fused CIN++.**  The norms use ``fastncsn.ops`` backend ``"auto"`` (Triton or
  the CUDA extension on GPUs, forward and backward fused with the ELU; the
  PyTorch reference on the CPU).
* **Channels-last** weights and inputs on CUDA (what the bf16 convolutions and the
  fused norms want).
* **Regional compile.**  Instead of compiling the whole network (minutes of
  start-up: 220-250 s on an H100 for the NCSN v1 training step), every residual
  block and RefineNet block is compiled on its own (``torch.compile`` of the
  block's ``forward``, ``dynamic=False``).  Dynamo caches by code object, so
  blocks of one class and one shape share a compiled graph; the NCSN v1 network
  has 7 distinct residual-block and 4 refine-block graphs.  The stem, the final
  norm and the last convolution stay eager.
* **Fused Adam** on CUDA (one kernel for all parameters) and a ``_foreach``
  EMA update.

Nothing here syncs with the host.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch

from .losses import ScoreLoss, dsm_loss

__all__ = ["PRECISIONS", "resolve_fast_options", "prepare_fast_model",
           "release_fast_model", "dsm_step", "make_optimizer", "ema_update_"]

PRECISIONS = ("fp32", "bf16")


def _block_types() -> tuple:
    """The module classes that ``prepare_fast_model`` compiles one by one."""
    from .nn import RefineBlock, ResidualBlock
    return (ResidualBlock, RefineBlock)


def resolve_fast_options(fast: Optional[bool], precision: Optional[str], compile: Union[None, bool, str],
                         device: torch.device) -> tuple:
    """Check and fill in ``train``'s ``fast``, ``precision`` and ``compile`` for ``device``.

    Defaults: ``fast`` is True on CUDA and False elsewhere; on the fast path
    ``precision`` is ``"bf16"`` on CUDA (``"fp32"`` elsewhere) and ``compile`` is
    True on CUDA (False elsewhere).  The reference path (``fast=False``) runs in
    fp32 without compile.  ``compile`` may also name a ``torch.compile`` backend
    (e.g. ``"eager"`` or ``"aot_eager"`` to debug the regional compile).

    Returns ``(fast, precision, compile)`` with ``compile`` False or a backend name.

    Raises:
        ValueError: naming the bad argument; also for ``compile=True`` (Inductor)
            on the CPU, where compiling the blocks' C++ takes minutes (measured 490 s
            for a 4-channel network on the 2-core CI machine) for no gain worth it.
    """
    device = torch.device(device)
    if fast is not None and not isinstance(fast, bool):
        raise ValueError(f"fast: expected None, True or False, got {fast!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS} or None, got {precision!r}")
    if compile is not None and not isinstance(compile, (bool, str)):
        raise ValueError(f"compile: expected None, a bool or a torch.compile backend name, got {compile!r}")
    on_cuda = device.type == "cuda"
    if fast is None:
        fast = on_cuda
    if not fast:
        if precision not in (None, "fp32"):
            raise ValueError(f"precision: the reference training path (fast=False) runs in fp32, got {precision!r}")
        if compile not in (None, False):
            raise ValueError(f"compile: only the fast training path (fast=True) compiles, got compile={compile!r}")
        return False, "fp32", False
    if precision is None:
        precision = "bf16" if on_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if compile is None:
        compile = on_cuda
    if compile is True:
        compile = "inductor"
    if compile == "inductor" and not on_cuda:
        raise ValueError(f"compile: torch.compile (Inductor) of the blocks is for CUDA devices; on {device} it "
                         f"spends minutes compiling C++ -- pass compile=False (or a debug backend such as 'eager')")
    return True, precision, compile


def prepare_fast_model(model: torch.nn.Module, device, precision: str = "bf16",
                       compile: Union[bool, str] = True, backend: Optional[str] = "auto") -> torch.nn.Module:
    """Make ``model`` ready for :func:`dsm_step` in place; returns it.

    * on CUDA: weights in channels-last, ``cudnn.benchmark`` on (fixed shapes);
    * the norms' fused-op ``backend`` set (``"auto"``: the fastest for the device;
      None leaves the model's setting);
    * ``compile``: True (Inductor) or a ``torch.compile`` backend name compiles the
      ``forward`` of every ResidualBlock and RefineBlock separately (``dynamic=False``);
      False compiles nothing.  Undo with :func:`release_fast_model`.

    ``precision`` ("fp32" | "bf16") is only checked here; :func:`dsm_step` applies it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if compile is not False and not (compile is True or isinstance(compile, str)):
        raise ValueError(f"compile: expected a bool or a torch.compile backend name, got {compile!r}")
    device = torch.device(device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    if backend is not None and hasattr(model, "set_backend"):
        model.set_backend(backend)
    if compile is not False:
        blocks = [m for m in model.modules() if isinstance(m, _block_types())]
        try:
            import torch._dynamo as dynamo
            cfg = dynamo.config
            # one graph per distinct block (7 + 4 in NCSN v1); never fall back to eager for lack of cache room
            cfg.cache_size_limit = max(cfg.cache_size_limit, 8 * len(blocks), 64)
        except (ImportError, AttributeError):
            pass
        name = "inductor" if compile is True else compile
        for m in blocks:
            if "forward" not in m.__dict__:  # not compiled yet
                m.forward = torch.compile(m.forward, backend=name, dynamic=False)
    model._fast_training = dict(precision=precision, compile=compile, channels_last=device.type == "cuda")
    return model


def release_fast_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`prepare_fast_model`'s regional compile (the blocks run eagerly again); returns ``model``.

    Weights keep their memory format and values.  ``train`` calls this before it
    returns, so sampling with other batch sizes does not trigger recompiles.
    """
    for m in model.modules():
        if isinstance(m, _block_types()) and "forward" in m.__dict__:
            del m.forward
    model.__dict__.pop("_fast_training", None)
    return model


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dsm_step(net, x: torch.Tensor, sigmas: torch.Tensor, level_index: torch.Tensor, noise: torch.Tensor,
             precision: str = "bf16", channels_last: Optional[bool] = None,
             anneal_power: float = 2.0) -> ScoreLoss:
    """Forward, DSM loss and backward of one fast training step (gradients accumulate in ``.grad``).

    Shapes: ``x`` ``[N, C, H, W]`` clean data (fp32), ``sigmas`` ``[L]``,
    ``level_index`` ``[N]`` int64, ``noise`` ``z`` like ``x``.  Loss per sample
    (seed 003 eq. 5-6 with ``lambda = sigma^2``): ``1/2 ||sigma s(x + sigma z, i) + z||^2``.

    The network runs under bf16 autocast for ``precision="bf16"``; its output is
    cast to fp32 and the loss is formed in fp32 outside autocast.  ``channels_last``
    (default: on CUDA) feeds the network a channels-last input.  The caller zeroes
    the gradients and steps the optimizer.  No host sync.

    Returns:
        :class:`fastncsn.losses.ScoreLoss` (mean loss, per-level means, levels).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if channels_last is None:
        channels_last = x.device.type == "cuda"
    cast = _autocast(x.device, precision)

    def score_fn(xt: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if channels_last and xt.dim() == 4:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with cast:
            s = net(xt, levels)
        return s.float()

    out = dsm_loss(score_fn, x, sigmas, level_index=level_index, noise=noise, anneal_power=anneal_power)
    out.loss.backward()
    return out


def make_optimizer(model: torch.nn.Module, lr: float, fast: bool) -> torch.optim.Adam:
    """Adam as NCSN (betas 0.9/0.999, eps 1e-8); fused into one kernel for CUDA weights on the fast path."""
    params = list(model.parameters())
    fused = bool(fast) and len(params) > 0 and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if fused else {}))


@torch.no_grad()
def ema_update_(shadow: dict, model: torch.nn.Module, rate: float) -> None:
    """``shadow <- rate * shadow + (1 - rate) * weights`` for the floating-point entries of
    ``model.state_dict()`` (others copied), with one ``_foreach`` launch per operation."""
    sd = model.state_dict()
    fl = [k for k, v in sd.items() if v.is_floating_point()]
    if fl:
        s = [shadow[k] for k in fl]
        torch._foreach_mul_(s, rate)
        torch._foreach_add_(s, [sd[k].detach() for k in fl], alpha=1.0 - rate)
    for k, v in sd.items():
        if not v.is_floating_point():
            shadow[k].copy_(v)
