"""The fast training options: fused CIN++, bf16 autocast, channels-last, regional ``torch.compile``, fused Adam.

:func:`fastncsn.training.train` takes them as ``fast``, ``precision`` and ``compile``
(:func:`resolve_fast_options` fills in the defaults: fast on CUDA).  This module
prepares the model and the optimizer; the step itself is the one DSM step of
:func:`fastncsn.training.step.dsm_step`, which applies ``precision`` and
channels-last inputs.  What the fast path changes:

* **Network in bf16, loss in fp32** (``precision="bf16"``, applied by ``dsm_step``).
  In the sigma^2-weighted form every loss term is O(1) whatever the level, so nothing
  under- or overflows; the literal form ``||s + z / sigma||^2 sigma^2`` would carry terms
  of size 1/sigma^2.
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
* **Fused Adam** on CUDA (one kernel for all parameters), :func:`make_optimizer`.

Nothing here syncs with the host during a step.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..nn import fused_op_modules

__all__ = ["PRECISIONS", "resolve_fast_options", "prepare_fast_model", "release_fast_model", "make_optimizer",
           "make_capturable"]

PRECISIONS = ("fp32", "bf16")


def _block_types() -> tuple:
    """The module classes that ``prepare_fast_model`` compiles one by one."""
    from ..nn import RefineBlock, ResidualBlock
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
    """Make ``model`` ready for the fast :func:`~fastncsn.training.step.dsm_step` in place; returns it.

    * on CUDA: weights in channels-last, ``cudnn.benchmark`` on (fixed shapes);
    * the norms' fused-op ``backend`` set (``"auto"``: the fastest for the device;
      None leaves the model's setting);
    * ``compile``: True (Inductor) or a ``torch.compile`` backend name compiles the
      ``forward`` of every ResidualBlock and RefineBlock separately (``dynamic=False``);
      False compiles nothing.  Undo with :func:`release_fast_model`.

    ``precision`` ("fp32" | "bf16") is only checked here; ``dsm_step`` applies it.
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
    norms = fused_op_modules(model)
    saved_backends = [m.backend for m in norms]
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
    model._fast_training = dict(precision=precision, compile=compile, channels_last=device.type == "cuda",
                                restore_backends=list(zip(norms, saved_backends)))
    return model


def release_fast_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`prepare_fast_model`'s regional compile (the blocks run eagerly again) and give the
    norms back the backend they had (the backend is a training option, not state of the model);
    returns ``model``.

    Weights keep their memory format and values.  ``train`` calls this before it
    returns, so sampling with other batch sizes does not trigger recompiles.
    """
    for m in model.modules():
        if isinstance(m, _block_types()) and "forward" in m.__dict__:
            del m.forward
    state = model.__dict__.pop("_fast_training", None) or {}
    for norm, backend in state.get("restore_backends", ()):
        norm.backend = backend
    return model


def make_optimizer(model: torch.nn.Module, lr: float, fast: bool, adam_eps: float = 1e-8,
                   capturable: bool = False) -> torch.optim.Adam:
    """Adam as NCSN (betas 0.9/0.999, epsilon ``adam_eps`` 1e-8); fused into one kernel for CUDA
    weights on the fast path.  ``capturable=True`` (CUDA weights only) keeps the step counters on the
    device so that ``optimizer.step()`` can be captured in a CUDA graph (fused and capturable go
    together in torch 2.x); see :func:`make_capturable`."""
    params = list(model.parameters())
    on_cuda = len(params) > 0 and all(p.is_cuda for p in params)
    if capturable and not on_cuda:
        raise ValueError("capturable: a capturable Adam needs CUDA weights (torch's capturable optimizers are "
                         "for accelerators), got weights on the CPU")
    fused = bool(fast) and on_cuda
    extra = {"fused": True} if fused else {}
    if capturable:
        extra["capturable"] = True
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=adam_eps, **extra)


def make_capturable(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Turn ``capturable`` on in every param group of ``optimizer`` (an Adam on CUDA weights), moving
    existing step counters to their parameter's device as float32 (what torch's capturable Adam keeps),
    so that ``optimizer.step()`` can run inside a CUDA graph; returns ``optimizer``.

    For an optimizer built without it, e.g. one resumed from a reference-path checkpoint.
    """
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise ValueError(f"optimizer: {type(optimizer).__name__} has no capturable mode")
        for p in group["params"]:
            if not p.is_cuda:
                raise ValueError(f"optimizer: a capturable optimizer needs CUDA weights, got a parameter on {p.device}")
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device != p.device:
                optimizer.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)
        group["capturable"] = True
    return optimizer
