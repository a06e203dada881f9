"""Training checkpoints: discovery, the latest valid one, settings checks, saving and exact resumption.

A checkpoint holds the model, the optimizer, the EMA shadow and, in ``extra``, the run's
settings, its ``run_id`` (made at a fresh start, kept across resumes) and, in
``extra["train_state"]``, the data-order and noise generators' states and the batch
position, so a resumed run equals an uninterrupted one (bit for bit on one device).

Discovery matches exactly ``checkpoint_{step:08d}.pt`` (a ``checkpoint_best.pt`` is not
ours); rotation removes only checkpoints of the current run.  Checkpoints written before
run ids existed count as one run, :data:`LEGACY_RUN_ID`.
"""
from __future__ import annotations

import math
import os
import re
import uuid
import warnings

from .. import checkpoint as ckpt
from ..files import UnsafeFileError, safe_torch_load

__all__ = ["CKPT_PATTERN", "CKPT_REGEX", "LEGACY_RUN_ID", "RESUME_SETTINGS", "find_checkpoints",
           "checkpoint_run_id", "latest_valid_checkpoint", "check_checkpoint_files", "check_fresh_start", "new_run_id",
           "changed_settings", "remove_old_checkpoints", "restore", "save_run"]

CKPT_PATTERN = "checkpoint_{step:08d}.pt"
CKPT_REGEX = re.compile(r"^checkpoint_(\d{8})\.pt$")
#: the run id of checkpoints written before checkpoints carried one
LEGACY_RUN_ID = "legacy"
#: ``extra`` entries a resumed run must share with its checkpoint (unless changes are allowed)
RESUME_SETTINGS = ("data", "batch_size", "lr", "ema_rate", "seed", "grad_clip", "warmup_steps", "anneal_power")


def new_run_id() -> str:
    return uuid.uuid4().hex


def find_checkpoints(out_dir: str) -> list:
    """Our training checkpoints in ``out_dir`` (names exactly ``checkpoint_{step:08d}.pt``), newest step first."""
    try:
        names = os.listdir(out_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), n) for n in names if (m := CKPT_REGEX.match(n))]
    return [os.path.join(out_dir, n) for _, n in sorted(found, reverse=True)]


def checkpoint_run_id(path: str):
    """The ``run_id`` of the checkpoint at ``path`` (:data:`LEGACY_RUN_ID` when it has none), or None when unreadable.

    Read without running code in it; a file holding other Python objects raises
    :class:`~fastncsn.checkpoint.UnsafeCheckpointError` (naming ``out_dir``)."""
    try:  # memory-mapped: the metadata is read, the tensors are not
        obj = safe_torch_load(path, arg="out_dir", mmap=True)
    except UnsafeFileError as exc:
        raise ckpt.UnsafeCheckpointError(str(exc)) from None
    except Exception:
        try:  # (a file that cannot be memory-mapped, e.g. torch's legacy format: read it whole)
            obj = ckpt.load_checkpoint(path)
        except ckpt.UnsafeCheckpointError as exc:
            raise ckpt.UnsafeCheckpointError(ckpt.error_line(exc, "out_dir")) from None
        except ckpt.CheckpointError:
            return None
    if not isinstance(obj, dict):
        return None
    return (obj.get("extra") or {}).get("run_id") or LEGACY_RUN_ID


def latest_valid_checkpoint(out_dir: str):
    """``(path, checkpoint dict)`` of the newest readable checkpoint with finite weights, warning about
    the others; or ``(None, None)``.  A checkpoint holding Python objects that could run code when read
    is not skipped: :class:`~fastncsn.checkpoint.UnsafeCheckpointError` naming it and ``out_dir``."""
    for path in find_checkpoints(out_dir):
        try:
            ck = ckpt.load_checkpoint(path)
            if "train_state" not in (ck.get("extra") or {}):
                raise ckpt.CheckpointError(f"path: {path!r} has no training state")
            bad = ckpt.non_finite(ck["state_dict"]) + ckpt.non_finite(ck.get("ema_state_dict"))
            if bad:
                raise ckpt.CheckpointError(f"path: {path!r} holds non-finite weights ({bad[0]}, ...)")
            return path, ck
        except ckpt.UnsafeCheckpointError as exc:
            raise ckpt.UnsafeCheckpointError(ckpt.error_line(exc, "out_dir")) from None
        except ckpt.CheckpointError as exc:
            warnings.warn(f"fastncsn: skipping unreadable checkpoint {path}: {exc}; trying the previous one",
                          RuntimeWarning, stacklevel=2)
    return None, None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-6)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def changed_settings(ck: dict, run) -> tuple:
    """``(changes, fixed)``: settings of ``run`` that differ from checkpoint ``ck``'s, as ``{name: [old, new]}``;
    ``fixed`` are the model's shape settings (ngf, num_levels, image size...), which a resume cannot change."""
    saved, own = ck.get("extra") or {}, run.meta
    changes = {k: [saved[k], own.get(k)] for k in RESUME_SETTINGS if k in saved and not _same(saved[k], own.get(k))}
    config, cfg = dict(ck.get("config") or {}), dict(getattr(run.model, "config", {}))
    if "sigmas" in config and "sigmas" in cfg and not _same(list(config["sigmas"]), list(cfg["sigmas"])):
        changes["sigmas"] = [list(config["sigmas"]), list(cfg["sigmas"])]
    config.pop("backend", None)  # a run option, not state: checkpoints before bbed317 recorded it (load() ignores it)
    fixed = {k: [config[k], cfg.get(k)] for k in config if k != "sigmas" and not _same(config[k], cfg.get(k))}
    return changes, fixed


def _describe(changes: dict) -> str:
    def short(v):
        if isinstance(v, list) and len(v) > 3:
            return f"[{v[0]:.4g}, ..., {v[-1]:.4g}] ({len(v)} levels)"
        return repr(v)
    return ", ".join(f"{k} {short(a)} -> {short(b)}" for k, (a, b) in changes.items())


def _run_ids(paths: list) -> dict:
    ids = {}
    for path in paths:
        rid = checkpoint_run_id(path)
        if rid is not None:
            ids.setdefault(rid, []).append(path)
    return ids


def restore(run, out_dir: str, progress: bool = False, allow_changed_settings: bool = False) -> dict:
    """Load the newest valid checkpoint of ``out_dir`` into ``run`` (a :class:`~.build.Run`):
    weights, optimizer, EMA, generators, batch position and run id.

    The settings that matter (:data:`RESUME_SETTINGS`, the noise ladder) must equal the checkpoint's,
    else ValueError listing the differences; with ``allow_changed_settings`` the new values apply (the
    new lr goes into the optimizer) and the change is recorded in ``run.meta["settings_changes"]``.
    Returns the changes applied (``{name: [old, new]}``; empty when none or when nothing was resumed)."""
    ids = _run_ids(find_checkpoints(out_dir))
    if len(ids) > 1:
        raise ValueError(f"out_dir: {out_dir!r} holds checkpoints of {len(ids)} different runs "
                         f"({', '.join(os.path.basename(p[0]) for p in ids.values())}, ...); resuming would mix them: "
                         "move one run's checkpoints to another directory")
    path, ck = latest_valid_checkpoint(out_dir)
    if ck is None:
        return {}
    changes, fixed = changed_settings(ck, run)
    if fixed:
        raise ValueError(f"out_dir: {path!r} was trained with another model shape ({_describe(fixed)}); "
                         "a resume cannot change it: choose another out_dir for a new run")
    if changes and not allow_changed_settings:
        raise ValueError(f"allow_changed_settings: the settings differ from {path!r} ({_describe(changes)}); "
                         "rerun with the checkpoint's settings, or pass allow_changed_settings=True to apply the "
                         "new ones, or choose another out_dir")
    ckpt.load_state(run.model, ck["state_dict"], path)
    if ck.get("optimizer"):
        # this run's Adam kernel (fused, capturable or not), not the saved run's: set before loading,
        # as the fused and capturable kernels want their step counters on the device (and a CPU run
        # cannot use a capturable one saved by a CUDA-graph run)
        own = [{k: g.get(k) for k in ("fused", "foreach", "capturable")} for g in run.optimizer.param_groups]
        osd = ck["optimizer"]
        run.optimizer.load_state_dict(dict(osd, param_groups=[dict(g, **o) for g, o in zip(osd["param_groups"], own)]))
    if "lr" in changes:
        for group in run.optimizer.param_groups:
            group["lr"] = run.meta["lr"]
    if run.ema is not None and ck.get("ema_state_dict"):
        run.ema.load_state_dict(ck["ema_state_dict"])
    ts = ck["extra"]["train_state"]
    run.data_gen.set_state(ts["data_gen"])
    run.noise_gen.set_state(ts["noise_gen"])
    if "data" not in changes:  # (another dataset: a fresh epoch order from the restored generator)
        run.batches.load(ts["batches"])
    run.step = int(ck["step"])
    history = list(ck["extra"].get("settings_changes") or [])
    if changes:
        history.append(dict(step=run.step, changes=changes))
        warnings.warn(f"fastncsn: resuming {path} with changed settings: {_describe(changes)}",
                      RuntimeWarning, stacklevel=2)
    run.meta.update(run_id=ck["extra"].get("run_id") or LEGACY_RUN_ID, settings_changes=history)
    if progress:
        print(f"fastncsn: resuming from {path} (step {run.step})")
    return changes


def check_checkpoint_files(out_dir: str) -> None:
    """ValueError naming the entry when something in ``out_dir`` is named like our checkpoints but is not a
    file (e.g. a folder ``checkpoint_00000004.pt``): a save there would fail after the steps."""
    for path in find_checkpoints(out_dir):
        if not os.path.isfile(path):
            raise ValueError(f"out_dir: {path!r} is named like a checkpoint but is not a file (a "
                             f"{'directory' if os.path.isdir(path) else 'special file'}); move it out of {out_dir!r}")


def check_fresh_start(out_dir: str) -> None:
    """ValueError naming ``out_dir`` when a fresh (not resumed) run would start beside another run's checkpoints."""
    found = find_checkpoints(out_dir)
    if found:
        raise ValueError(f"out_dir: {out_dir!r} holds checkpoints of an earlier run ({os.path.basename(found[0])}"
                         f"{', ...' if len(found) > 1 else ''}); a fresh start (resume=False) there would mix two runs: "
                         "choose another out_dir or remove the old checkpoints")


def _safe_run_id(path: str):
    """:func:`checkpoint_run_id`, None for a file that holds Python objects (not ours: never read, never removed)."""
    try:
        return checkpoint_run_id(path)
    except ckpt.UnsafeCheckpointError:
        return None


def remove_old_checkpoints(out_dir: str, run_id: str, keep_last) -> list:
    """Delete run ``run_id``'s checkpoints in ``out_dir`` but its newest ``keep_last`` (None: keep all);
    other runs' files are never touched.  Returns the removed paths."""
    if keep_last is None:
        return []
    own = [p for p in find_checkpoints(out_dir) if _safe_run_id(p) == run_id]
    for old in own[keep_last:]:
        os.remove(old)
    return own[keep_last:]


def save_run(run, out_dir: str, keep_last) -> str:
    """Write ``run``'s checkpoint at its step atomically, keep its run's newest ``keep_last``; returns the path."""
    bad = ckpt.non_finite(run.model.state_dict())
    if bad:
        raise FloatingPointError(f"training diverged by step {run.step}: non-finite weights ({bad[0]}, ...); "
                                 "no checkpoint written, the last finite one is kept")
    run.meta["train_state"] = dict(data_gen=run.data_gen.get_state(), noise_gen=run.noise_gen.get_state(),
                                   batches=run.batches.state())
    path = os.path.join(out_dir, CKPT_PATTERN.format(step=run.step))
    ckpt.save(run.model, path, optimizer=run.optimizer, step=run.step, ema=run.ema, extra=run.meta,
              rng=ckpt.rng_state())
    remove_old_checkpoints(out_dir, run.meta["run_id"], keep_last)
    return path
