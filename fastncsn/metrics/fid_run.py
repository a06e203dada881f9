"""FID of many samples in one resumable run: reference statistics, sharded sampling, FID.

The papers' FIDs use 50,000 samples; FIDs of 1-2k samples are biased upwards by
tens of points. :func:`fid_of_checkpoint` makes the 50k run the easy one:

* the unit of work is a **shard** of ``shard_size`` samples; shard ``k`` holds
  samples ``k * shard_size ...`` of ``fastncsn.sample(n, seed=seed)`` (per-sample
  noise streams keyed by ``(seed, index)``: ``first_index``), so the samples are
  those of the unsharded call -- whatever ``shard_size``, ``batch_size`` or the
  number of processes;
* under ``torchrun`` (or any initialised ``torch.distributed`` group) rank ``r``
  of ``W`` does shards ``r, r + W, ...`` (the CUDA-graph sampler on its own GPU,
  ``LOCAL_RANK``); one process does them all;
* every finished shard is written atomically to ``out_dir/shard_KKKKK.pt`` (its
  extractor features, optionally the samples as uint8, and the run fingerprint);
  a rerun skips the valid shards, so a killed run resumes where it stopped, with
  no sample drawn twice and none lost;
* ``out_dir/fingerprint.json`` records the run's settings; a folder holding a
  different run is an error (never silently mixed), and so is a folder another
  process is using (a lock, :func:`fastncsn.files.lock_run_folder`);
* rank 0 merges the shards' features in shard order into one
  :class:`~fastncsn.metrics.FeatureStats`, computes the Frechet distance to the
  reference statistics and writes ``out_dir/fid.json`` atomically.

Reference statistics (:func:`reference_stats`, :func:`save_stats`,
:func:`load_stats`) are a ``FeatureStats`` with the extractor's name, saved with
``torch.save``; the extractors are ``"digits"`` (the shipped digits classifier,
offline, 64-d; digits-FIDs are not comparable with Inception FIDs), ``"mnist"``
(the shipped MNIST classifier, offline, 64-d: MNIST-FID) and ``"inception"`` (Inception-v3 pool3 from a local torchvision weights file).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..checkpoint import atomic_save, atomic_write_text
from ..files import UnsafeFileError, lock_run_folder, safe_torch_load
from ..sampling import SamplerSettings, resolve_model, sample
from ..sampling.core import check_count, check_seed
from ..sampling.distributed import init_from_env
from .extractors import (DIGITS_CLASSIFIER_PATH, MNIST_CLASSIFIER_PATH, InceptionFeatures, shipped_digits_classifier,
                         shipped_mnist_classifier)
from .fid import FeatureStats, compute_feature_stats, frechet_distance, image_batches

__all__ = ["EXTRACTORS", "STATS_FORMAT", "FIDRunError", "make_extractor", "reference_stats", "save_stats",
           "load_stats", "load_npz_images", "fid_of_checkpoint", "image_features", "shard_path", "num_shards",
           "file_sha256", "default_out_dir", "finished_shards"]

EXTRACTORS = ("digits", "mnist", "inception")
STATS_FORMAT = "fastncsn-fid-stats/1"
SHARD_FORMAT = "fastncsn-fid-shard/2"   # /1: shard k drawn with shard_seed(seed, k) (redrawn)
FINGERPRINT_FILE = "fingerprint.json"
RESULT_FILE = "fid.json"


class FIDRunError(ValueError):
    """A FID run cannot go on: a folder of another run, statistics of another extractor, a bad file."""


# --------------------------------------------------------------------------- #
# Extractors and reference statistics
# --------------------------------------------------------------------------- #
def file_sha256(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def make_extractor(name: str = "digits", inception_weights: Union[str, Path, None] = None,
                   device: Union[str, torch.device, None] = None) -> tuple[Callable, dict]:
    """A feature extractor by name, and its identity (what makes its features comparable).

    Args:
        name: ``"digits"`` (the shipped digits classifier, 64-d, images ``[N, 1, 28, 28]``),
            ``"mnist"`` (the shipped MNIST classifier, the same network trained on MNIST: MNIST-FID)
            or ``"inception"`` (:class:`InceptionFeatures`, 2048-d, any image size).
        inception_weights: the local torchvision Inception-v3 weights file (``"inception"`` only;
            a missing file raises ``FileNotFoundError`` saying how to get it).
        device: where the extractor runs (default CPU).

    Returns:
        ``(extractor, identity)``: ``extractor`` maps images ``[B, C, H, W]`` in [0, 1] to
        features ``[B, D]``; ``identity`` is a JSON-able dict (name, file, its size and dim).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if name in ("digits", "mnist"):
        path, shipped = ((DIGITS_CLASSIFIER_PATH, shipped_digits_classifier) if name == "digits"
                         else (MNIST_CLASSIFIER_PATH, shipped_mnist_classifier))
        net = shipped(str(dev))
        return net.features, {"name": name, "file": path.name, "file_size": path.stat().st_size,
                              "dim": net.feature_dim}
    if name == "inception":
        net = InceptionFeatures(inception_weights, device=dev)
        path = Path(inception_weights).expanduser()
        return net, {"name": "inception", "file": path.name, "file_size": path.stat().st_size,
                     "dim": net.feature_dim}
    raise ValueError(f"extractor: expected one of {EXTRACTORS}, got {name!r}")


def load_npz_images(path: Union[str, Path]) -> torch.Tensor:
    """Images from an ``.npz``: its ``images`` / ``samples`` / ``x`` array, else its only array.

    Accepts ``[N, C, H, W]`` or ``[N, H, W, C]`` (C in 1, 3) or ``[N, H, W]``, uint8 (0..255)
    or floating point in [0, 1]. Returns float32 ``[N, C, H, W]`` in [0, 1].  Read without
    pickle (``allow_pickle=False``); a file that is not an ``.npz`` of arrays, another dtype,
    NaN/inf or floats outside [0, 1] raise ValueError naming ``npz``, the file and what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz: no such file {str(path)!r}")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # text, pickles, truncated zips: never numpy's advice to load it unsafely
        raise ValueError(f"npz: {str(path)!r} is not a readable .npz of image arrays (numpy.savez); "
                         f"{type(exc).__name__}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"npz: {str(path)!r} holds one bare array (a .npy file), not an .npz archive; "
                         "write it with numpy.savez(path, images=array)")
    with z:
        keys = list(z.files)
        key = next((k for k in ("images", "samples", "x") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"npz: {str(path)!r} has arrays {keys}; expected one named images, samples or x")
        try:
            a = z[key]
        except Exception as exc:  # object arrays (pickled), damaged members
            raise ValueError(f"npz: {str(path)!r}[{key!r}] is not a readable numeric array "
                             f"({type(exc).__name__}); expected uint8 or floating-point images") from None
    if a.dtype != np.uint8 and a.dtype.kind != "f":
        raise ValueError(f"npz: {str(path)!r}[{key!r}] must be uint8 (0..255) or floating point in [0, 1], "
                         f"got {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"npz: {str(path)!r}[{key!r}] must be images [N, C, H, W] or [N, H, W, C], "
                         f"got shape {list(a.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"npz: {str(path)!r}[{key!r}] holds no images (shape {list(a.shape)})")
    if a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(a))
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(f"npz: {str(path)!r}[{key!r}] holds {int((~finite).sum())} NaN or inf values; expected "
                         "images in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (0..255 floats? divide by 255 or store uint8)" if hi > 1.0 and hi <= 255.0 and lo >= 0.0 else ""
        raise ValueError(f"npz: {str(path)!r}[{key!r}] holds values in [{lo:g}, {hi:g}]; floating-point images must "
                         f"be in [0, 1]{hint}")
    return x


def reference_stats(images, extractor: str = "digits", out: Union[str, Path, None] = None,
                    root: Optional[str] = None, inception_weights: Union[str, Path, None] = None,
                    batch_size: int = 256, device: Union[str, torch.device, None] = None,
                    progress: bool = False) -> FeatureStats:
    """Feature statistics of a reference image set, optionally saved to ``out``.

    Args:
        images: a tensor ``[N, C, H, W]`` in [0, 1], an iterable of such batches, a dataset
            name of :func:`fastncsn.data.get_dataset` (``digits``, ``mnist``, ``cifar10``,
            ``folder:PATH``, ...; training split, no flips) or the path of an ``.npz`` of images
            (:func:`load_npz_images`).
        extractor: ``"digits"``, ``"mnist"`` or ``"inception"`` (see :func:`make_extractor`).
        out: file to write the statistics to (:func:`save_stats`).
        root: directory of the torchvision dataset files (dataset names only).
        inception_weights, device: as :func:`make_extractor`.
        batch_size: images per extractor call.
        progress: a tqdm bar over the images.

    Returns:
        The :class:`FeatureStats` (``n`` = number of images).
    """
    fn, identity = make_extractor(extractor, inception_weights, device)  # a missing weights file fails first
    source = "tensor"
    if isinstance(images, (str, Path)):
        source = str(images)
        if str(images).endswith(".npz"):
            images = load_npz_images(images)
        else:
            from torch.utils.data import DataLoader
            from ..data import get_dataset
            images = DataLoader(get_dataset(str(images), root=root, train=True, random_flip=False),
                                batch_size=batch_size, shuffle=False)
    if progress:
        images = _image_progress(images, batch_size)
    stats = compute_feature_stats(images, fn, batch_size)
    if out is not None:
        save_stats(stats, out, identity, source=source)
    return stats


def _image_progress(images, batch_size: int):
    """The batches of ``images`` (:func:`~fastncsn.metrics.fid.image_batches`) through a tqdm bar over images."""
    from tqdm.auto import tqdm
    total = images.shape[0] if isinstance(images, torch.Tensor) else \
        len(images.dataset) if hasattr(images, "dataset") else None
    with tqdm(total=total, desc="fid-stats", unit="image") as bar:
        for batch in image_batches(images, batch_size):
            yield batch
            bar.update(batch.shape[0])


def save_stats(stats: FeatureStats, path: Union[str, Path], extractor: dict, **meta) -> None:
    """Write reference statistics (and the extractor's identity, ``meta``) to ``path`` atomically."""
    if stats.n < 2:
        raise ValueError(f"stats: need at least 2 images for a covariance, got {stats.n}")
    atomic_save({"format": STATS_FORMAT, "stats": stats.state_dict(), "extractor": dict(extractor),
                 "meta": dict(meta)}, str(path))


def load_stats(path: Union[str, Path]) -> tuple[FeatureStats, dict]:
    """``(stats, extractor identity)`` from a file written by :func:`save_stats`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ref: no such statistics file {str(path)!r} (make one with fastncsn fid-stats)")
    try:
        blob = safe_torch_load(path, arg="ref")
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise FIDRunError(f"ref: {str(path)!r} is not a statistics file ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != STATS_FORMAT:
        raise FIDRunError(f"ref: {str(path)!r} is not a fastncsn statistics file (make one with fastncsn fid-stats)")
    return FeatureStats.from_state_dict(blob["stats"]), dict(blob["extractor"])


# --------------------------------------------------------------------------- #
# The sharded run
# --------------------------------------------------------------------------- #
def num_shards(n: int, shard_size: int) -> int:
    """Number of shards of a run of ``n`` samples (the last one may be smaller)."""
    return -(-n // shard_size)


def shard_path(out_dir: Union[str, Path], k: int) -> Path:
    """The file of shard ``k``."""
    return Path(out_dir) / f"shard_{k:05d}.pt"


def default_out_dir(checkpoint: Union[str, Path], n: int, seed: int) -> Path:
    """The default folder of a run: ``<checkpoint stem>_fid_n<n>_seed<seed>`` in the working directory (never
    beside the checkpoint, which may be inside the installed package)."""
    return Path.cwd() / f"{Path(checkpoint).stem}_fid_n{n}_seed{seed}"


def finished_shards(out_dir: Union[str, Path], total: int) -> int:
    """How many of the ``total`` shard files exist in ``out_dir`` (each is written atomically: complete)."""
    return sum(shard_path(out_dir, k).is_file() for k in range(total))


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj))


def _fingerprint(checkpoint, settings: SamplerSettings, executor: dict, n, seed, shard_size, batch_size,
                 extractor: dict) -> dict:
    ck = Path(checkpoint)
    return _json_roundtrip({
        "checkpoint": str(ck.resolve()), "checkpoint_size": ck.stat().st_size,
        "checkpoint_sha256": file_sha256(ck), "sampler": dataclasses.asdict(settings), "executor": executor,
        "n": n, "seed": seed, "shard_size": shard_size, "batch_size": batch_size, "extractor": extractor})


def _check_folder(out_dir: Path, fp: dict) -> None:
    """Raise if ``out_dir`` holds a run with another fingerprint."""
    f = out_dir / FINGERPRINT_FILE
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise FIDRunError(f"out: {str(f)!r} is unreadable ({exc}); delete the folder or use another --out") from None
    if old != fp:
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        raise FIDRunError(f"out: {str(out_dir)!r} holds shards of a different FID run (differs in: "
                          f"{', '.join(diff)}); use another --out folder or delete this one")


def _load_shard(path: Path, fp: dict, k: int, m: int, dim: int) -> Optional[torch.Tensor]:
    """The features of a finished shard file, or None when it is missing or not a valid shard of this run."""
    if not path.is_file():
        return None
    try:
        blob = safe_torch_load(path)
    except Exception:  # (a damaged shard, or one holding Python objects: not ours, redrawn and replaced)
        return None
    if not isinstance(blob, dict) or blob.get("format") != SHARD_FORMAT or blob.get("index") != k:
        return None
    feats = blob.get("features")
    if blob.get("fingerprint") != fp or not isinstance(feats, torch.Tensor) or tuple(feats.shape) != (m, dim) \
            or not bool(torch.isfinite(feats).all()):
        return None
    return feats


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _progress(enabled: bool, total: int, initial: int, levels: int):
    """The run's bar over noise levels (``levels`` per shard: every chunk's levels), starting at the finished
    shards; its postfix says which shard is drawn."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total * levels, initial=initial * levels, desc="fid", unit="level")


def _check_ref(ref: FeatureStats, ref_stats, dim: int) -> None:
    """The reference statistics fit this run's extractor (dimension ``dim``) and are finite, before any sampling."""
    if ref.n < 2:
        raise FIDRunError(f"ref: {str(ref_stats)!r} holds statistics of {ref.n} image(s); a covariance needs >= 2")
    mean, cov = ref.mean(), ref.cov()
    if ref.dim != dim or tuple(mean.shape) != (dim,) or tuple(cov.shape) != (dim, dim):
        raise FIDRunError(f"ref: {str(ref_stats)!r} holds statistics of {ref.dim}-d features (mean "
                          f"{list(mean.shape)}, covariance {list(cov.shape)}); this run's extractor gives {dim}-d "
                          "features (make the statistics with the same --extractor)")
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(cov).all())):
        raise FIDRunError(f"ref: {str(ref_stats)!r} holds NaN or inf statistics; make them again with fastncsn "
                          "fid-stats")


@torch.no_grad()
def fid_of_checkpoint(checkpoint: Union[str, Path], ref_stats: Union[str, Path], n: int = 50_000,
                      out_dir: Union[str, Path, None] = None, seed: int = 0, batch_size: Optional[int] = None,
                      shard_size: int = 1000, extractor: str = "digits",
                      inception_weights: Union[str, Path, None] = None,
                      device: Union[str, torch.device, None] = None, fast: Optional[bool] = None,
                      precision: Optional[str] = None, steps_per_level: Optional[int] = None,
                      eps: Optional[float] = None, save_samples: bool = False, extract_batch_size: int = 250,
                      progress: bool = True,
                      on_shard: Optional[Callable[[int], None]] = None, group=None) -> Optional[dict]:
    """FID of ``n`` samples of a checkpoint against reference statistics, sharded and resumable.

    Args:
        checkpoint: the model's checkpoint file (:func:`fastncsn.load`).
        ref_stats: statistics file of the reference set (:func:`save_stats`, ``fastncsn fid-stats``),
            computed with the same extractor.
        n: number of samples, >= 2 (a covariance needs two; the papers: 50,000).
        out_dir: folder of the shards, ``fingerprint.json`` and ``fid.json`` (default:
            :func:`default_out_dir`, ``<checkpoint stem>_fid_n<n>_seed<seed>`` in the working directory).
        seed: the run's seed; the samples are those of ``fastncsn.sample(model, n, seed=seed)``.
        batch_size: sampler chunk size (default: a whole shard at once).
        shard_size: samples per shard, the unit of work and of resumption.
        extractor, inception_weights: see :func:`make_extractor`.
        device: where to sample and extract (default: ``cuda:LOCAL_RANK`` when CUDA is
            available, else the CPU).
        fast, precision: as :func:`fastncsn.sample` (default: the CUDA-graph sampler on CUDA,
            the fp32 reference sampler on the CPU).
        steps_per_level, eps: sampler overrides (default: the checkpoint's sampling defaults).
        save_samples: also store each shard's samples (uint8) in its file.
        extract_batch_size: images per feature-extractor call.
        progress: on rank 0, a tqdm bar over the noise levels of all shards (the reference sampler advances
            it level by level, the CUDA-graph sampler shard by shard), with ETA.
        on_shard: called with ``k`` after shard ``k`` was drawn and saved (not for skipped shards).
        group: ``torch.distributed`` process group (default: the world; joined from torchrun's
            environment when none exists yet).

    Returns:
        On rank 0 the result written to ``fid.json`` (``fid``, ``n``, ``checkpoint``, ``sampler``,
        ``extractor``, ``seed``, ...); ``None`` on other ranks.
    """
    import torch.distributed as dist
    check_count(n, "n", minimum=2)
    check_count(shard_size, "shard_size")
    check_count(extract_batch_size, "extract_batch_size")
    if batch_size is not None:
        check_count(batch_size, "batch_size")
    check_seed(seed)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(checkpoint)!r}")
    ref, ref_extractor = load_stats(ref_stats)
    if extractor != ref_extractor.get("name"):
        raise FIDRunError(f"ref: {str(ref_stats)!r} holds {ref_extractor.get('name')!r} features; this run uses "
                          f"extractor {extractor!r} (make the statistics with the same --extractor)")

    if dist.is_available():
        init_from_env()
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(group), dist.get_rank(group)) if distributed else (1, 0)
    device = torch.device(device) if device is not None else _default_device()
    fast = device.type == "cuda" if fast is None else fast

    fn, identity = make_extractor(extractor, inception_weights, device)
    if identity != ref_extractor:
        raise FIDRunError(f"ref: {str(ref_stats)!r} was made with extractor {ref_extractor}, this run has "
                          f"{identity}; make the statistics with the same extractor file")
    _check_ref(ref, ref_stats, identity["dim"])
    model = resolve_model(str(checkpoint)).to(device)
    settings = SamplerSettings.resolve(model, steps_per_level=steps_per_level, eps=eps)
    executor = {"fast": bool(fast), "precision": precision or ("auto" if fast else "fp32")}
    fp = _fingerprint(checkpoint, settings, executor, n, seed, shard_size, batch_size, identity)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint, n, seed)
    _check_folder(out_dir, fp)  # every rank, before anything is written: all raise alike
    lock = lock_run_folder(out_dir, "out_dir", rank, distributed, group, device)  # one run per folder
    try:
        if rank == 0 and not (out_dir / FINGERPRINT_FILE).is_file():
            atomic_write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n", str(out_dir / FINGERPRINT_FILE))
        if distributed:
            dist.barrier(group)
            _check_folder(out_dir, fp)  # every rank against rank 0's fingerprint: other settings stop here

        total = num_shards(n, shard_size)
        sizes = [min(shard_size, n - k * shard_size) for k in range(total)]
        dim = identity["dim"]
        mine = [k for k in range(rank, total, world)
                if _load_shard(shard_path(out_dir, k), fp, k, sizes[k], dim) is None]
        levels = int(torch.as_tensor(model.sigmas).numel())
        per_shard = levels * -(-shard_size // (batch_size or shard_size))   # the reference sampler's levels per shard
        bar = _progress(progress and rank == 0, total, finished_shards(out_dir, total), per_shard)
        try:  # the bar is closed however the run ends (an interruption's message then starts a line)
            for k in mine:
                if bar is not None:
                    bar.set_postfix_str(f"shard {k + 1} of {total}")
                x = sample(model, sizes[k], seed=seed, first_index=k * shard_size, noise="per_sample", device=device,
                           fast=fast, precision=precision,
                           batch_size=batch_size, steps_per_level=settings.steps_per_level, eps=settings.eps,
                           progress=bar if bar is not None else False)
                feats = image_features(x, fn, extract_batch_size)
                blob = {"format": SHARD_FORMAT, "index": k, "seed": seed, "first_index": k * shard_size,
                        "fingerprint": fp,
                        "features": feats}
                if save_samples:
                    blob["samples"] = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                atomic_save(blob, str(shard_path(out_dir, k)))
                if on_shard is not None:
                    on_shard(k)
                if bar is not None:   # every finished shard (other ranks' too), whatever the sampler advanced
                    bar.update(finished_shards(out_dir, total) * per_shard - bar.n)
            if distributed:
                dist.barrier(group)
            if bar is not None:
                bar.update(bar.total - bar.n)
        finally:
            if bar is not None:
                bar.close()
        if rank != 0:
            return None

        stats = FeatureStats(dim=dim)
        for k in range(total):  # shard order: the same statistics whatever the number of processes
            feats = _load_shard(shard_path(out_dir, k), fp, k, sizes[k], dim)
            if feats is None:
                raise FIDRunError(f"out: shard {k} in {str(out_dir)!r} is missing or damaged after the run; rerun "
                                  "the same command to redraw it")
            stats.update(feats)
        value = frechet_distance(stats.mean(), stats.cov(), ref.mean(), ref.cov())
        result = {"fid": value, "n": n, "checkpoint": fp["checkpoint"],
                  "checkpoint_sha256": fp["checkpoint_sha256"], "sampler": fp["sampler"], "executor": executor,
                  "extractor": identity, "seed": seed,
                  "shard_size": shard_size, "num_shards": total, "batch_size": batch_size,
                  "ref": str(Path(ref_stats).resolve()), "ref_n": ref.n, "world_size": world,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", str(out_dir / RESULT_FILE))
        return result
    finally:
        lock.release()


def image_features(x: torch.Tensor, extractor: Callable, batch_size: int) -> torch.Tensor:
    """Features ``[N, D]`` (float32, CPU) of images ``x`` ``[N, C, H, W]``, ``batch_size`` at a time."""
    with torch.inference_mode():
        return torch.cat([extractor(x[s:s + batch_size]).float().cpu() for s in range(0, x.shape[0], batch_size)])
