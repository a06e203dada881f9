"""Setting up a training run: argument checks, processes, data, model, optimizer, EMA, generators.

:func:`build_run` turns ``train``'s keyword options into a :class:`Run` (everything
a step, a checkpoint and a resume need); :class:`Batches` draws shuffled epochs
from a seeded generator and checkpoints its position.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .ema import EMA
from .fast import make_optimizer, prepare_fast_model, resolve_fast_options
from .recipes import DATASET_SAMPLING

__all__ = ["Batches", "Run", "build_run", "build_model", "load_data", "check_arguments"]


class Batches:
    """Shuffled epochs over a dataset from a seeded generator; its state is checkpointed."""

    def __init__(self, dataset, batch_size: int, generator: torch.Generator):
        self.dataset, self.batch_size, self.g = dataset, batch_size, generator
        self.n = len(dataset)
        if self.n < 1:
            raise ValueError("data: the dataset is empty")
        if batch_size > self.n:  # a batch would hold some images twice (and e.g. 1e6 digits need ~22 GB)
            raise ValueError(f"batch_size: expected at most the dataset's {self.n} images, got {batch_size}")
        self.perm, self.pos = None, 0
        self._cache = dataset.tensors[0] if hasattr(dataset, "tensors") else None

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


@dataclass
class Run:
    """The state of one training run (what the steps, checkpoints and resumption share)."""
    model: torch.nn.Module          #: the score network (raw weights)
    net: torch.nn.Module            #: ``model``, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    ema: Optional[EMA]
    batches: Batches
    data_gen: torch.Generator       #: data order and dequantisation noise (CPU)
    noise_gen: torch.Generator      #: noise levels and DSM noise (on ``device``)
    device: torch.device
    fast: bool
    precision: str
    compile: object                 #: False or a torch.compile backend name
    distributed: bool = False       #: a torch.distributed group is running (``world`` processes)
    world: int = 1
    rank: int = 0
    started: float = 0.0            #: ``time.perf_counter()`` before the model's preparation (start-up time)
    meta: dict = field(default_factory=dict)  #: the checkpoints' ``extra``
    step: int = 0


def check_arguments(steps, batch_size, lr, checkpoint_every, tensorboard_dir, keep_last=None, seed=0) -> None:
    """ValueError (TypeError for a seed that is not an int) naming the first bad one of ``train``'s plain
    arguments."""
    from ..sampling.core import check_seed
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite number > 0, got {lr!r}")
    check_seed(seed)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected an int >= 1, got {checkpoint_every!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last: expected an int >= 1 (or None: keep every checkpoint), got {keep_last!r}")
    if tensorboard_dir is not None and not isinstance(tensorboard_dir, (str, os.PathLike)):
        raise ValueError(f"tensorboard_dir: expected None or a directory path, got {tensorboard_dir!r}")


def _processes(batch_size: int, device) -> tuple:
    """``(distributed, world, rank, device)``: the torch.distributed group (if any) and this process's device."""
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    if batch_size % world:
        raise ValueError(f"batch_size: the global batch {batch_size} must divide evenly over {world} processes")
    if device is None and distributed and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return distributed, world, rank, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_data(data, root: Optional[str]) -> tuple:
    """``(dataset, name, config with image_size and channels)`` for a dataset name or a Dataset."""
    from ..data import dataset_config, get_dataset
    if isinstance(data, str):
        ds = get_dataset(data, root=root, train=True)
        return ds, data, dataset_config(data, ds)          # a folder's shape is its files'
    img = data[0][0]
    return data, type(data).__name__, dict(image_size=int(img.shape[-1]), channels=int(img.shape[0]))


def build_model(model_or_config, data_cfg: dict, ngf, num_levels, sigma_1, sigma_L, schedule):
    """``model_or_config`` itself if a model, else a CondRefineNetDilated for the data (dict entries override)."""
    from ..models.refinenet import CondRefineNetDilated
    from ..schedules import get_sigmas
    if isinstance(model_or_config, torch.nn.Module):
        return model_or_config
    cfg = dict(image_size=data_cfg["image_size"], channels=data_cfg["channels"], ngf=ngf, num_levels=num_levels,
               sigmas=get_sigmas(schedule, sigma_1, sigma_L, num_levels).tolist())
    if isinstance(model_or_config, dict):
        cfg.update(model_or_config)
    elif model_or_config is not None:
        raise TypeError("model_or_config: expected None, a dict of CondRefineNetDilated arguments, or a model")
    return CondRefineNetDilated(**cfg)


def build_run(model_or_config, data, *, batch_size, lr, ema_rate, seed, device, root, ngf, num_levels, sigma_1,
              sigma_L, schedule, fast, precision, compile, extra) -> Run:
    """The :class:`Run` of ``train``'s options: model (seeded, on its device, prepared for the fast
    path), DDP wrapper, optimizer, EMA, batches and the two generators (seeds ``seed``, ``seed + 1``)."""
    distributed, world, rank, device = _processes(batch_size, device)
    fast, precision, compile = resolve_fast_options(fast, precision, compile, device)
    dataset, data_name, data_cfg = load_data(data, root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights depend on the seed alone
        model = build_model(model_or_config, data_cfg, ngf, num_levels, sigma_1, sigma_L, schedule).to(device)
    if not getattr(model, "sampling_defaults", None) and data_name in DATASET_SAMPLING:
        model.sampling_defaults = dict(DATASET_SAMPLING[data_name])
    model.train()
    started = time.perf_counter()
    if fast:
        prepare_fast_model(model, device, precision, compile)
    net = model
    if distributed:  # gradients averaged over ranks; each rank sees its slice of the global batch
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    data_gen = torch.Generator().manual_seed(seed)
    meta = dict(extra or {})
    meta.update(data=data_name, batch_size=batch_size, lr=lr, seed=seed, ema_rate=ema_rate, fast=fast,
                precision=precision, compile=compile)
    return Run(model=model, net=net, optimizer=make_optimizer(model, lr, fast),
               ema=EMA(model, ema_rate) if ema_rate else None, batches=Batches(dataset, batch_size, data_gen),
               data_gen=data_gen, noise_gen=torch.Generator(device=device).manual_seed(seed + 1), device=device,
               fast=fast, precision=precision, compile=compile, distributed=distributed, world=world, rank=rank,
               started=started, meta=meta)
