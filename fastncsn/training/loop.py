"""``train``: the denoising-score-matching training run (reference fp32 and fast paths, one or several processes).

A run is: :func:`~.build.build_run` (model, optimizer, EMA, data, generators),
:func:`~.resume.restore` (the newest valid checkpoint), then per step
:func:`_next_batch` (data, levels, noise) and the one :func:`~.step.dsm_step`,
with :class:`~.log.TrainLog` reporting and :func:`~.resume.save_run` checkpointing.
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Optional

import torch

from .build import Run, build_run, check_arguments
from .failures import DivergenceGuard, TrainingInterrupted, check_out_dir
from .fast import release_fast_model
from .graph_step import GraphTrainStep
from ..files import lock_run_folder
from .log import LOG_NAME, TrainLog, check_log
from .resume import check_checkpoint_files, check_fresh_start, new_run_id, restore, save_run
from .step import dsm_step

__all__ = ["train"]


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked between steps (main thread only)."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _next_images(run: Run) -> torch.Tensor:
    """The next dequantised global batch on the device (levels and noise not drawn)."""
    from ..data import dequantize
    x = run.batches.next().to(run.device)
    return dequantize(x, run.data_gen).to(run.device)


def _next_batch(run: Run) -> tuple:
    """``(x, level, noise)`` of this process for the next step.

    Every rank draws the whole global batch's levels and noise (same generators) and keeps its
    slice, so N processes equal one process with the same global batch."""
    x = _next_images(run)
    level = torch.randint(0, run.model.sigmas.numel(), (x.shape[0],), generator=run.noise_gen, device=run.device)
    noise = torch.randn(x.shape, generator=run.noise_gen, device=run.device, dtype=x.dtype)
    if run.world > 1:
        part = slice(run.rank * (x.shape[0] // run.world), (run.rank + 1) * (x.shape[0] // run.world))
        x, level, noise = x[part], level[part], noise[part]
    return x, level, noise


@dataclass
class _Plan:
    """``train``'s options that steer the loop (the run's state is in :class:`~.build.Run`)."""
    steps: int
    lr: float
    warmup_steps: int
    grad_clip: Optional[float]
    anneal_power: float
    out_dir: Optional[str]
    checkpoint_every: int
    keep_last: Optional[int]
    progress: bool
    graph: bool = False
    allow_changed_settings: bool = False


def _graph_step(run: Run, plan: _Plan) -> Optional[GraphTrainStep]:
    """The whole-step program of ``train(graph=True)`` (after a resume: it makes the optimizer capturable)."""
    if not plan.graph:
        return None
    if run.distributed:
        raise ValueError("graph: the whole-step CUDA graph runs in one process; with torch.distributed "
                         "pass graph=False")
    return GraphTrainStep(run.net, run.optimizer, run.model.sigmas, ema=run.ema, generator=run.noise_gen,
                          precision=run.precision, channels_last=run.fast and run.device.type == "cuda",
                          anneal_power=plan.anneal_power, grad_clip=plan.grad_clip, device=run.device)


def _lock_out_dir(run: Run, plan: _Plan):
    """The lock of ``out_dir`` for this run (rank 0 holds it; every rank raises alike when another
    process holds it): one run per folder.  None without ``out_dir``."""
    if plan.out_dir is None:
        return None
    return lock_run_folder(plan.out_dir, "out_dir", run.rank, run.distributed, device=run.device)


def _prepare_out_dir(run: Run, plan: _Plan, resume: bool) -> dict:
    """Create ``out_dir`` (rank 0) and resume from its newest valid checkpoint when asked;
    returns the settings changed on resume (``{name: [old, new]}``).  Before any step: a
    ``steps`` below the checkpoint's step, and a log that a new run would mix with its own
    (:func:`~.log.check_log`), raise ValueError."""
    if plan.out_dir is None:
        return {}
    if run.rank == 0:
        os.makedirs(plan.out_dir, exist_ok=True)
    if run.distributed:
        torch.distributed.barrier()
    changes = restore(run, plan.out_dir, plan.progress, plan.allow_changed_settings) if resume else {}
    if run.step > plan.steps:
        raise ValueError(f"steps: the checkpoint in {plan.out_dir!r} is at step {run.step}, past steps={plan.steps} "
                         f"(the total number of steps, not the number to add); pass steps >= {run.step} to "
                         "continue it, or choose another out_dir for a new run")
    check_log(os.path.join(plan.out_dir, LOG_NAME), run.step)
    return changes


def _save(run: Run, plan: _Plan) -> Optional[str]:
    if plan.out_dir is not None and run.rank == 0:  # only rank 0 writes checkpoints and logs
        return save_run(run, plan.out_dir, plan.keep_last)
    return None


def _set_warmup_lr(run: Run, plan: _Plan) -> None:
    if plan.warmup_steps:
        for group in run.optimizer.param_groups:
            group["lr"] = plan.lr * min(1.0, (run.step + 1) / plan.warmup_steps)


def _run_steps(run: Run, plan: _Plan, log: TrainLog) -> Optional[tuple]:
    """Steps from ``run.step`` to ``plan.steps`` with checkpoints; stops at the first non-finite loss
    (FloatingPointError, nothing saved) and cleanly on SIGTERM/SIGINT: returns ``(signal, checkpoint)`` then."""
    graph_step = _graph_step(run, plan)
    guard = DivergenceGuard(run.device, interval=graph_step is not None)
    with _StopFlag() as stop:
        while run.step < plan.steps:
            log.step_started()
            if graph_step is not None:  # levels and noise are drawn inside the step; losses read at log time
                x = _next_images(run)
                _set_warmup_lr(run, plan)
                out = graph_step(x)
            else:
                x, level, noise = _next_batch(run)
                _set_warmup_lr(run, plan)
                out = dsm_step(run.net, x, run.model.sigmas, level, noise, precision=run.precision,
                               channels_last=run.fast and run.device.type == "cuda", anneal_power=plan.anneal_power,
                               optimizer=run.optimizer, grad_clip=plan.grad_clip, ema=run.ema)
            run.step += 1
            guard.step_done(out, run.step)
            log.step_done(out)
            if run.step % plan.checkpoint_every == 0 or run.step == plan.steps:
                guard.check(out, run.step)
                _save(run, plan)
                log.pause()  # checkpoint writing is not step time
            if stop.signal is not None:  # (with several processes, each rank gets the signal)
                guard.check(out, run.step)
                return stop.signal, _save(run, plan)
    return None


def train(model_or_config=None, data="digits", steps: int = 1000, batch_size: int = 128, lr: float = 1e-3,
          out_dir: Optional[str] = None, checkpoint_every: int = 500, keep_last: int = 3,
          ema_rate: Optional[float] = None, seed: int = 0, device=None, progress: bool = True,
          resume: bool = True, ngf: int = 64, num_levels: int = 10, sigma_1: float = 1.0, sigma_L: float = 0.01,
          schedule: str = "geometric", root: Optional[str] = None, log_every: int = 10,
          grad_clip: Optional[float] = None, warmup_steps: int = 0, anneal_power: float = 2.0,
          extra: Optional[dict] = None, fast: Optional[bool] = None, precision: Optional[str] = None,
          compile=None, tensorboard_dir: Optional[str] = None, graph: bool = False,
          allow_changed_settings: bool = False):
    """Train a noise-conditional score network with DSM (seed 003 eq. 5-6) on the CPU or a GPU.

    The reference NCSN recipe (Adam lr 1e-3, betas (0.9, 0.999), batch 128, DSM with
    lambda(sigma) = sigma^2 over uniformly drawn levels, dequantised inputs
    x*255/256 + U/256) plus what a long run needs: an EMA of the weights, per-level
    loss logging, atomic checkpoints every N steps keeping the last K, a clean save on
    SIGTERM/SIGINT, and exact resumption (an interrupted and resumed run equals an
    uninterrupted one).  One or several processes (``torch.distributed``: the global
    batch is split over ranks, gradients averaged).

    Args:
        model_or_config: a score model, a dict of ``CondRefineNetDilated``
            arguments, or None (built from ``data``'s image size and channels,
            ``ngf``, ``num_levels`` and the ``schedule`` ladder sigma_1 -> sigma_L).
        data: dataset name for :func:`fastncsn.data.get_dataset` (default: the
            embedded digits), or a torch Dataset of ``(image, label)``.
        steps: total optimizer steps (a resumed run continues up to this).
        out_dir: where checkpoints and ``train_log.jsonl`` go (None: nothing is saved).
        checkpoint_every / keep_last: checkpoint period and how many of this run's checkpoints
            to keep (an int >= 1, or None: all); other runs' files are never removed.
        ema_rate: keep an EMA of the weights at this rate (e.g. 0.999).
        resume: continue from the newest valid checkpoint in ``out_dir`` (False refuses an
            ``out_dir`` that already holds checkpoints: ValueError, before any step).
        allow_changed_settings: resume although lr, batch size, data, EMA rate, seed, grad
            clipping, warm-up, anneal power or the noise ladder differ from the checkpoint's
            (default: ValueError listing them); the new values apply and the change is
            recorded in the checkpoints (``extra["settings_changes"]``) and the log.
        grad_clip: clip the gradient norm to this value.
        warmup_steps: linear learning-rate warm-up.
        fast: the fast options of :mod:`fastncsn.training.fast` (None: on CUDA only);
            False is the reference fp32 step.
        precision: ``"bf16"`` (network under bf16 autocast, loss in fp32; the
            default of the fast path on CUDA) or ``"fp32"``; the reference path is fp32.
        compile: regional ``torch.compile`` of the residual and RefineNet blocks
            on the fast path (None: on CUDA only; True on the CPU raises ValueError,
            Inductor's C++ build takes minutes there); a string names a
            ``torch.compile`` backend (e.g. ``"eager"``, for debugging).
        graph: the whole step (level and noise draws, forward, backward, Adam made
            capturable, EMA) replayed from one CUDA graph per batch shape
            (:class:`~.graph_step.GraphTrainStep`; off by default until a GPU has
            measured it); on the CPU the same step runs eagerly.  The logged ``loss``
            is then the mean over the steps since the previous record and
            ``per_level`` the mean per level over them (one host sync per record).
            One process only (not with torch.distributed).
        tensorboard_dir: also write the logged scalars there with TensorBoard
            (warns once and goes on without it when TensorBoard is not installed).

    Every ``log_every`` steps a JSON line goes to ``out_dir/train_log.jsonl``
    (rank 0): ``step``, ``loss``, ``per_level`` (mean loss per level, null where
    a level was not drawn), ``lr``, ``step_ms`` / ``step_time_s`` (mean wall time
    per step since the previous record, host synchronised; the first step of a
    run, which includes compilation, is left out of it), ``images_per_s``
    (global batch / step time), ``fast``, ``precision``, ``max_memory_gb``
    (``torch.cuda.max_memory_allocated``, CUDA only) and, in the first record of a
    run, ``startup_s`` (from model preparation to the end of the first step).

    Returns:
        the trained model (raw weights; the EMA is in the checkpoints), in eval
        mode, with the step it reached as ``model.train_step``.

    Raises:
        TrainingInterrupted: SIGTERM/SIGINT stopped the run after saving a checkpoint of
            its step (``exit_code`` 143 / 130; rerun the same call to resume).
        FloatingPointError: a non-finite loss (step and levels named); no checkpoint of
            non-finite weights is written, the last finite one is kept.
        ValueError: bad arguments, an unwritable ``out_dir``, a fresh start into another
            run's ``out_dir``, or changed settings on resume -- all before any step.  Also:
            ``out_dir`` in use by another process (one run per folder: a lock, released when
            that process ends in any way); a checkpoint there that holds Python objects which
            could run code when read (refused, never loaded); a ``train_log.jsonl`` with records
            but no checkpoint to resume (a new run would mix its records with them) or with a
            line that is not a record; ``steps`` below the resumed checkpoint's step.
    """
    check_arguments(steps, batch_size, lr, checkpoint_every, tensorboard_dir, keep_last, seed)
    if not isinstance(graph, bool):
        raise ValueError(f"graph: expected True or False, got {graph!r}")
    if out_dir is not None:
        check_out_dir(out_dir, LOG_NAME)
        check_checkpoint_files(out_dir)
        if not resume:
            check_fresh_start(out_dir)
    run = build_run(model_or_config, data, batch_size=batch_size, lr=lr, ema_rate=ema_rate, seed=seed,
                    device=device, root=root, ngf=ngf, num_levels=num_levels, sigma_1=sigma_1, sigma_L=sigma_L,
                    schedule=schedule, fast=fast, precision=precision, compile=compile, extra=extra)
    plan = _Plan(steps=steps, lr=lr, warmup_steps=warmup_steps, grad_clip=grad_clip, anneal_power=anneal_power,
                 out_dir=out_dir, checkpoint_every=checkpoint_every, keep_last=keep_last, progress=progress,
                 graph=graph, allow_changed_settings=allow_changed_settings)
    run.meta.update(run_id=new_run_id(), grad_clip=grad_clip, warmup_steps=warmup_steps, anneal_power=anneal_power)
    lock = None
    try:
        lock = _lock_out_dir(run, plan)
        changes = _prepare_out_dir(run, plan, resume)
        log = TrainLog(run, steps, batch_size, log_every, out_dir, tensorboard_dir, progress)
        try:
            if changes:
                log.event(event="settings_changed", changes=changes)
            stopped = _run_steps(run, plan, log)
        finally:
            log.close()
    finally:
        if lock is not None:
            lock.release()
        if run.fast:
            release_fast_model(run.model)
    if stopped is not None:
        raise TrainingInterrupted(stopped[0], run.step, steps, stopped[1])
    run.model.eval()
    run.model.train_step = run.step
    return run.model
