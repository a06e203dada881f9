"""Training checkpoints: discovery, the latest valid one, saving and exact resumption.

A checkpoint holds the model, the optimizer, the EMA shadow and, in ``extra["train_state"]``,
the data-order and noise generators' states and the batch position, so a resumed run
equals an uninterrupted one (bit for bit on one device).
"""
from __future__ import annotations

import glob
import os
import warnings

from .. import checkpoint as ckpt

__all__ = ["CKPT_PATTERN", "find_checkpoints", "latest_valid_checkpoint", "restore", "save_run"]

CKPT_PATTERN = "checkpoint_{step:08d}.pt"


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


def restore(run, out_dir: str, progress: bool = False) -> int:
    """Load the newest valid checkpoint of ``out_dir`` into ``run`` (a :class:`~.build.Run`):
    weights, optimizer, EMA, generators and batch position; returns its step (0 when none)."""
    path, ck = latest_valid_checkpoint(out_dir)
    if ck is None:
        return 0
    ckpt.load_state(run.model, ck["state_dict"], path)
    if ck.get("optimizer"):
        # this run's Adam kernel (fused, capturable or not), not the saved run's: set before loading,
        # as the fused and capturable kernels want their step counters on the device (and a CPU run
        # cannot use a capturable one saved by a CUDA-graph run)
        own = [{k: g.get(k) for k in ("fused", "foreach", "capturable")} for g in run.optimizer.param_groups]
        osd = ck["optimizer"]
        run.optimizer.load_state_dict(dict(osd, param_groups=[dict(g, **o) for g, o in zip(osd["param_groups"], own)]))
    if run.ema is not None and ck.get("ema_state_dict"):
        run.ema.load_state_dict(ck["ema_state_dict"])
    ts = ck["extra"]["train_state"]
    run.data_gen.set_state(ts["data_gen"])
    run.noise_gen.set_state(ts["noise_gen"])
    run.batches.load(ts["batches"])
    run.step = int(ck["step"])
    if progress:
        print(f"fastncsn: resuming from {path} (step {run.step})")
    return run.step


def save_run(run, out_dir: str, keep_last: int) -> str:
    """Write ``run``'s checkpoint at its step atomically, keep the newest ``keep_last``; returns the path."""
    run.meta["train_state"] = dict(data_gen=run.data_gen.get_state(), noise_gen=run.noise_gen.get_state(),
                                   batches=run.batches.state())
    path = os.path.join(out_dir, CKPT_PATTERN.format(step=run.step))
    ckpt.save(run.model, path, optimizer=run.optimizer, step=run.step, ema=run.ema, extra=run.meta,
              rng=ckpt.rng_state())
    for old in find_checkpoints(out_dir)[keep_last:]:
        os.remove(old)
    return path
