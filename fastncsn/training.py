"""The reference (eager) trainer: denoising score matching over a noise ladder.

``train()`` follows the reference NCSN recipe (Adam lr 1e-3, betas (0.9,
0.999), batch 128, DSM with lambda(sigma) = sigma^2 over uniformly drawn
levels, dequantised inputs x*255/256 + U/256) and adds what a long run needs:
an EMA of the weights, per-level loss logging (JSON lines and a progress bar),
atomic checkpoints every N steps keeping the last K, a clean save on
SIGTERM/SIGINT, and exact resumption (model, EMA, optimizer, step, data order
and noise RNG states), so an interrupted and resumed run equals an
uninterrupted one.

``fast=True`` (the default on CUDA) swaps the step for the fast one of
:mod:`fastncsn.fast_training` (bf16 autocast with the loss in fp32, fused CIN++,
channels-last, regional ``torch.compile``, fused Adam); the data order, level
and noise draws, checkpoints and resumption are the same on both paths.
"""
from __future__ import annotations

import glob
import json
import math
import os
import signal
import threading
import time
import warnings
from typing import Optional

import torch

from . import checkpoint as ckpt
from .fast_training import (dsm_step, ema_update_, make_optimizer, prepare_fast_model, release_fast_model,
                            resolve_fast_options)
from .losses import dsm_loss

__all__ = ["train", "EMA", "find_checkpoints", "latest_valid_checkpoint", "default_recipe", "CPU_DIGITS_RECIPE",
           "GENERIC_RECIPE", "DATASET_SAMPLING"]

#: Training recipe for the embedded digits on a CPU (what ``fastncsn train --data digits`` uses
#: there unless told otherwise): a small CondRefineNetDilated (ngf 8, 0.14 M parameters), batch 64,
#: Adam lr 2e-3 and an EMA of rate 0.99 (a 0.999 average still carries the first, poor weights after
#: ~1500 steps).  Measured 2026-11-22 on the 2-core CI machine: ~0.39 s a step, so 1500 steps take
#: ~10 minutes; digits are recognisable from ~1250 steps with the EMA weights (raw weights lag).
CPU_DIGITS_RECIPE = dict(ngf=8, batch_size=64, lr=2e-3, ema_rate=0.99, steps=1500)
#: the reference NCSN recipe (ngf 64, batch 128, Adam 1e-3) for every other case
GENERIC_RECIPE = dict(ngf=64, batch_size=128, lr=1e-3, ema_rate=None, steps=2000)
#: sampler defaults stored with a model trained on a dataset (``fastncsn.sample`` reads
#: ``model.sampling_defaults``): for the digits 20 steps per level (NCSN uses 100), eps 3e-5 in
#: the reference convention and a final denoising step.  eps was swept 2026-11-22 on a model
#: trained with CPU_DIGITS_RECIPE (digits-FID of 100 samples, T = 20): 2e-4: 3089, 1e-4: 1118,
#: 5e-5: 460, 3e-5: 363, 2e-5: 379.  (The bundled model keeps its own defaults, eps 1e-4.)
DATASET_SAMPLING = {
    "digits": dict(eps=3e-5, steps_per_level=20, step_convention="reference", init="uniform", denoise=True),
}


def default_recipe(data, device=None) -> dict:
    """Default training settings (``ngf``, ``batch_size``, ``lr``, ``ema_rate``, ``steps``) for
    ``data`` on ``device``: :data:`CPU_DIGITS_RECIPE` for the embedded digits without CUDA, else
    :data:`GENERIC_RECIPE` (the reference recipe)."""
    if device is None:
        on_cpu = not torch.cuda.is_available()
    else:
        try:
            on_cpu = torch.device(device).type == "cpu"
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    return dict(CPU_DIGITS_RECIPE if data == "digits" and on_cpu else GENERIC_RECIPE)

CKPT_PATTERN = "checkpoint_{step:08d}.pt"


class EMA:
    """Exponential moving average of a model's floating-point parameters (NCSNv2 technique).

    ``shadow <- rate * shadow + (1 - rate) * param`` after every optimizer step.
    """

    def __init__(self, model: torch.nn.Module, rate: float = 0.999, foreach: bool = False):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"ema_rate: expected a value in (0, 1), got {rate!r}")
        self.rate = rate
        self.foreach = foreach  # one _foreach launch per operation instead of two per tensor (fast path)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.foreach:
            ema_update_(self.shadow, model, self.rate)
            return
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(self.rate).add_(v.detach(), alpha=1.0 - self.rate)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return self.shadow

    def load_state_dict(self, sd: dict) -> None:
        for k, v in sd.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


def find_checkpoints(out_dir: str) -> list:
    """Our training checkpoints in ``out_dir``, newest first."""
    return sorted(glob.glob(os.path.join(out_dir, "checkpoint_*.pt")), reverse=True)


def latest_valid_checkpoint(out_dir: str):
    """``(path, checkpoint dict)`` of the newest readable checkpoint, warning about corrupt ones; or ``(None, None)``."""
    for path in find_checkpoints(out_dir):
        try:
            ck = ckpt.load_checkpoint(path)
            if "train_state" not in (ck.get("extra") or {}):
                raise ckpt.CheckpointError(f"path: {path!r} has no training state")
            return path, ck
        except ckpt.CheckpointError as exc:
            warnings.warn(f"fastncsn: skipping unreadable checkpoint {path}: {exc}; trying the previous one",
                          RuntimeWarning, stacklevel=2)
    return None, None


class _Batches:
    """Shuffled epochs over a dataset from a seeded generator; its state is checkpointed."""

    def __init__(self, dataset, batch_size: int, generator: torch.Generator):
        self.dataset, self.batch_size, self.g = dataset, batch_size, generator
        self.n = len(dataset)
        if self.n < 1:
            raise ValueError("data: the dataset is empty")
        self.perm, self.pos = None, 0
        self._cache = None
        if hasattr(dataset, "tensors"):
            self._cache = dataset.tensors[0]

    def next(self) -> torch.Tensor:
        idx = []
        while len(idx) < self.batch_size:
            if self.perm is None or self.pos >= self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.g), 0
            take = min(self.batch_size - len(idx), self.n - self.pos)
            idx.extend(self.perm[self.pos:self.pos + take].tolist())
            self.pos += take
        if self._cache is not None:
            return self._cache[torch.tensor(idx)]
        return torch.stack([self.dataset[i][0] for i in idx])

    def state(self) -> dict:
        return {"perm": self.perm, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.perm, self.pos = state["perm"], state["pos"]


def _build_model(model_or_config, data_cfg: dict, ngf, num_levels, sigma_1, sigma_L, schedule):
    from .models.refinenet import CondRefineNetDilated
    from .schedules import get_sigmas
    if isinstance(model_or_config, torch.nn.Module):
        return model_or_config
    cfg = dict(image_size=data_cfg["image_size"], channels=data_cfg["channels"], ngf=ngf, num_levels=num_levels,
               sigmas=get_sigmas(schedule, sigma_1, sigma_L, num_levels).tolist())
    if isinstance(model_or_config, dict):
        cfg.update(model_or_config)
    elif model_or_config is not None:
        raise TypeError("model_or_config: expected None, a dict of CondRefineNetDilated arguments, or a model")
    return CondRefineNetDilated(**cfg)


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


def _tensorboard(log_dir):
    """A TensorBoard ``SummaryWriter`` on ``log_dir``, or None (with a warning) when TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # ImportError: tensorboard not installed
        warnings.warn(f"fastncsn: tensorboard_dir={str(log_dir)!r} ignored: TensorBoard is not available ({exc}); "
                      f"install it with `pip install tensorboard` -- the metrics still go to the JSON-lines log "
                      f"and the progress bar", RuntimeWarning, stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(log_dir))


def _board_scalars(board, rec: dict) -> None:
    """Write one log record's numbers as TensorBoard scalars (``loss``, ``loss/level_i``, ``perf/...``)."""
    step = rec["step"]
    board.add_scalar("loss", rec["loss"], step)
    for i, v in enumerate(rec["per_level"]):
        if v is not None:
            board.add_scalar(f"loss/level_{i}", v, step)
    board.add_scalar("lr", rec["lr"], step)
    for key in ("images_per_s", "step_ms", "max_memory_gb", "startup_s"):
        if key in rec:
            board.add_scalar(f"perf/{key}", rec[key], step)


def train(model_or_config=None, data="digits", steps: int = 1000, batch_size: int = 128, lr: float = 1e-3,
          out_dir: Optional[str] = None, checkpoint_every: int = 500, keep_last: int = 3,
          ema_rate: Optional[float] = None, seed: int = 0, device=None, progress: bool = True,
          resume: bool = True, ngf: int = 64, num_levels: int = 10, sigma_1: float = 1.0, sigma_L: float = 0.01,
          schedule: str = "geometric", root: Optional[str] = None, log_every: int = 10,
          grad_clip: Optional[float] = None, warmup_steps: int = 0, anneal_power: float = 2.0,
          extra: Optional[dict] = None, fast: Optional[bool] = None, precision: Optional[str] = None,
          compile=None, tensorboard_dir: Optional[str] = None):
    """Train a noise-conditional score network with DSM (seed 003 eq. 5-6) on the CPU or a GPU.

    Args:
        model_or_config: a score model, a dict of ``CondRefineNetDilated``
            arguments, or None (built from ``data``'s image size and channels,
            ``ngf``, ``num_levels`` and the ``schedule`` ladder sigma_1 -> sigma_L).
        data: dataset name for :func:`fastncsn.data.get_dataset` (default: the
            embedded digits), or a torch Dataset of ``(image, label)``.
        steps: total optimizer steps (a resumed run continues up to this).
        out_dir: where checkpoints and ``train_log.jsonl`` go (None: nothing is saved).
        checkpoint_every / keep_last: checkpoint period and how many to keep.
        ema_rate: keep an EMA of the weights at this rate (e.g. 0.999).
        resume: continue from the newest valid checkpoint in ``out_dir``.
        grad_clip: clip the gradient norm to this value.
        warmup_steps: linear learning-rate warm-up.
        fast: the fast step of :mod:`fastncsn.fast_training` (None: on CUDA only);
            False is the reference eager fp32 step.
        precision: ``"bf16"`` (network under bf16 autocast, loss in fp32; the
            default of the fast path on CUDA) or ``"fp32"``; the reference path is fp32.
        compile: regional ``torch.compile`` of the residual and RefineNet blocks
            on the fast path (None: on CUDA only; True on the CPU raises ValueError,
            Inductor's C++ build takes minutes there); a string names a
            ``torch.compile`` backend (e.g. ``"eager"``, for debugging).
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
        mode, with the step it reached as ``model.train_step`` (less than
        ``steps`` when a signal stopped the run).
    """
    from .data import DATASET_CONFIGS, dequantize, get_dataset
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected an int >= 1, got {checkpoint_every!r}")
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    if batch_size % world:
        raise ValueError(f"batch_size: the global batch {batch_size} must divide evenly over {world} processes")
    if device is None and distributed and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fast, precision, compile = resolve_fast_options(fast, precision, compile, device)
    if tensorboard_dir is not None and not isinstance(tensorboard_dir, (str, os.PathLike)):
        raise ValueError(f"tensorboard_dir: expected None or a directory path, got {tensorboard_dir!r}")
    if isinstance(data, str):
        dataset = get_dataset(data, root=root, train=True)
        data_name = data
        data_cfg = DATASET_CONFIGS[data.split(":")[0]]
    else:
        dataset, data_name = data, type(data).__name__
        img = dataset[0][0]
        data_cfg = dict(image_size=int(img.shape[-1]), channels=int(img.shape[0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights depend on the seed alone
        model = _build_model(model_or_config, data_cfg, ngf, num_levels, sigma_1, sigma_L, schedule).to(device)
    if not getattr(model, "sampling_defaults", None) and data_name in DATASET_SAMPLING:
        model.sampling_defaults = dict(DATASET_SAMPLING[data_name])
    model.train()
    t_prepare = time.perf_counter()
    if fast:
        prepare_fast_model(model, device, precision, compile)
    net = model
    if distributed:  # gradients averaged over ranks; each rank sees its slice of the global batch
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, lr, fast)
    own_impl = [{k: g.get(k) for k in ("fused", "foreach")} for g in opt.param_groups]
    ema = EMA(model, ema_rate, foreach=fast) if ema_rate else None
    data_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    batches = _Batches(dataset, batch_size, data_gen)
    start = 0
    writer = out_dir is not None and rank == 0   # only rank 0 writes checkpoints and logs
    if out_dir is not None:
        if writer:
            os.makedirs(out_dir, exist_ok=True)
        if distributed:
            dist.barrier()
        if resume:
            path, ck = latest_valid_checkpoint(out_dir)
            if ck is not None:
                ckpt._load_state(model, ck["state_dict"], path)
                if ck.get("optimizer"):
                    # this run's Adam kernel (fused or not), not the saved run's: set before loading, as
                    # the fused kernel wants its step counters on the device
                    osd = ck["optimizer"]
                    osd = dict(osd, param_groups=[dict(g, **impl) for g, impl in zip(osd["param_groups"], own_impl)])
                    opt.load_state_dict(osd)
                if ema is not None and ck.get("ema_state_dict"):
                    ema.load_state_dict(ck["ema_state_dict"])
                ts = ck["extra"]["train_state"]
                data_gen.set_state(ts["data_gen"])
                noise_gen.set_state(ts["noise_gen"])
                batches.load(ts["batches"])
                start = int(ck["step"])
                if progress:
                    print(f"fastncsn: resuming from {path} (step {start})")
    sigmas = model.sigmas
    log_path = os.path.join(out_dir, "train_log.jsonl") if writer else None
    meta = dict(extra or {})
    meta.update(data=data_name, batch_size=batch_size, lr=lr, seed=seed, ema_rate=ema_rate, fast=fast,
                precision=precision, compile=compile)

    def save_checkpoint(step):
        if not writer:
            return
        meta["train_state"] = dict(data_gen=data_gen.get_state(), noise_gen=noise_gen.get_state(),
                                   batches=batches.state())
        path = os.path.join(out_dir, CKPT_PATTERN.format(step=step))
        ckpt.save(model, path, optimizer=opt, step=step, ema=ema, extra=meta, rng=ckpt.rng_state())
        for old in find_checkpoints(out_dir)[keep_last:]:
            os.remove(old)

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc="train (DSM)", unit="step")
    logf = open(log_path, "a") if log_path else None
    board = _tensorboard(tensorboard_dir) if tensorboard_dir is not None and rank == 0 else None
    on_cuda = device.type == "cuda"
    step = start
    t_mark, step_mark, first_ms, startup_s = None, start, None, None
    try:
        with _StopFlag() as stop:
            while step < steps:
                t0 = time.perf_counter()
                x = batches.next().to(device)
                x = dequantize(x, data_gen).to(device)
                # every rank draws the whole global batch's levels and noise (same generators) and
                # keeps its slice, so N processes equal one process with the same global batch
                levels = torch.randint(0, sigmas.numel(), (x.shape[0],), generator=noise_gen, device=device)
                z = torch.randn(x.shape, generator=noise_gen, device=device, dtype=x.dtype)
                if world > 1:
                    part = slice(rank * (x.shape[0] // world), (rank + 1) * (x.shape[0] // world))
                    x, levels, z = x[part], levels[part], z[part]
                if warmup_steps:
                    for group in opt.param_groups:
                        group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)
                if fast:
                    opt.zero_grad(set_to_none=True)
                    out = dsm_step(net, x, sigmas, levels, z, precision=precision, anneal_power=anneal_power)
                else:
                    out = dsm_loss(net, x, sigmas, level_index=levels, noise=z, anneal_power=anneal_power)
                    opt.zero_grad(set_to_none=True)
                    out.loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                if t_mark is None:  # the first step of this run: start-up (compilation included) ends here
                    if on_cuda:
                        torch.cuda.synchronize(device)
                    t_mark = time.perf_counter()
                    step_mark, first_ms, startup_s = step, (t_mark - t0) * 1e3, t_mark - t_prepare
                if bar is not None:
                    bar.update(1)
                if (logf is not None or board is not None or bar is not None) \
                        and (step % log_every == 0 or step == steps):
                    loss = float(out.loss.detach())  # (a host sync: the interval's steps have finished)
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"training diverged at step {step} (loss {loss})")
                    now = time.perf_counter()
                    step_ms = (now - t_mark) * 1e3 / (step - step_mark) if step > step_mark else first_ms
                    rec = dict(step=step, loss=loss,
                               per_level=[None if math.isnan(v) else round(v, 5) for v in out.per_level.tolist()],
                               lr=opt.param_groups[0]["lr"], step_ms=step_ms, step_time_s=step_ms / 1e3,
                               images_per_s=batch_size / (step_ms / 1e3), fast=fast, precision=precision)
                    if on_cuda:
                        rec["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                    if startup_s is not None:
                        rec["startup_s"], startup_s = startup_s, None
                    if logf is not None:
                        logf.write(json.dumps(rec) + "\n")
                        logf.flush()
                    if board is not None:
                        _board_scalars(board, rec)
                    if bar is not None:
                        post = dict(loss=f"{loss:.3f}", img_s=f"{rec['images_per_s']:.0f}", ms=f"{step_ms:.1f}")
                        if on_cuda:
                            post["mem_gb"] = f"{rec['max_memory_gb']:.2f}"
                        bar.set_postfix(post)
                    t_mark, step_mark = time.perf_counter(), step
                if step % checkpoint_every == 0 or step == steps:
                    save_checkpoint(step)
                    t_mark = time.perf_counter()  # checkpoint writing is not step time
                if stop.signal is not None:  # (with several processes, each rank gets the signal)
                    save_checkpoint(step)
                    if progress:
                        print(f"\nfastncsn: stopped by signal {stop.signal} at step {step}; checkpoint saved")
                    break
    finally:
        if bar is not None:
            bar.close()
        if logf is not None:
            logf.close()
        if board is not None:
            board.close()
        if fast:
            release_fast_model(model)
    model.eval()
    model.train_step = step
    return model
