"""Multi-GPU sampling under ``torchrun``: every rank draws a disjoint seeded shard, rank 0 gathers.

Run, for example, ``torchrun --nproc_per_node 8 my_script.py`` with::

    x = fastncsn.sampling.sample_distributed(model, n=50_000, seed=0)   # [n, ...] on rank 0, None elsewhere

Rank ``r`` of ``W`` draws ``shard_sizes(n, W)[r]`` samples: with the per-sample noise streams
(the default) samples ``first .. first + m - 1`` of the run,
``fastncsn.sample(..., seed=seed, first_index=first)``, so the result is the same for every
``W`` (one process or many) and any shard can be re-drawn alone by hand; with
``noise="batch"`` (the releases' streams) ``fastncsn.sample(..., seed=shard_seed(seed, r))``,
which depends on ``W``.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .api import sample
from .core import model_device, resolve_model

__all__ = ["shard_sizes", "shard_seed", "sample_distributed", "init_from_env"]

_M64 = (1 << 64) - 1


def shard_sizes(n: int, world_size: int) -> list:
    """Samples per rank: ``n`` split as evenly as possible, the first ``n % world_size`` ranks one more."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: expected an int >= 1, got {world_size!r}")
    return [n // world_size + (r < n % world_size) for r in range(world_size)]


def shard_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s shard: SplitMix64 of ``(seed, rank)``, in [0, 2**63).

    Distinct ranks get unrelated seeds (the Philox streams they key do not overlap in practice)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
        raise ValueError(f"rank: expected an int >= 0, got {rank!r}")
    z = (seed + (rank + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) >> 1


def init_from_env():
    """Join the process group that torchrun describes in the environment (NCCL with CUDA, else gloo)."""
    import torch.distributed as dist
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


@torch.no_grad()
def sample_distributed(model, n: int, seed: int = 0, *, group=None, all_ranks: bool = False,
                       **sample_kwargs) -> Optional[torch.Tensor]:
    """Draw ``n`` samples across the ranks of a process group; rank 0 gets them all.

    Args:
        model: as for :func:`fastncsn.sample` (the same weights on every rank).
        n: total number of samples.
        seed: the run's seed; rank ``r`` draws the run's samples from ``sum(shard_sizes(n, W)[:r])`` on
            (with ``noise="batch"``: its own seed ``shard_seed(seed, r)``).
        group: process group (default: the world; joined from torchrun's
            environment if no group exists yet).  Without torch.distributed
            this is a one-process world.
        all_ranks: return the gathered samples on every rank, not only rank 0.
        sample_kwargs: passed to :func:`fastncsn.sample` (``device`` defaults to
            this rank's GPU under NCCL); ``snapshot_every`` and ``generator``
            are not supported.

    Returns:
        ``[n, *data_shape]`` samples ordered by rank (rank 0's shard first) on
        rank 0 (every rank with ``all_ranks``), ``None`` on the other ranks.
    """
    import torch.distributed as dist
    for name in ("snapshot_every", "generator", "first_index"):
        if sample_kwargs.get(name):
            raise ValueError(f"{name}: not supported by sample_distributed")
    if dist.is_available():
        init_from_env()
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(group), dist.get_rank(group)) if distributed else (1, 0)
    sizes = shard_sizes(n, world)
    model = resolve_model(model)
    nccl = distributed and dist.get_backend(group) == "nccl"
    if nccl and sample_kwargs.get("device") is None:
        sample_kwargs["device"] = torch.device("cuda", torch.cuda.current_device())
    sample_kwargs.setdefault("progress", False)
    shape = tuple(model.data_shape)
    if sizes[rank]:
        if sample_kwargs.get("noise") == "batch":
            x = sample(model, sizes[rank], seed=shard_seed(seed, rank), **sample_kwargs)
        else:
            x = sample(model, sizes[rank], seed=seed, first_index=sum(sizes[:rank]), **sample_kwargs)
    else:
        dev = sample_kwargs.get("device") or model_device(model)
        x = torch.empty((0, *shape), device=dev)
    if not distributed:
        return x
    comm = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    padded = torch.zeros((max(sizes), *shape), dtype=x.dtype, device=comm)
    padded[:sizes[rank]].copy_(x)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    if rank != 0 and not all_ranks:
        return None
    return torch.cat([p[:m] for p, m in zip(parts, sizes)]).to(x.device)
