"""The ``fastncsn`` command: sample, train, inpaint, schedule, fid, fid-stats, experiment.

Every subcommand has ``--help`` (help text and default of every flag).  Every flag's value is
checked while the command line is parsed (:mod:`fastncsn.flags`), and what depends on several
flags or on the model (the picture size, ``--sigma-1`` > ``--sigma-L``, the dataset's size) before
any sampling or training; expected failures print one line ``fastncsn COMMAND: error: --FLAG: ...``
and exit with 2, writing nothing.  :func:`main` returns the exit status (``--help`` exits as argparse
does).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Optional, Sequence

from . import flags
from .devices import check_device
from .flags import FlagError, Parser
from .images import grid_size, max_picture_pixels, save_gif, save_grid, save_points, save_strip
from .ops import BACKENDS

__all__ = ["main", "build_parser"]

#: smallest --sigma-L of `fastncsn schedule` (sigma_L**2 stays a normal float64)
SIGMA_MIN = 1e-150
#: `fastncsn schedule` computes in float64: a noise level whose square is a normal float64
SIGMA64 = flags.real(SIGMA_MIN, 1 / SIGMA_MIN, low_inclusive=True,
                     expected=f"a noise level in [{SIGMA_MIN:g}, {1 / SIGMA_MIN:g}] (its square a normal float64)")
#: inpainting masks of --mask-kind: the part that is completed
MASK_KINDS = ("right_half", "left_half", "bottom_half", "center")


class CLIError(Exception):
    """An expected failure reported as one line."""


def _save_tensor(x, path: str) -> None:
    """The raw samples as ``.npz`` (array ``samples``) or ``.pt`` (the flag's check allows only those)."""
    from .files import atomic_write
    if path.endswith(".npz"):
        import numpy as np
        atomic_write(path, lambda f: np.savez_compressed(f, samples=x.cpu().numpy()), suffix=".npz")
    else:
        import torch
        atomic_write(path, lambda f: torch.save(x.cpu(), f), suffix=".pt")


def _device(device: Optional[str]):
    """``--device`` (checked by its flag) as a ``torch.device``, CPU when not given."""
    import torch
    return check_device(device, "--device") or torch.device("cpu")


def _load_model(checkpoint: Optional[str], device, name: Optional[str] = None):
    """The model of ``--checkpoint``, else the bundled model ``--model`` (default: digits), on ``device``."""
    from . import checkpoint as ck
    try:
        model = ck.load_bundled(name or "digits") if checkpoint is None else ck.load(checkpoint)
    except ck.CheckpointError as exc:
        raise CLIError(ck.error_line(exc, "--checkpoint" if checkpoint else "--model")) from None
    return model.to(device)


def _add_model_flags(parser, what: str = "checkpoint path") -> None:
    """``--checkpoint PATH`` or ``--model NAME`` (a bundled model), one of them at most."""
    from .checkpoint import BUNDLED_MODELS
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=flags.existing_file, help=f"{what} (default: the bundled model --model)")
    src.add_argument("--model", choices=list(BUNDLED_MODELS), default=None,
                     help="a bundled model: " + "; ".join(f"{k} -- trained on {v[1]}" for k, v in BUNDLED_MODELS.items())
                          + " (default: digits)")


def _diverged(exc) -> CLIError:
    return CLIError(f"--eps: {exc}; nothing written (try a smaller --eps)")


def check_picture(flag: str, n: int, shape, scale: int, nrow: Optional[int] = None) -> None:
    """Before sampling: the picture ``flag`` of ``n`` images of ``shape`` (C, H, W) tiled ``nrow`` per row and
    upscaled ``scale`` times stays within :func:`~fastncsn.images.max_picture_pixels`; else one line naming
    ``--scale``."""
    h, w = grid_size(n, shape[-2], shape[-1], nrow=nrow, scale=scale)
    limit = max_picture_pixels()
    if h * w > limit:
        raise CLIError(f"--scale: {flag} would be {w}x{h} pixels ({n} images of {shape[-1]}x{shape[-2]}, --scale "
                       f"{scale}), more than PIL's MAX_IMAGE_PIXELS ({limit:,}); lower --scale or --n")


# ----------------------------------------------------------------------------- subcommands

def _cmd_sample(a) -> None:
    from .sampling import SamplingDivergedError
    from .sampling.api import plan, sample
    from .sampling.core import check_backend
    t0 = time.time()
    device = _device(a.device)
    check_backend(a.backend, device, "--backend")
    model = _load_model(a.checkpoint, device, a.model)
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
    # the sampler's plan, checked before any sampling (a sampler that cannot run here: one line)
    the_plan = plan(model, sampler=a.sampler, steps_per_level=a.steps_per_level, eps=a.eps,
                    step_convention=a.step_convention, denoise=a.denoise)
    if want_snaps and the_plan.sampler != "ald":
        raise CLIError(f"--sampler: --strip and --gif show annealed Langevin's levels; sampler "
                       f"{the_plan.sampler!r} has no per-level snapshots here (use --sampler ald)")
    T, shape = (len(the_plan.levels[0]) if the_plan.levels else 1), tuple(model.data_shape)
    if len(shape) == 3:                 # the pictures' size, before any sampling
        check_picture("--out", a.n, shape, a.scale)
        levels = int(model.sigmas.numel())
        if a.strip:
            check_picture("--strip", min(a.n, 8) * levels, shape, a.scale, nrow=levels)
        if a.gif:
            check_picture("--gif", min(a.n, 8), shape, a.scale)
    kwargs = dict(n=a.n, seed=a.seed, steps_per_level=a.steps_per_level, eps=a.eps, step_convention=a.step_convention,
                  denoise=a.denoise, progress=not a.quiet, backend=a.backend, batch_size=a.batch_size,
                  fast=fast, precision=a.precision, sampler=the_plan.sampler)
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
    print(f"fastncsn: {a.n} samples in {time.time() - t0:.1f} s (sampler {the_plan.sampler}, NFE {the_plan.nfe} "
          f"per sample) -> {', '.join(written)}")


#: Python argument names -> the commands' flags: a ValueError (or CheckpointError, FileNotFoundError) from the
#: library starts with the argument's name, and the one-line CLI error names the flag instead
_ARG_FLAGS = {"fast": "--fast", "precision": "--precision", "compile": "--compile", "graph": "--graph",
              "keep_last": "--keep-last", "out_dir": "--out", "allow_changed_settings": "--allow-changed-settings",
              "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "checkpoint_every": "--checkpoint-every",
              "steps_per_level": "--steps-per-level", "eps": "--eps", "step_convention": "--step-convention",
              "seed": "--seed", "device": "--device", "backend": "--backend", "n": "--n", "sampler": "--sampler",
              "ngf": "--ngf", "L": "--num-levels", "num_levels": "--num-levels", "sigma_1": "--sigma-1",
              "sigma_L": "--sigma-L", "root": "--root", "data": "--data", "ema_rate": "--ema",
              "tensorboard_dir": "--tensorboard", "checkpoint": "--checkpoint", "ref": "--ref", "npz": "--npz",
              "out": "--out", "extractor": "--extractor", "inception_weights": "--inception-weights",
              "weights_path": "--inception-weights", "shard_size": "--shard-size", "kind": "--kind",
              "image": "--image", "mask": "--mask"}
#: per command: names whose flag depends on the command ("path" is the checkpoint's file, or a run's)
_COMMAND_ARG_FLAGS = {"sample": {"path": "--checkpoint"}, "inpaint": {"path": "--checkpoint"},
                      "fid": {"path": "--checkpoint", "mu2": "--ref", "sigma2": "--ref"},
                      "train": {"path": "--out"}}
#: words of the library's messages that name a Python argument, as the flag
_ARG_WORDS = {"allow_changed_settings=True": "--allow-changed-settings", "another out_dir": "another --out"}


def flag_message(command: str, msg: str, args: Optional[argparse.Namespace] = None) -> str:
    """``msg`` of a library error with the Python argument it starts with (``path: ...``) replaced by the
    command's flag (``--checkpoint: ...``; ``root``, the folder of a dataset, is ``--data`` for
    ``--data folder:PATH``)."""
    table = dict(_ARG_FLAGS, **_COMMAND_ARG_FLAGS.get(command, {}))
    if str(getattr(args, "data", None) or "").startswith("folder:"):
        table["root"] = "--data"
    name, sep, rest = msg.partition(":")
    if sep and name in table:
        for word, flag in _ARG_WORDS.items():
            rest = rest.replace(word, flag)
        msg = table[name] + ":" + rest
    return msg


def _cmd_train(a) -> int:
    from .training import CPU_DIGITS_RECIPE, TrainingInterrupted, default_recipe, describe_recipe, find_checkpoints, train
    data = a.data
    recipe = default_recipe(data, a.device)
    given = dict(ngf=a.ngf, batch_size=a.batch_size, lr=a.lr, ema_rate=a.ema, steps=a.steps)
    for key, value in given.items():
        if value is not None:
            recipe[key] = value
    flags.check_above(a.sigma_1, "--sigma-1", a.sigma_L, "--sigma-L")
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
    except FloatingPointError as exc:  # diverged: the last finite checkpoint is kept
        print(f"fastncsn train: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:  # saved; 143 (SIGTERM) / 130 (SIGINT), said even with --quiet
        print(f"fastncsn: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"fastncsn: trained {type(model).__name__} to step {model.train_step} of {recipe['steps']}; "
          f"checkpoints in {a.out}")


def _mask_for(kind: str, shape):
    """The inpainting mask ``[1, C, H, W]`` of ``kind`` (:data:`MASK_KINDS`; the flag's choices): 1 = known."""
    import torch
    c, h, w = shape
    m = torch.zeros(1, c, h, w)
    if kind == "right_half":
        m[..., : w // 2] = 1           # left half known, right half completed
    elif kind == "left_half":
        m[..., w // 2:] = 1
    elif kind == "bottom_half":
        m[..., : h // 2, :] = 1
    else:                              # center
        m[:] = 1
        m[..., h // 4: h - h // 4, w // 4: w - w // 4] = 0
    return m


def _read_image(path: str, shape):
    import torch
    from PIL import Image
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
    model = _load_model(a.checkpoint, device, a.model)
    shape = tuple(model.data_shape)
    if len(shape) != 3:
        raise CLIError("--checkpoint: inpainting needs an image model")
    check_picture("--out", a.n + 1, shape, a.scale, nrow=a.n + 1)
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
    from .data import dataset_config, get_dataset
    from .schedules import get_sigmas, num_levels_for_overlap, overlap_probabilities, sigma_1_from_data, step_size_for
    ds = get_dataset(a.data, root=a.root) if a.sigma_1 == "data" or a.data.startswith("folder:") else None
    cfg = dataset_config(a.data, ds)                 # a folder's image size and channels are its files'
    dim = cfg["channels"] * cfg["image_size"] ** 2
    if a.sigma_1 == "data":
        x = torch.stack([ds[i][0] for i in range(min(len(ds), a.max_points))])
        sigma_1 = sigma_1_from_data(x)
        print(f"sigma_1 from data (largest pairwise distance of {x.shape[0]} images): {sigma_1:.4f}")
    else:
        sigma_1 = a.sigma_1
    flags.check_above(sigma_1, "--sigma-1", a.sigma_L, "--sigma-L")
    s = get_sigmas(a.kind, sigma_1, a.sigma_L, a.num_levels, dtype=torch.float64)
    p = overlap_probabilities(s, dim)
    print(f"{a.kind} ladder, L={a.num_levels}, sigma_1={sigma_1:g}, sigma_L={a.sigma_L:g}, data dimension D={dim}; "
          f"levels i = 0..{a.num_levels - 1}, largest sigma first")
    print(f"{'i':>4} {'sigma_i':>12} {'gamma_i':>9} {'overlap P_i':>12}")
    for i, v in enumerate(s.tolist()):
        if i == 0:
            print(f"{i:>4} {v:>12.6g} {'':>9} {'':>12}")
        else:
            print(f"{i:>4} {v:>12.6g} {s[i - 1].item() / v:>9.4f} {p[i - 1].item():>12.4g}")
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


class _Stop(Exception):
    """SIGTERM turned into an exception (SIGINT is Python's KeyboardInterrupt)."""


def _raise_stop(signum, frame):
    raise _Stop()


def _cmd_fid(a) -> int:
    from .checkpoint import bundled_path
    from .metrics.fid_run import default_out_dir, fid_of_checkpoint, finished_shards, num_shards
    checkpoint = a.checkpoint or bundled_path(a.model or "digits")
    if not os.path.isfile(checkpoint):
        raise CLIError(f"--model: the bundled {a.model} model is missing ({checkpoint}); reinstall fastncsn, "
                       "or pass --checkpoint")
    out = a.out or str(default_out_dir(checkpoint, a.n, a.seed))
    if a.extractor is None:            # the statistics' own (a file that is no statistics file: --ref's error)
        from .metrics.fid_run import load_stats
        a.extractor = str(load_stats(a.ref)[1].get("name"))
    _check_extractor(a)
    if not a.quiet:
        print(f"fastncsn fid: shards and fid.json in {out}", file=sys.stderr)
    old = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        result = fid_of_checkpoint(checkpoint, a.ref, n=a.n, out_dir=out, seed=a.seed, batch_size=a.batch_size,
                                   shard_size=a.shard_size, extractor=a.extractor,
                                   inception_weights=a.inception_weights, device=a.device, fast=a.fast,
                                   precision=a.precision, steps_per_level=a.steps_per_level, eps=a.eps,
                                   save_samples=a.save_samples, progress=not a.quiet)
    except (_Stop, KeyboardInterrupt) as exc:  # shards are written atomically: the finished ones are kept
        name, code = ("SIGTERM", 143) if isinstance(exc, _Stop) else ("SIGINT", 130)
        done = finished_shards(out, num_shards(a.n, a.shard_size))
        print(f"fastncsn: fid interrupted by {name} with {done} of {num_shards(a.n, a.shard_size)} shards saved "
              f"in {out}; rerun the same command to resume", file=sys.stderr)
        return code
    finally:
        signal.signal(signal.SIGTERM, old)
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():  # joined from torchrun's environment by the run
        dist.destroy_process_group()
    if result is not None:
        print(f"FID {result['fid']:.4f} ({result['extractor']['name']} features, n={result['n']}, "
              f"seed={result['seed']}) -> {os.path.join(out, 'fid.json')}")


def _cmd_fid_stats(a) -> None:
    from .metrics.fid_run import reference_stats
    if a.extractor is None:
        a.extractor = "mnist" if a.data == "mnist" else "digits"
    _check_extractor(a)
    stats = reference_stats(a.npz or a.data, extractor=a.extractor, out=a.out, root=a.root,
                            inception_weights=a.inception_weights, batch_size=a.batch_size, device=a.device,
                            progress=not a.quiet)
    print(f"wrote {a.out}: {a.extractor} feature statistics of {stats.n} images (dim {stats.dim})")


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The ``fastncsn`` parser: every value-taking flag is checked by its ``type=`` from :mod:`fastncsn.flags`
    (or its ``choices``) while the command line is parsed, before any work."""
    from .schedules import SCHEDULES
    from .sampling.core import SAMPLERS
    F = flags
    p = Parser(prog="fastncsn", description="Noise Conditional Score Networks: sample, train, inpaint, inspect "
               "noise schedules, FID.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sample", help="annealed Langevin samples as a PNG grid",
                       description="Draw samples with annealed Langevin dynamics (default: the bundled digits model).")
    _add_model_flags(s)
    s.add_argument("--n", type=F.count, default=16, help="number of samples")
    s.add_argument("--seed", type=F.seed, default=0, help="seed of the samples (sample k depends on it and k only)")
    s.add_argument("--sampler", choices=list(SAMPLERS),
                   help="ald: annealed Langevin (NCSN); cas: consistent annealed sampling; pc: predictor-corrector; "
                        "heun: Heun's ODE steps on the ladder (default: the model's, else ald; README: samplers)")
    s.add_argument("--steps-per-level", type=F.count, help="T, steps per noise level: ald -- Langevin steps, cas -- "
                   "steps, pc -- corrector steps, heun -- 1 (default: the model's, else the sampler's)")
    s.add_argument("--eps", type=F.positive, help="step size in --step-convention; cas: eta (default: the model's, "
                   "else the sampler's)")
    s.add_argument("--step-convention", choices=["paper", "reference", "snr"],
                   help="meaning of --eps (README: step-size conventions; default: the model's)")
    s.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="final denoising step (default: the model's)")
    s.add_argument("--batch-size", type=F.count, help="samples drawn at once (default: all --n)")
    s.add_argument("--device", type=F.device, help="cpu, cuda or cuda:N (default: cpu)")
    s.add_argument("--backend", default="auto", choices=BACKENDS, help="where the fused ops run")
    s.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA-graph sampler (needs a CUDA --device); --no-fast: the reference eager sampler "
                        "(default: fast when the device is CUDA)")
    s.add_argument("--precision", choices=["fp32", "bf16"],
                   help="network precision of the fast sampler (default: bf16 where the GPU supports it); "
                        "the reference sampler is fp32")
    s.add_argument("--out", type=F.output_file("image"), default="samples.png", help="PNG grid of the samples")
    s.add_argument("--scale", type=F.count, default=2, help="upscale the pictures by this factor")
    s.add_argument("--save-tensor", type=F.output_file("tensor"), help="also save the raw samples (not clamped to "
                   "[0, 1], unlike the PNG) as .pt or .npz (default: not saved)")
    s.add_argument("--strip", type=F.output_file("image"),
                   help="PNG of the first images at the end of every noise level (default: none)")
    s.add_argument("--gif", type=F.output_file("gif"), help="animated GIF of the annealing (default: none)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_sample)

    from .training.recipes import CPU_DIGITS_RECIPE as cpu, GENERIC_RECIPE as gen
    t = sub.add_parser("train", help="train a score network with denoising score matching",
                       description="Train CondRefineNetDilated with DSM; resumes from the newest checkpoint in --out.")
    t.add_argument("--data", type=F.dataset, default="digits",
                   help="digits | mnist | cifar10 | celeba | stanford_cars | folder:PATH")
    t.add_argument("--root", type=F.existing_dir, help="directory of the torchvision dataset files (default: none; "
                   "needed by cifar10, celeba, stanford_cars; mnist: its idx files or mnist.pkl.gz, else the "
                   "installed data package)")
    t.add_argument("--out", type=F.output_dir, required=True, help="run directory (checkpoints, train_log.jsonl)")
    t.add_argument("--steps", type=F.count,
                   help=f"total steps (default: {cpu['steps']} for digits on a CPU, else {gen['steps']})")
    t.add_argument("--ngf", type=F.count,
                   help=f"network width (default: {cpu['ngf']} for digits on a CPU, else {gen['ngf']})")
    t.add_argument("--num-levels", type=F.count, default=10, help="L, the number of noise levels")
    t.add_argument("--sigma-1", type=F.noise_level, default=1.0, help="largest noise level (level 0)")
    t.add_argument("--sigma-L", type=F.noise_level, default=0.01, help="smallest noise level (level L-1)")
    t.add_argument("--schedule", default="geometric", choices=SCHEDULES,
                   help="noise ladder from --sigma-1 to --sigma-L")
    t.add_argument("--batch-size", type=F.count, help=f"images per step, at most the dataset's size (default: "
                   f"{cpu['batch_size']} for digits on a CPU, else {gen['batch_size']})")
    t.add_argument("--lr", type=F.positive,
                   help=f"Adam learning rate (default: {cpu['lr']:g} for digits on a CPU, else {gen['lr']:g})")
    t.add_argument("--ema", type=F.rate,
                   help=f"EMA rate of the weights, e.g. 0.999; 0 turns it off (default: {cpu['ema_rate']:g} for digits "
                        f"on a CPU, else {gen['ema_rate'] or 'off'}); sampling from a checkpoint uses the EMA weights when present")
    t.add_argument("--checkpoint-every", type=F.count, default=500, help="steps between checkpoints")
    t.add_argument("--keep-last", type=F.count, default=3, help="checkpoints of this run to keep, >= 1")
    t.add_argument("--seed", type=F.seed, default=0, help="seed of the initial weights, data order and noise")
    t.add_argument("--device", type=F.device, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
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
    t.add_argument("--tensorboard", type=F.output_dir, metavar="DIR",
                   help="also write TensorBoard scalars to DIR (needs tensorboard; default: none)")
    t.add_argument("--no-resume", action="store_true",
                   help="start a new run; refused when --out already holds checkpoints (choose another --out)")
    t.add_argument("--allow-changed-settings", action="store_true",
                   help="resume although --lr, --batch-size, --data, --ema, --seed or the noise ladder differ from "
                        "the checkpoint's (default: refused); the new values apply and the change is recorded")
    t.add_argument("--quiet", action="store_true", help="no progress bar, no recipe note")
    t.set_defaults(func=_cmd_train)

    i = sub.add_parser("inpaint", help="complete the masked part of an image",
                       description="Inpainting with annealed Langevin dynamics (known pixels re-noised per level).")
    src = i.add_mutually_exclusive_group()
    src.add_argument("--image", type=F.existing_file,
                     help="PNG/JPEG image, resized to the model's size (default: --from-digits)")
    src.add_argument("--from-digits", type=F.index, default=0, help="index of an embedded digit")
    i.add_argument("--mask", type=F.existing_file, help="mask image: white = known pixels (default: --mask-kind)")
    i.add_argument("--mask-kind", default="right_half", choices=list(MASK_KINDS),
                   help="which part is completed when no --mask is given")
    _add_model_flags(i)
    i.add_argument("--n", type=F.count, default=8, help="number of completions")
    i.add_argument("--seed", type=F.seed, default=0, help="seed of the completions")
    i.add_argument("--steps-per-level", type=F.count, help="T, Langevin steps per noise level (default: the model's)")
    i.add_argument("--device", type=F.device, help="cpu, cuda or cuda:N (default: cpu)")
    i.add_argument("--out", type=F.output_file("image"), default="inpainting.png",
                   help="PNG: the masked input, then the completions")
    i.add_argument("--scale", type=F.count, default=2, help="upscale the PNG by this factor")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=_cmd_inpaint)

    c = sub.add_parser("schedule", help="print a noise ladder and its overlap diagnostics",
                       description="Noise ladder (levels 0..L-1, largest sigma first), consecutive-level overlap "
                                   "(seed 000 Prop. 2) and suggestions.")
    c.add_argument("--kind", default="geometric", choices=SCHEDULES, help="the ladder's schedule")
    c.add_argument("--num-levels", type=F.count, default=10, help="L, the number of noise levels")
    c.add_argument("--sigma-1", type=F.number_or(["data"], SIGMA64), default="1.0",
                   help="largest noise level: a number, or 'data' for the largest pairwise distance of --data")
    c.add_argument("--sigma-L", type=SIGMA64, default=0.01,
                   help=f"smallest noise level, >= {SIGMA_MIN:g} (its square must be a normal float64)")
    c.add_argument("--data", type=F.dataset, default="digits", help="dataset whose dimension D is used (digits: D=784)")
    c.add_argument("--root", type=F.existing_dir,
                   help="directory of the torchvision dataset files (default: none; for --sigma-1 data)")
    c.add_argument("--steps-per-level", type=F.count, default=100, help="T for the step-size suggestion")
    c.add_argument("--max-points", type=F.count, default=5000, help="images used for --sigma-1 data")
    c.set_defaults(func=_cmd_schedule)

    f = sub.add_parser("fid", help="FID of many samples of a checkpoint (sharded, resumable, torchrun)",
                       description="Sample --n images in seeded shards (resumable; one rank per GPU under torchrun), "
                                   "then the FID against reference statistics (fastncsn fid-stats).")
    _add_model_flags(f, "checkpoint of the model to score")
    f.add_argument("--ref", type=F.existing_file, required=True, help="reference statistics file (fastncsn fid-stats)")
    f.add_argument("--n", "--num-samples", dest="n", type=F.integer(2), default=50000,
                   help="number of samples, >= 2 (as the papers: 50000); under torchrun write --num-samples "
                        "(torchrun's own parser rejects --n as an ambiguous abbreviation)")
    f.add_argument("--out", type=F.output_dir, help="folder of the shards and fid.json (default: "
                   "CHECKPOINT-NAME_fid_nN_seedS in the working directory)")
    f.add_argument("--seed", type=F.seed, default=0, help="seed of the run (shard k: a seed derived from it and k)")
    f.add_argument("--batch-size", type=F.count, help="sampler batch (default: a whole shard)")
    f.add_argument("--shard-size", type=F.count, default=1000, help="samples per shard, the unit of resumption")
    f.add_argument("--extractor", choices=["digits", "mnist", "inception"],
                   help="feature extractor (default: the one the --ref statistics were made with; digits / mnist: "
                        "the shipped digits / MNIST classifier, offline)")
    f.add_argument("--inception-weights", type=F.existing_file,
                   help="torchvision Inception-v3 weights file (default: none; needed by --extractor inception)")
    f.add_argument("--device", type=F.device, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    f.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA-graph sampler (default: on CUDA devices)")
    f.add_argument("--precision", choices=["fp32", "bf16"],
                   help="network precision of the fast sampler (default: bf16 where supported; the reference "
                        "sampler is fp32)")
    f.add_argument("--steps-per-level", type=F.count, help="T (default: the model's)")
    f.add_argument("--eps", type=F.positive, help="step size (default: the model's)")
    f.add_argument("--save-samples", action="store_true", help="also keep each shard's samples (uint8)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_cmd_fid)

    r = sub.add_parser("fid-stats", help="reference feature statistics of a dataset or an .npz of images",
                       description="Feature statistics (mean, covariance) of reference images for fastncsn fid.")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=F.dataset, help="digits | mnist | cifar10 | folder:PATH (training split)")
    src.add_argument("--npz", type=F.input_file(".npz"),
                     help=".npz of images ([N, C, H, W] or [N, H, W, C], uint8 or floats in [0, 1])")
    r.add_argument("--root", type=F.existing_dir, help="directory of the torchvision dataset files (default: none; "
                   "needed by cifar10; mnist: its idx files or mnist.pkl.gz, else the installed data package)")
    r.add_argument("--out", type=F.output_file("any"), required=True, help="statistics file to write")
    r.add_argument("--extractor", choices=["digits", "mnist", "inception"],
                   help="feature extractor (default: mnist, the shipped MNIST classifier, for --data mnist; else "
                        "digits, the shipped digits classifier)")
    r.add_argument("--inception-weights", type=F.existing_file,
                   help="torchvision Inception-v3 weights file (default: none; needed by --extractor inception)")
    r.add_argument("--batch-size", type=F.count, default=256, help="images per extractor call")
    r.add_argument("--device", type=F.device, help="cpu, cuda or cuda:N (default: cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_fid_stats)

    from .experiments.cli import add_experiment_parser
    add_experiment_parser(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``fastncsn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status (2: a one-line error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except FlagError:                   # the one line is printed
        return 2
    from .checkpoint import CheckpointError
    try:
        rc = args.func(args)
    except FlagError:                   # an experiment's own parser refused its options
        return 2
    except (CLIError, CheckpointError, ValueError, TypeError, FileNotFoundError, OSError, FloatingPointError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, CLIError):
            msg = flag_message(args.command, msg, args)     # name the flag, not the Python argument
        print(f"fastncsn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastncsn: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
