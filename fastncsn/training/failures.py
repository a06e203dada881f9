"""How a training run fails without losing work: an unwritable run directory is refused before
any step, a diverged run stops before writing non-finite weights, a signal saves then raises.

* :func:`check_out_dir` -- ``out_dir`` and its log writable (a probe file written and removed);
* :class:`DivergenceGuard` -- FloatingPointError at the first non-finite loss (every step on
  the CPU; on CUDA, where a per-step host sync would cost, checked before every record and save);
* :class:`TrainingInterrupted` -- raised by ``train`` after the checkpoint of a SIGTERM/SIGINT stop;
  :attr:`~TrainingInterrupted.exit_code` is 128 + the signal number (143, 130), as a shell reports it.
"""
from __future__ import annotations

import math
import os
import signal
import tempfile
from typing import Optional

import torch

__all__ = ["TrainingInterrupted", "DivergenceGuard", "check_out_dir"]


class TrainingInterrupted(Exception):
    """A signal stopped ``train`` at ``step`` of ``steps``; ``checkpoint`` (when not None) holds that step.
    Rerunning the same call resumes from it."""

    def __init__(self, signum: int, step: int, steps: int, checkpoint: Optional[str]):
        self.signum, self.step, self.steps, self.checkpoint = signum, step, steps, checkpoint
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        saved = f"checkpoint saved to {checkpoint}" if checkpoint else "nothing saved (no out_dir)"
        super().__init__(f"training interrupted by {name} at step {step} of {steps}; {saved}; "
                         "rerun the same command to resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def check_out_dir(out_dir, log_name: str) -> None:
    """``out_dir`` can hold checkpoints and ``log_name``: an existing folder gets a probe file written and
    removed and its ``log_name`` (if any) opened for appending; a missing one is not created here (the run
    creates it once every other check has passed, so a refused run leaves nothing behind): its nearest
    existing parent must be a writable folder.  ValueError naming ``out_dir`` when any of it fails."""
    try:
        if not os.path.lexists(out_dir):
            parent = os.path.dirname(os.path.abspath(out_dir))
            while not os.path.lexists(parent):
                parent = os.path.dirname(parent)
            if not os.path.isdir(parent):
                raise NotADirectoryError(20, "Not a directory", parent)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied", parent)
            return
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=out_dir)
        os.close(fd)
        os.remove(probe)
        log = os.path.join(out_dir, log_name)
        if os.path.lexists(log):  # (a missing one is created by the first record, in a directory shown writable)
            with open(log, "a"):
                pass
    except OSError as exc:
        where = exc.filename or out_dir
        raise ValueError(f"out_dir: expected a writable directory for checkpoints and {log_name}, "
                         f"cannot write {str(where)!r}: {exc.strerror or exc}") from None


class DivergenceGuard:
    """Stops a run at its first non-finite loss (FloatingPointError with the step and the levels)."""

    def __init__(self, device: torch.device, interval: bool = False):
        self.each_step = device.type != "cuda" and not interval
        #: ``interval``: the step returns the loss of the interval since the last read (the whole-step
        #: graph); a non-finite loss anywhere in it makes the interval's loss non-finite, checked by check()
        self.interval = interval
        self.first_bad = None   #: CUDA: a device tensor, the first step whose loss was not finite (0: none)

    def step_done(self, out, step: int) -> None:
        if self.interval:
            return
        finite = torch.isfinite(out.loss.detach()).all()
        if self.each_step:
            if not bool(finite):
                raise self.error(out, step)
            return
        if self.first_bad is None:
            self.first_bad = torch.zeros((), dtype=torch.long, device=out.loss.device)
        self.first_bad = torch.where(~finite & (self.first_bad == 0), step, self.first_bad)

    def check(self, out, step: int) -> None:
        """Host side (before a record or a checkpoint): raise when any step so far had a non-finite loss."""
        if self.interval:
            if not math.isfinite(float(out.loss)):
                raise self.error(out, step)
            return
        if self.first_bad is not None and int(self.first_bad):
            raise self.error(out, int(self.first_bad), latest=step)

    @staticmethod
    def error(out, step: int, latest: Optional[int] = None) -> FloatingPointError:
        loss = float(out.loss.detach())
        per_level = out.per_level.detach().float().cpu().tolist()
        levels = getattr(out, "level_index", None)  # (the whole-step graph's interval loss has none)
        drawn = set(levels.tolist()) if levels is not None else set(range(len(per_level)))
        bad = [i for i, v in enumerate(per_level) if i in drawn and not math.isfinite(v)]
        at = f"step {step}" + (f" (seen at step {latest}, loss {loss})" if latest is not None else f": loss {loss}")
        return FloatingPointError(
            f"training diverged at {at}; non-finite per-level loss at levels {bad or 'unknown'} (of levels "
            f"0..{len(per_level) - 1}); no checkpoint of non-finite weights was written -- the last finite checkpoint "
            "is kept: resume from it with a lower lr (allow_changed_settings) or with gradient clipping")
