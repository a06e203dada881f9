"""The whole DSM training step replayed from one CUDA graph (issue 16).

The fast step is host-bound: forward + backward launch ~700 kernels per step and the
host spends ~120 us on each.  :class:`GraphTrainStep` captures everything one step
does in a ``torch.cuda.CUDAGraph`` and replays it, so the host launches one graph:

* **Static input.**  The caller's batch is copied into a static ``[N, ...]`` buffer
  (one per batch shape; a new shape warms up and captures its own graph, all graphs
  in one memory pool).
* **Randomness on the device, inside the step.**  The levels (``torch.randint``) and
  the noise (``torch.randn``) are drawn from ``generator`` by the one
  :func:`~fastncsn.training.step.dsm_step` (levels first, then noise, as
  ``train``'s eager loop draws them), inside the graph.  A captured draw reads the
  generator's Philox seed and offset when the graph is *replayed*, and each replay
  advances the offset, so replays draw fresh numbers and the generator's state
  (checkpointed by ``train``) stays exact.  The default CUDA generator is always
  tracked by a capture; another one is registered with
  ``CUDAGraph.register_generator_state`` (torch >= 2.5; without it: the eager step,
  with a one-line warning).
* **One body**: ``dsm_step`` (forward, the sigma^2-weighted loss in fp32, backward,
  gradient clipping, ``optimizer.step()`` with a *capturable* Adam -- fused too on the
  fast path -- and the EMA update), then the loss accumulators.  The learning rate
  is read from a device tensor inside the graph, refreshed before every replay from
  ``param_groups[i]["lr"]``, so warm-up schedules keep working.
* **No per-step host sync.**  The batch-mean loss, the per-level loss sums and the
  per-level sample counts accumulate in device tensors; :meth:`read_losses` syncs
  once and resets them (``train`` reads them every ``log_every`` steps).
* **Warm-up, capture, replay.**  The first ``warmup`` calls of a batch shape run the
  body eagerly on a side stream (real training steps: they also create Adam's state
  and settle cuDNN's autotuning and the regional compile); the next call captures
  the body and replays it; later calls only replay.  If the capture raises, one
  one-line warning is issued and that shape keeps running the body eagerly.

``use_graphs=False`` (the default off CUDA) runs the very same body eagerly on the
same static buffers -- what the CPU tests compare with the plain ``dsm_step`` loop.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple, Optional

import torch

from ..devices import resolve_graph_device
from ..schedules import validate_sigmas
from .fast import PRECISIONS, make_capturable
from .step import dsm_step

__all__ = ["GraphTrainStep", "IntervalLoss", "PendingLoss"]


class IntervalLoss(NamedTuple):
    """The losses of the steps since the previous read (on the CPU)."""
    loss: torch.Tensor       #: scalar: mean over those steps of the batch-mean loss
    per_level: torch.Tensor  #: [L] mean loss per level over all their samples (NaN where none was drawn)
    steps: int               #: how many steps the means cover


class PendingLoss:
    """What a step returns: ``loss`` / ``per_level`` of the interval, read (one host sync, then the
    accumulators reset) on first access.  Only the newest one should be read."""

    def __init__(self, step: "GraphTrainStep"):
        self._step, self._value = step, None

    def _read(self) -> IntervalLoss:
        if self._value is None:
            self._value = self._step.read_losses()
        return self._value

    loss = property(lambda self: self._read().loss)
    per_level = property(lambda self: self._read().per_level)


class _Program:
    """The static buffer, the graph (once captured) and the call count of one batch shape."""

    def __init__(self, x: torch.Tensor):
        self.x, self.graph, self.calls, self.eager = x, None, 0, False


class GraphTrainStep:
    """One DSM training step (seed 003 eq. 5-6, ``lambda = sigma^2``) with the update, replayed from a
    CUDA graph; ``step(x)`` trains on the batch ``x`` ``[N, C, H, W]`` (or ``[N, D]``, fp32).

    Args:
        net: the score network (``net(x, level)``), prepared for the fast path or not.
        optimizer: its optimizer (Adam).  With graphs it is made capturable
            (:func:`~fastncsn.training.fast.make_capturable`).
        sigmas: ``[L]`` decreasing ladder (checked here, once).
        ema: optional :class:`~fastncsn.training.ema.EMA`, updated after every step.
        generator: where levels and noise come from (a generator on the network's
            device); None: that device's default generator.
        precision, channels_last, anneal_power, grad_clip: as
            :func:`~fastncsn.training.step.dsm_step`.
        use_graphs: capture CUDA graphs (None: on CUDA devices); False runs the same
            body eagerly.
        warmup: eager warm-up steps per batch shape before the capture (>= 1).
        device: the network's device (default: that of its first parameter).

    Attributes: ``builds`` (static buffers set up: one per batch shape seen),
    ``captures`` (CUDA graphs captured), ``use_graphs``.
    """

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, sigmas, *, ema=None,
                 generator: Optional[torch.Generator] = None, precision: str = "fp32",
                 channels_last: Optional[bool] = None, anneal_power: float = 2.0, grad_clip: Optional[float] = None,
                 use_graphs: Optional[bool] = None, warmup: int = 2, device=None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ValueError(f"warmup: expected an int >= 1 (Adam's state must exist before a capture), got {warmup!r}")
        if device is None:
            device = next(iter(net.parameters())).device
        self.device, use_graphs = resolve_graph_device(device, use_graphs)
        sig = validate_sigmas(torch.as_tensor(sigmas).detach().cpu(), "sigmas")
        self.sigmas = sig.to(device=self.device, dtype=torch.float32)
        if generator is None:
            generator = (torch.cuda.default_generators[self.device.index] if self.device.type == "cuda"
                         else torch.default_generator)
        if generator.device.type != self.device.type:
            raise ValueError(f"generator: expected a generator on {self.device}, got one on {generator.device}")
        self.net, self.optimizer, self.ema, self.generator = net, optimizer, ema, generator
        self.options = dict(precision=precision, channels_last=channels_last, anneal_power=anneal_power,
                            grad_clip=grad_clip)
        self.use_graphs, self.warmup = bool(use_graphs), warmup
        if self.use_graphs:
            make_capturable(optimizer)
            self._lr = [torch.zeros((), device=self.device) for _ in optimizer.param_groups]
        num_levels = self.sigmas.numel()
        self._loss_sum = torch.zeros((), device=self.device)
        self._level_sum = torch.zeros(num_levels, device=self.device)
        self._level_count = torch.zeros(num_levels, device=self.device)
        self._steps = 0
        self._programs: dict = {}
        self._pool = None
        self._warned = False
        self.builds = 0
        self.captures = 0

    # ------------------------------------------------------------------ the body (captured or eager)

    def _body(self, x: torch.Tensor) -> None:
        """dsm_step (draws, forward, loss, backward, clip, Adam, EMA) and the loss accumulators."""
        out = dsm_step(self.net, x, self.sigmas, generator=self.generator, optimizer=self.optimizer, ema=self.ema,
                       **self.options)
        with torch.no_grad():
            counts = torch.zeros_like(self._level_count).index_add_(
                0, out.level_index, torch.ones(out.level_index.shape, device=self.device))
            self._loss_sum.add_(out.loss.detach())
            self._level_sum.add_(out.per_level.nan_to_num(0.0) * counts)
            self._level_count.add_(counts)

    # ------------------------------------------------------------------ programs

    def _program(self, x: torch.Tensor) -> _Program:
        key = (tuple(x.shape), x.dtype)
        prog = self._programs.get(key)
        if prog is None:
            prog = _Program(torch.zeros(x.shape, device=self.device, dtype=x.dtype))
            self._programs[key] = prog
            self.builds += 1
        return prog

    @contextlib.contextmanager
    def _tensor_lr(self):
        """During a capture, the param groups' ``lr`` are the device tensors the graph reads."""
        saved = [g["lr"] for g in self.optimizer.param_groups]
        for g, t in zip(self.optimizer.param_groups, self._lr):
            t.fill_(g["lr"])
            g["lr"] = t
        try:
            yield
        finally:
            for g, lr in zip(self.optimizer.param_groups, saved):
                g["lr"] = lr

    def _capture(self, prog: _Program) -> None:
        graph = torch.cuda.CUDAGraph()
        default = torch.cuda.default_generators[self.device.index]
        if self.generator is not default:
            if not hasattr(graph, "register_generator_state"):
                raise RuntimeError(f"torch {torch.__version__} cannot capture draws from a non-default CUDA "
                                   f"generator (no CUDAGraph.register_generator_state)")
            graph.register_generator_state(self.generator)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with self._tensor_lr(), torch.cuda.graph(graph, pool=self._pool):
            self._body(prog.x)
        prog.graph = graph
        self.captures += 1

    def _eager_side_stream(self, prog: _Program) -> None:
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._body(prog.x)
        main.wait_stream(side)

    def _replay(self, prog: _Program) -> None:
        """The learning rates of this step into the tensors the graph reads, then the replay."""
        for g, t in zip(self.optimizer.param_groups, self._lr):
            t.fill_(g["lr"])
        prog.graph.replay()

    def __call__(self, x: torch.Tensor) -> PendingLoss:
        """Train one step on ``x`` (copied into the static buffer of its shape); returns the
        :class:`PendingLoss` of the interval since the last read.  No host sync."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point batch tensor [N, ...], got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        prog = self._program(x)
        prog.x.copy_(x)
        prog.calls += 1
        if not self.use_graphs or prog.eager:
            self._body(prog.x)
        elif prog.graph is not None:
            self._replay(prog)
        elif prog.calls <= self.warmup:
            self._eager_side_stream(prog)
        else:
            try:
                self._capture(prog)
            except Exception as exc:  # capture impossible (an op that syncs, an old torch, ...)
                prog.graph, prog.eager = None, True
                if not self._warned:
                    self._warned = True
                    msg = " ".join(str(exc).split())[:200]
                    warnings.warn(f"fastncsn: the training step could not be captured in a CUDA graph "
                                  f"({type(exc).__name__}: {msg}); running it eagerly", RuntimeWarning, stacklevel=2)
                self._body(prog.x)
            else:
                self._replay(prog)
        self._steps += 1
        return PendingLoss(self)

    step = __call__

    def read_losses(self) -> IntervalLoss:
        """The losses of the steps since the last read (one host sync), then the accumulators reset.

        ``loss`` is the mean over steps of the batch-mean loss; ``per_level[i]`` the mean loss of all
        samples drawn at level ``i`` in those steps (NaN where none was)."""
        if self._steps == 0:
            raise RuntimeError("read_losses: no step since the last read")
        vals = torch.cat([self._loss_sum.view(1), self._level_sum, self._level_count]).cpu()
        num_levels = self._level_sum.numel()
        sums, counts = vals[1:1 + num_levels], vals[1 + num_levels:]
        per_level = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        out = IntervalLoss(vals[0] / self._steps, per_level, self._steps)
        self._loss_sum.zero_()
        self._level_sum.zero_()
        self._level_count.zero_()
        self._steps = 0
        return out
