"""What a training run reports: JSON-lines log, TensorBoard scalars, tqdm progress bar, step timing.

Every ``log_every`` steps (and at the last) one record goes to ``train_log.jsonl``
(rank 0), to TensorBoard and to the progress bar's postfix: ``step``, ``loss``,
``per_level``, ``lr``, ``step_ms`` / ``step_time_s``, ``images_per_s``, ``fast``,
``precision``, ``max_memory_gb`` (CUDA) and, in a run's first record, ``startup_s``.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Optional

import torch

from ..files import atomic_write

__all__ = ["LOG_NAME", "TrainLog", "open_tensorboard", "log_records", "check_log", "trim_log"]

LOG_NAME = "train_log.jsonl"


def log_records(path: str) -> list:
    """``(line, record)`` of every complete line of the JSON-lines log ``path`` (``[]`` when there is none).

    A torn last line (no newline: the process was killed while writing it) is left out; any other line
    that is not a JSON record (an object with an int ``step``, if any) raises ValueError naming the file
    and the line."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    out = []
    for i, raw in enumerate(lines[:-1], 1):  # (the last piece follows the final newline: empty, or torn)
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict) or type(rec.get("step", 0)) is not int:
                raise ValueError("not an object with an int step")
        except ValueError as exc:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
            raise ValueError(f"out_dir: {path!r} line {i} is not a record of a training log ({exc}); repair the "
                             "file or move it away") from None
        out.append((raw + b"\n", rec))
    return out


def check_log(path: str, step: int) -> None:
    """Before a run appends to the log ``path``: a run resumed from a checkpoint at ``step`` > 0 keeps the
    records up to ``step`` (later ones are its own and are logged again, :func:`trim_log`); a new run
    (``step`` 0) refuses a log that holds records, which would otherwise be mixed with its own or lost
    (ValueError naming the file).  Unreadable records: :func:`log_records`."""
    records = log_records(path)
    if step == 0 and records:
        steps = [rec.get("step", 0) for _, rec in records]
        raise ValueError(f"out_dir: {path!r} holds {len(records)} records (steps {min(steps)}-{max(steps)}) of an "
                         f"earlier run, and {os.path.dirname(path) or '.'!r} has no checkpoint of it to resume: a "
                         "new run would mix its records with them; move the log away or choose another out_dir")


def trim_log(path: str, step: int) -> int:
    """Drop the records of ``path`` past ``step`` (and a torn last line): a run resumed from an older
    checkpoint logs those steps again.  Rewritten atomically; returns the number of lines dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        pieces = [p for p in f.read().split(b"\n") if p.strip()]   # every line, a torn last one included
    keep = [line for line, rec in log_records(path) if rec.get("step", 0) <= step]
    if len(keep) < len(pieces):
        atomic_write(path, lambda f: f.writelines(keep), suffix=".jsonl")
    return len(pieces) - len(keep)


def open_tensorboard(log_dir):
    """A TensorBoard ``SummaryWriter`` on ``log_dir``, or None (with a warning) when TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # ImportError: tensorboard not installed
        warnings.warn(f"fastncsn: tensorboard_dir={str(log_dir)!r} ignored: TensorBoard is not available ({exc}); "
                      f"install it with `pip install tensorboard` -- the metrics still go to the JSON-lines log "
                      f"and the progress bar", RuntimeWarning, stacklevel=4)
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


class TrainLog:
    """The sinks of one run (rank 0 only: JSON lines under ``out_dir``, TensorBoard, progress bar)
    and the step timing: the mean wall time per step between records, host synchronised, the
    first step of a run (compilation included) left out and reported as start-up."""

    def __init__(self, run, steps: int, batch_size: int, log_every: int, out_dir: Optional[str],
                 tensorboard_dir, progress: bool):
        self.run, self.steps, self.batch_size, self.log_every = run, steps, batch_size, log_every
        main = run.rank == 0
        self.file = None
        if out_dir is not None and main:
            trim_log(os.path.join(out_dir, LOG_NAME), run.step)
            self.file = open(os.path.join(out_dir, LOG_NAME), "a")
        self.board = open_tensorboard(tensorboard_dir) if tensorboard_dir is not None and main else None
        self.bar = None
        if progress and main:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=steps, initial=run.step, desc="train (DSM)", unit="step")
        self.on_cuda = run.device.type == "cuda"
        self.t_step = self.t_mark = None
        self.step_mark, self.first_ms, self.startup_s = run.step, None, None

    def event(self, **rec) -> None:
        """One JSON line that is not a step record (e.g. ``event="settings_changed"``)."""
        if self.file is not None:
            self.file.write(json.dumps(dict(rec, step=self.run.step)) + "\n")
            self.file.flush()

    def step_started(self) -> None:
        self.t_step = time.perf_counter()

    def step_done(self, out) -> None:
        """After ``run.step`` was counted: time it, advance the bar, write a record when due."""
        step = self.run.step
        if self.t_mark is None:  # the first step of this run: start-up (compilation included) ends here
            if self.on_cuda:
                torch.cuda.synchronize(self.run.device)
            self.t_mark = time.perf_counter()
            self.step_mark, self.first_ms = step, (self.t_mark - self.t_step) * 1e3
            self.startup_s = self.t_mark - self.run.started
        if self.bar is not None:
            self.bar.update(1)
        if (self.file is not None or self.board is not None or self.bar is not None) \
                and (step % self.log_every == 0 or step == self.steps):
            self._record(out, step)
            self.pause()

    def pause(self) -> None:
        """Restart the step clock (after a record or a checkpoint: that time is not step time)."""
        self.t_mark, self.step_mark = time.perf_counter(), self.run.step

    def _record(self, out, step: int) -> None:
        loss = float(out.loss.detach())  # (a host sync: the interval's steps have finished)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss})")
        now = time.perf_counter()
        step_ms = (now - self.t_mark) * 1e3 / (step - self.step_mark) if step > self.step_mark else self.first_ms
        rec = dict(step=step, loss=loss,
                   per_level=[None if math.isnan(v) else round(v, 5) for v in out.per_level.tolist()],
                   lr=self.run.optimizer.param_groups[0]["lr"], step_ms=step_ms, step_time_s=step_ms / 1e3,
                   images_per_s=self.batch_size / (step_ms / 1e3), fast=self.run.fast, precision=self.run.precision)
        if self.on_cuda:
            rec["max_memory_gb"] = torch.cuda.max_memory_allocated(self.run.device) / 1e9
        if self.startup_s is not None:
            rec["startup_s"], self.startup_s = self.startup_s, None
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
        if self.board is not None:
            _board_scalars(self.board, rec)
        if self.bar is not None:
            post = dict(loss=f"{loss:.3f}", img_s=f"{rec['images_per_s']:.0f}", ms=f"{step_ms:.1f}")
            if self.on_cuda:
                post["mem_gb"] = f"{rec['max_memory_gb']:.2f}"
            self.bar.set_postfix(post)

    def close(self) -> None:
        for sink in (self.bar, self.file, self.board):
            if sink is not None:
                sink.close()
