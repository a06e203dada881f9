"""The ``fastncsn`` command: sample, train, inpaint, schedule.

Every subcommand has ``--help``; expected failures (missing files, bad values,
corrupt checkpoints) print one ``fastncsn <command>: error: ...`` line and exit with 2.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

from .devices import check_device
from .images import ensure_parent, save_gif, save_grid, save_points, save_strip
from .ops import BACKENDS

__all__ = ["main", "check_output"]

#: smallest --sigma-L of `fastncsn schedule` (sigma_L**2 stays a normal float64)
SIGMA_MIN = 1e-150


class CLIError(Exception):
    """An expected failure reported as one line."""


TENSOR_EXTENSIONS = (".pt", ".npz")


def _save_tensor(x, path: str) -> None:
    from .files import atomic_write
    ensure_parent(path)
    if path.endswith(".npz"):
        import numpy as np
        atomic_write(path, lambda f: np.savez_compressed(f, samples=x.cpu().numpy()), suffix=".npz")
    elif path.endswith(".pt"):
        import torch
        atomic_write(path, lambda f: torch.save(x.cpu(), f), suffix=".pt")
    else:
        raise CLIError(f"--save-tensor: expected a .pt or .npz path, got {path!r}")


def _image_extensions() -> tuple:
    """File extensions PIL can write (``.png``, ``.jpg``, ...)."""
    from PIL import Image
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE))


def check_output(path: Optional[str], flag: str, kind: str = "image") -> None:
    """Before any compute: ``path`` (``None``: not asked for) can be written as ``kind``.

    ``kind``: ``"image"`` (any format PIL writes), ``"gif"`` or ``"tensor"`` (.pt/.npz).  The
    folder must exist, ``path`` must not be a folder and must end in a known extension.
    """
    if path is None:
        return
    exts = {"image": None, "gif": (".gif",), "tensor": TENSOR_EXTENSIONS}[kind]
    exts = exts or _image_extensions()
    example = {"image": "samples.png", "gif": "annealing.gif", "tensor": "samples.pt"}[kind]
    if os.path.isdir(path):
        raise CLIError(f"{flag}: {path!r} is a directory; expected a file name such as {example}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"{flag}: directory {os.path.dirname(path) or parent!r} does not exist")
    if not path.lower().endswith(exts):
        shown = ", ".join(e for e in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".webp") if e in exts) \
            if kind == "image" else " or ".join(exts)
        raise CLIError(f"{flag}: expected a file name ending in {shown}{', ...' if kind == 'image' else ''}, "
                       f"got {path!r}")


def _device(device: Optional[str]):
    """``--device`` checked up front (one line naming --device), CPU when not given."""
    import torch
    return check_device(device, "--device") or torch.device("cpu")


def _load_model(checkpoint: Optional[str], device):
    from . import checkpoint as ck
    try:
        model = ck.load_bundled() if checkpoint is None else ck.load(checkpoint)
    except ck.CheckpointError as exc:
        raise CLIError(ck.flag_message(exc, "--checkpoint")) from None
    return model.to(device)


def _diverged(exc) -> CLIError:
    return CLIError(f"--eps: {exc}; nothing written (try a smaller --eps)")


# ----------------------------------------------------------------------------- subcommands

def _cmd_sample(a) -> None:
    from .sampling import SamplerSettings, SamplingDivergedError
    from .sampling.api import sample
    from .sampling.core import check_backend
    t0 = time.time()
    device = _device(a.device)
    if a.n < 1:
        raise CLIError(f"--n: expected >= 1, got {a.n}")
    for path, flag, kind in ((a.out, "--out", "image"), (a.strip, "--strip", "image"), (a.gif, "--gif", "gif"),
                             (a.save_tensor, "--save-tensor", "tensor")):
        check_output(path, flag, kind)
    check_backend(a.backend, device, "--backend")
    model = _load_model(a.checkpoint, device)
    want_snaps = bool(a.strip or a.gif)
    points = len(tuple(model.data_shape)) != 3   # a toy model: --out is a scatter plot of the samples
    if points:
        for flag, value in (("--strip", a.strip), ("--gif", a.gif)):
            if value:
                raise CLIError(f"{flag}: needs an image model; {a.checkpoint!r} samples points of shape "
                               f"{tuple(model.data_shape)} (--out draws them as a scatter plot, --save-tensor "
                               "keeps them)")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CLIError(f"--out: {a.checkpoint!r} samples points, drawn as a scatter plot with matplotlib, which "
                           "is not installed (pip install matplotlib); or keep them with --save-tensor") from None
    # fastncsn.sample(fast=True) on a CPU quietly runs the graph sampler's steps eagerly (no speed-up), and
    # with fast=None a CPU means the fp32 reference sampler: ask for what cannot happen here -> one line
    fast = device.type == "cuda" if a.fast is None else a.fast
    if a.fast and device.type != "cuda":
        raise CLIError(f"--fast: the CUDA-graph sampler needs a CUDA device, got {device.type!r} "
                       "(pass --device cuda, or --no-fast)")
    if a.precision == "bf16" and not fast:
        raise CLIError("--precision: bf16 runs on the fast CUDA-graph sampler only; the reference sampler "
                       "(--no-fast, or any CPU device) is fp32")
    T = SamplerSettings.resolve(model, steps_per_level=a.steps_per_level).steps_per_level
    kwargs = dict(n=a.n, seed=a.seed, steps_per_level=a.steps_per_level, eps=a.eps, step_convention=a.step_convention,
                  denoise=a.denoise, progress=not a.quiet, backend=a.backend, batch_size=a.batch_size,
                  fast=fast, precision=a.precision)
    try:
        if want_snaps:
            x, snaps = sample(model, snapshot_every=T, **kwargs)
        else:
            x = sample(model, **kwargs)
    except SamplingDivergedError as exc:
        raise _diverged(exc) from None
    raw, written = x, []
    x = x.clamp(0, 1) if x.dim() == 4 else x
    if x.dim() == 4:
        save_grid(x, a.out, scale=a.scale)
    else:
        save_points(x, a.out)
    written.append(a.out)
    if a.save_tensor:
        _save_tensor(raw, a.save_tensor)                        # the raw samples, not clamped
        written.append(a.save_tensor)
    if want_snaps:
        k = min(a.n, 8)
        frames = snaps[:, :k].clamp(0, 1)                       # [L, k, C, H, W]: end of each level
        if a.strip:
            save_strip(frames, a.strip, scale=a.scale)          # rows: images, cols: levels
            written.append(a.strip)
        if a.gif:
            save_gif(list(frames) + [x[:k]], a.gif, scale=a.scale)
            written.append(a.gif)
    print(f"fastncsn: {a.n} samples in {time.time() - t0:.1f} s -> {', '.join(written)}")


#: Python argument names -> the commands' flags: a ValueError from the library starts with the argument's
#: name, and the one-line CLI error names the flag instead
_ARG_FLAGS = {"fast": "--fast", "precision": "--precision", "compile": "--compile", "graph": "--graph",
              "keep_last": "--keep-last", "out_dir": "--out", "allow_changed_settings": "--allow-changed-settings",
              "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "checkpoint_every": "--checkpoint-every",
              "steps_per_level": "--steps-per-level", "eps": "--eps", "step_convention": "--step-convention",
              "seed": "--seed", "device": "--device", "backend": "--backend", "n": "--n", "npz": "--npz"}


def _cmd_train(a) -> int:
    check_device(a.device, "--device")
    from .training import CPU_DIGITS_RECIPE, TrainingInterrupted, default_recipe, describe_recipe, find_checkpoints, train
    data = a.data
    recipe = default_recipe(data, a.device)
    given = dict(ngf=a.ngf, batch_size=a.batch_size, lr=a.lr, ema_rate=a.ema, steps=a.steps)
    for key, value in given.items():
        if value is not None:
            recipe[key] = value
    if a.ema is not None and not 0 <= a.ema < 1:
        raise CLIError(f"--ema: expected a rate in [0, 1) (0 = no EMA), got {a.ema}")
    if a.keep_last < 1:
        raise CLIError(f"--keep-last: expected an int >= 1 (checkpoints of this run to keep), got {a.keep_last}")
    if a.no_resume and find_checkpoints(a.out):
        raise CLIError(f"--out: {a.out!r} holds checkpoints of an earlier run; --no-resume would start a second run "
                       "beside them: choose another --out or remove the old checkpoints")
    if recipe == dict(recipe, **CPU_DIGITS_RECIPE) and not a.quiet:
        print(f"fastncsn: CPU recipe for the embedded digits: {describe_recipe(CPU_DIGITS_RECIPE)} "
              "(~10 min on 2 cores); --ngf/--batch-size/--lr/--ema/--steps override it")
    try:
        model = train(None, data=data, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                      out_dir=a.out, checkpoint_every=a.checkpoint_every, keep_last=a.keep_last,
                      ema_rate=recipe["ema_rate"] or None, seed=a.seed,
                      device=a.device, progress=not a.quiet, resume=not a.no_resume, ngf=recipe["ngf"],
                      num_levels=a.num_levels, sigma_1=a.sigma_1, sigma_L=a.sigma_L, schedule=a.schedule,
                      root=a.root, fast=a.fast, precision=a.precision, compile=a.compile, graph=a.graph,
                      tensorboard_dir=a.tensorboard, allow_changed_settings=a.allow_changed_settings,
                      extra={"command": " ".join(["fastncsn"] + sys.argv[1:])})
    except ValueError as exc:
        # train checks its arguments, --out and a resume's settings before any work; name the flag
        name, _, rest = str(exc).partition(":")
        if name in _ARG_FLAGS and rest:
            rest = rest.replace("allow_changed_settings=True", "--allow-changed-settings")
            raise CLIError(_ARG_FLAGS[name] + ":" + rest.replace("another out_dir", "another --out")) from None
        raise
    except FloatingPointError as exc:  # diverged: the last finite checkpoint is kept
        print(f"fastncsn train: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:  # saved; 143 (SIGTERM) / 130 (SIGINT), said even with --quiet
        print(f"fastncsn: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"fastncsn: trained {type(model).__name__} to step {model.train_step} of {recipe['steps']}; "
          f"checkpoints in {a.out}")


def _mask_for(kind: str, shape):
    import torch
    c, h, w = shape
    m = torch.zeros(1, c, h, w)
    if kind == "right_half":
        m[..., : w // 2] = 1           # left half known, right half completed
    elif kind == "left_half":
        m[..., w // 2:] = 1
    elif kind == "bottom_half":
        m[..., : h // 2, :] = 1
    elif kind == "center":
        m[:] = 1
        m[..., h // 4: h - h // 4, w // 4: w - w // 4] = 0
    else:
        raise CLIError(f"--mask-kind: expected right_half, left_half, bottom_half or center, got {kind!r}")
    return m


def _read_image(path: str, shape):
    import torch
    from PIL import Image
    if not os.path.isfile(path):
        raise CLIError(f"--image/--mask: no such file {path!r}")
    c, h, w = shape
    with Image.open(path) as im:
        im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, c)
    return x.permute(2, 0, 1).float().unsqueeze(0) / 255.0


def _cmd_inpaint(a) -> None:
    import torch
    from .sampling import SamplingDivergedError
    from .sampling.api import sample
    t0 = time.time()
    device = _device(a.device)
    check_output(a.out, "--out", "image")
    if a.n < 1:
        raise CLIError(f"--n: expected >= 1, got {a.n}")
    model = _load_model(a.checkpoint, device)
    shape = tuple(model.data_shape)
    if len(shape) != 3:
        raise CLIError("--checkpoint: inpainting needs an image model")
    if a.image:
        known = _read_image(a.image, shape)
    else:
        from .data import get_dataset
        ds = get_dataset("digits", image_size=shape[1])
        if not 0 <= a.from_digits < len(ds):
            raise CLIError(f"--from-digits: expected an index in [0, {len(ds)}), got {a.from_digits}")
        known = ds[a.from_digits][0].unsqueeze(0)
        if known.shape[1:] != torch.Size(shape):
            raise CLIError(f"--from-digits: the embedded digits are {tuple(known.shape[1:])}, the model wants {shape}")
    mask = (_read_image(a.mask, shape) > 0.5).float() if a.mask else _mask_for(a.mask_kind, shape)
    try:
        x = sample(model, n=a.n, seed=a.seed, mask=mask, known=known, steps_per_level=a.steps_per_level,
                   progress=not a.quiet).clamp(0, 1)
    except SamplingDivergedError as exc:
        raise CLIError(f"{exc}; nothing written") from None
    masked = known * mask + 0.5 * (1 - mask)
    save_grid(torch.cat([masked, x]), a.out, nrow=a.n + 1, scale=a.scale)
    print(f"fastncsn: {a.n} completions in {time.time() - t0:.1f} s -> {a.out} (first tile: the masked input)")


def _cmd_schedule(a) -> None:
    import torch
    from .data import DATASET_CONFIGS, get_dataset
    from .schedules import get_sigmas, num_levels_for_overlap, overlap_probabilities, sigma_1_from_data, step_size_for
    base = a.data.split(":")[0]
    if base not in DATASET_CONFIGS:
        raise CLIError(f"--data: expected one of {', '.join(DATASET_CONFIGS)} or folder:PATH, got {a.data!r}")
    cfg = DATASET_CONFIGS[base]
    dim = cfg["channels"] * cfg["image_size"] ** 2
    for flag, v in (("--num-levels", a.num_levels), ("--steps-per-level", a.steps_per_level),
                    ("--max-points", a.max_points)):
        if v < 1:
            raise CLIError(f"{flag}: expected an int >= 1, got {v}")
    if not (math.isfinite(a.sigma_L) and SIGMA_MIN <= a.sigma_L):
        raise CLIError(f"--sigma-L: expected a finite number >= {SIGMA_MIN:g} (its square must be a normal "
                       f"float64), got {a.sigma_L!r}")
    if a.sigma_1 == "data":
        ds = get_dataset(a.data, root=a.root)
        x = torch.stack([ds[i][0] for i in range(min(len(ds), a.max_points))])
        sigma_1 = sigma_1_from_data(x)
        print(f"sigma_1 from data (largest pairwise distance of {x.shape[0]} images): {sigma_1:.4f}")
    else:
        try:
            sigma_1 = float(a.sigma_1)
        except ValueError:
            raise CLIError(f"--sigma-1: expected a number or 'data', got {a.sigma_1!r}") from None
    if not (math.isfinite(sigma_1) and sigma_1 > a.sigma_L):
        raise CLIError(f"--sigma-1: expected a finite number > --sigma-L ({a.sigma_L:g}), got {sigma_1!r}")
    s = get_sigmas(a.kind, sigma_1, a.sigma_L, a.num_levels, dtype=torch.float64)
    p = overlap_probabilities(s, dim)
    print(f"{a.kind} ladder, L={a.num_levels}, sigma_1={sigma_1:g}, sigma_L={a.sigma_L:g}, data dimension D={dim}")
    print(f"{'i':>4} {'sigma_i':>12} {'gamma_i':>9} {'overlap P_i':>12}")
    for i, v in enumerate(s.tolist()):
        if i == 0:
            print(f"{i + 1:>4} {v:>12.6g} {'':>9} {'':>12}")
        else:
            print(f"{i + 1:>4} {v:>12.6g} {s[i - 1].item() / v:>9.4f} {p[i - 1].item():>12.4g}")
    try:
        need = num_levels_for_overlap(sigma_1, a.sigma_L, dim, C=0.5)
        print(f"smallest geometric L with overlap >= 0.5: {need}")
        gamma = (sigma_1 / a.sigma_L) ** (1.0 / (need - 1))
        eps = step_size_for(a.steps_per_level, gamma, a.sigma_L)
        print(f"step size for T={a.steps_per_level} at that L (seed 004 section 4.2.2 rule, reference "
              f"convention): eps = {eps:.3g}")
    except ValueError as exc:
        print(f"(no overlap suggestion: {exc})")


def _check_extractor(a) -> None:
    """``--extractor inception`` needs a readable weights file: one line saying how to get it, before any work."""
    if a.extractor != "inception":
        return
    from .metrics.fid_run import make_extractor
    try:
        make_extractor("inception", a.inception_weights)
    except (TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        raise CLIError(f"--inception-weights: {exc}") from None


def _cmd_fid(a) -> None:
    from .metrics.fid_run import fid_of_checkpoint
    for name, v in (("--n", a.n), ("--shard-size", a.shard_size), ("--batch-size", a.batch_size),
                    ("--steps-per-level", a.steps_per_level)):
        if v is not None and v < 1:
            raise CLIError(f"{name}: expected an int >= 1, got {v}")
    if a.seed < 0:
        raise CLIError(f"--seed: expected an int >= 0, got {a.seed}")
    if a.eps is not None and not a.eps > 0:
        raise CLIError(f"--eps: expected a step size > 0, got {a.eps}")
    if not os.path.isfile(a.checkpoint):
        raise CLIError(f"--checkpoint: no such file {a.checkpoint!r}")
    if not os.path.isfile(a.ref):
        raise CLIError(f"--ref: no such statistics file {a.ref!r} (make one with: fastncsn fid-stats --data ... "
                       "--out STATS)")
    _check_extractor(a)
    from .checkpoint import CheckpointError, flag_message
    try:
        result = fid_of_checkpoint(a.checkpoint, a.ref, n=a.n, out_dir=a.out, seed=a.seed, batch_size=a.batch_size,
                                   shard_size=a.shard_size, extractor=a.extractor,
                                   inception_weights=a.inception_weights, device=a.device, fast=a.fast,
                                   precision=a.precision, steps_per_level=a.steps_per_level, eps=a.eps,
                                   save_samples=a.save_samples, progress=not a.quiet)
    except CheckpointError as exc:  # (the model's checkpoint: the only one a FID run reads)
        raise CLIError(flag_message(exc, "--checkpoint")) from None
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():  # joined from torchrun's environment by the run
        dist.destroy_process_group()
    if result is not None:
        print(f"FID {result['fid']:.4f} ({result['extractor']['name']} features, n={result['n']}, "
              f"seed={result['seed']})")


def _cmd_fid_stats(a) -> None:
    from .metrics.fid_run import reference_stats
    if a.batch_size < 1:
        raise CLIError(f"--batch-size: expected an int >= 1, got {a.batch_size}")
    if a.npz is not None and not os.path.isfile(a.npz):
        raise CLIError(f"--npz: no such file {a.npz!r}")
    if a.npz is not None and not a.npz.endswith(".npz"):
        raise CLIError(f"--npz: expected a .npz file of images, got {a.npz!r}")
    _check_extractor(a)
    stats = reference_stats(a.npz or a.data, extractor=a.extractor, out=a.out, root=a.root,
                            inception_weights=a.inception_weights, batch_size=a.batch_size, device=a.device)
    print(f"wrote {a.out}: {a.extractor} feature statistics of {stats.n} images (dim {stats.dim})")


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastncsn", description="Noise Conditional Score Networks: sample, train, "
                                "inpaint, inspect noise schedules.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="annealed Langevin samples as a PNG grid",
                       description="Draw samples with annealed Langevin dynamics (default: the bundled digits model).")
    s.add_argument("--checkpoint", help="checkpoint path (default: the bundled digits model)")
    s.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps-per-level", type=int, help="T (default: the model's)")
    s.add_argument("--eps", type=float, help="step size in --step-convention (default: the model's)")
    s.add_argument("--step-convention", choices=["paper", "reference", "snr"])
    s.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="final denoising step (default: the model's)")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--device")
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA-graph sampler (needs a CUDA --device); --no-fast: the reference eager sampler "
                        "(default: fast when the device is CUDA)")
    s.add_argument("--precision", choices=["fp32", "bf16"],
                   help="network precision of the fast sampler (default: bf16 where the GPU supports it); "
                        "the reference sampler is fp32")
    s.add_argument("--out", default="samples.png", help="PNG grid (default samples.png)")
    s.add_argument("--scale", type=int, default=2, help="upscale the PNG by this factor (default 2)")
    s.add_argument("--save-tensor", help="also save the raw samples (not clamped to [0, 1], unlike the PNG) "
                   "as .pt or .npz")
    s.add_argument("--strip", help="PNG of the first images at the end of every noise level")
    s.add_argument("--gif", help="animated GIF of the annealing")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sample)

    from .training.recipes import CPU_DIGITS_RECIPE as cpu, GENERIC_RECIPE as gen
    t = sub.add_parser("train", help="train a score network with denoising score matching",
                       description="Train CondRefineNetDilated with DSM; resumes from the newest checkpoint in --out.")
    t.add_argument("--data", default="digits", help="digits | mnist | cifar10 | celeba | stanford_cars | folder:PATH")
    t.add_argument("--root", help="directory of the torchvision dataset files")
    t.add_argument("--out", required=True, help="run directory (checkpoints, train_log.jsonl)")
    t.add_argument("--steps", type=int, help=f"total steps (default: {cpu['steps']} for digits on a CPU, else {gen['steps']})")
    t.add_argument("--ngf", type=int, help=f"network width (default: {cpu['ngf']} for digits on a CPU, else {gen['ngf']})")
    t.add_argument("--num-levels", type=int, default=10)
    t.add_argument("--sigma-1", type=float, default=1.0)
    t.add_argument("--sigma-L", type=float, default=0.01)
    t.add_argument("--schedule", default="geometric",
                   choices=["geometric", "linear", "cosine", "squared_cosine", "sigmoid"])
    t.add_argument("--batch-size", type=int, help=f"default: {cpu['batch_size']} for digits on a CPU, else {gen['batch_size']}")
    t.add_argument("--lr", type=float, help=f"Adam learning rate (default: {cpu['lr']:g} for digits on a CPU, else {gen['lr']:g})")
    t.add_argument("--ema", type=float,
                   help=f"EMA rate of the weights, e.g. 0.999; 0 turns it off (default: {cpu['ema_rate']:g} for digits "
                        f"on a CPU, else {gen['ema_rate'] or 'off'}); sampling from a checkpoint uses the EMA weights when present")
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--keep-last", type=int, default=3, help="checkpoints of this run to keep, >= 1 (default 3)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device")
    t.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the fast training step (channels-last, fused CIN++, fused Adam, regional torch.compile; "
                        "default: on CUDA devices only)")
    t.add_argument("--precision", choices=["fp32", "bf16"],
                   help="network precision of the fast step (default bf16 on CUDA); the reference step is fp32")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the residual and RefineNet blocks on the fast path (default: on CUDA)")
    t.add_argument("--graph", action=argparse.BooleanOptionalAction, default=False,
                   help="replay the whole training step (draws, forward, backward, Adam, EMA) from one CUDA graph "
                        "(default: off until measured on a GPU; on the CPU the same step runs eagerly)")
    t.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars to DIR (needs tensorboard)")
    t.add_argument("--no-resume", action="store_true",
                   help="start a new run; refused when --out already holds checkpoints (choose another --out)")
    t.add_argument("--allow-changed-settings", action="store_true",
                   help="resume although --lr, --batch-size, --data, --ema, --seed or the noise ladder differ from "
                        "the checkpoint's (default: refused); the new values apply and the change is recorded")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    i = sub.add_parser("inpaint", help="complete the masked part of an image",
                       description="Inpainting with annealed Langevin dynamics (known pixels re-noised per level).")
    src = i.add_mutually_exclusive_group()
    src.add_argument("--image", help="PNG/JPEG image (resized to the model's size)")
    src.add_argument("--from-digits", type=int, default=0, help="index of an embedded digit (default 0)")
    i.add_argument("--mask", help="mask image: white = known pixels")
    i.add_argument("--mask-kind", default="right_half", help="right_half | left_half | bottom_half | center")
    i.add_argument("--checkpoint")
    i.add_argument("--n", type=int, default=8)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--steps-per-level", type=int)
    i.add_argument("--device")
    i.add_argument("--out", default="inpainting.png")
    i.add_argument("--scale", type=int, default=2)
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=_cmd_inpaint)

    c = sub.add_parser("schedule", help="print a noise ladder and its overlap diagnostics",
                       description="Noise ladder, consecutive-level overlap (seed 000 Prop. 2) and suggestions.")
    c.add_argument("--kind", default="geometric", choices=["geometric", "linear", "cosine", "squared_cosine", "sigmoid"])
    c.add_argument("--num-levels", type=int, default=10)
    c.add_argument("--sigma-1", default="1.0", help="a number, or 'data' for the largest pairwise distance")
    c.add_argument("--sigma-L", type=float, default=0.01)
    c.add_argument("--data", default="digits", help="dataset whose dimension D is used (default digits, D=784)")
    c.add_argument("--root")
    c.add_argument("--steps-per-level", type=int, default=100, help="T for the step-size suggestion")
    c.add_argument("--max-points", type=int, default=5000, help="images used for --sigma-1 data")
    c.set_defaults(func=_cmd_schedule)

    f = sub.add_parser("fid", help="FID of many samples of a checkpoint (sharded, resumable, torchrun)",
                       description="Sample --n images in seeded shards (resumable; one rank per GPU under torchrun), "
                                   "then the FID against reference statistics (fastncsn fid-stats).")
    f.add_argument("--checkpoint", required=True, help="checkpoint of the model to score")
    f.add_argument("--ref", required=True, help="reference statistics file (fastncsn fid-stats)")
    f.add_argument("--n", "--num-samples", dest="n", type=int, default=50000,
                   help="number of samples (default 50000, as the papers); under torchrun write --num-samples "
                        "(torchrun's own parser rejects --n as an ambiguous abbreviation)")
    f.add_argument("--out", help="folder of the shards and fid.json (default: beside the checkpoint)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--batch-size", type=int, help="sampler batch (default: a whole shard)")
    f.add_argument("--shard-size", type=int, default=1000, help="samples per shard, the unit of resumption")
    f.add_argument("--extractor", default="digits", choices=["digits", "inception"],
                   help="feature extractor (default digits: the shipped digits classifier, offline)")
    f.add_argument("--inception-weights", help="torchvision Inception-v3 weights file (--extractor inception)")
    f.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    f.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA-graph sampler (default: on CUDA devices)")
    f.add_argument("--precision", choices=["fp32", "bf16"], help="network precision of the fast sampler")
    f.add_argument("--steps-per-level", type=int, help="T (default: the model's)")
    f.add_argument("--eps", type=float, help="step size (default: the model's)")
    f.add_argument("--save-samples", action="store_true", help="also keep each shard's samples (uint8)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fid)

    r = sub.add_parser("fid-stats", help="reference feature statistics of a dataset or an .npz of images",
                       description="Feature statistics (mean, covariance) of reference images for fastncsn fid.")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="digits | mnist | cifar10 | folder:PATH (training split)")
    src.add_argument("--npz", help=".npz of images ([N, C, H, W] or [N, H, W, C], uint8 or floats in [0, 1])")
    r.add_argument("--root", help="directory of the torchvision dataset files")
    r.add_argument("--out", required=True, help="statistics file to write")
    r.add_argument("--extractor", default="digits", choices=["digits", "inception"])
    r.add_argument("--inception-weights", help="torchvision Inception-v3 weights file (--extractor inception)")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--device")
    r.set_defaults(func=_cmd_fid_stats)

    from .experiments.cli import add_experiment_parser
    add_experiment_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    try:
        rc = args.func(args)
    except (CLIError, CheckpointError, ValueError, TypeError, FileNotFoundError, OSError, FloatingPointError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        name, sep, rest = msg.partition(":")
        if sep and isinstance(exc, (ValueError, TypeError)) and name in _ARG_FLAGS:
            msg = _ARG_FLAGS[name] + ":" + rest       # name the flag, not the Python argument
        print(f"fastncsn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastncsn: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
