"""Shared pieces of the experiment modules: recipe arguments, training and sampling on the
embedded digits, table writers (Markdown + CSV) and the ``main`` wrapper with one-line errors."""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from typing import Callable, Optional, Sequence

import torch

from . import CPU_DIGITS_RECIPE, QUICK_RECIPE
from .. import flags
from ..flags import FlagError, Parser

QUICK_NOTE = ("**`--quick` run: a tiny model trained for a few steps and a handful of samples -- a CI smoke "
              "test. The numbers below are meaningless.**")

_RECIPE_ARGS = (  # (dest, checked type, help); every default: the recipe's
    ("steps", flags.count, "training steps per model"),
    ("ngf", flags.count, "width of CondRefineNetDilated"),
    ("batch_size", flags.count, "training batch size"),
    ("lr", flags.positive, "Adam learning rate"),
    ("ema_rate", flags.rate, "EMA rate of the weights (0 = raw weights)"),
    ("sample_n", flags.count, "number of samples per model"),
    ("sample_batch", flags.count, "samples drawn at once"),
    ("steps_per_level", flags.count, "Langevin steps per noise level (T)"),
    ("eps", flags.positive, "Langevin step size (in --step-convention)"),
    ("seed", flags.seed, "training and sampling seed"),
)


def experiment_parser(name: str, doc: str) -> Parser:
    """The parser of ``fastncsn experiment NAME`` (one-line errors, defaults in ``--help``), described by the
    first line of the module's docstring ``doc``."""
    return Parser(prog=f"fastncsn experiment {name}", description=doc.split("\n")[0])


class ExperimentError(ValueError):
    """A bad experiment configuration (reported as one line, exit status 2)."""


def add_common_arguments(p: argparse.ArgumentParser, training: bool = True) -> None:
    """``--out-dir``, ``--quick``, ``--threads``, ``--quiet`` and (``training``) the recipe overrides."""
    p.add_argument("--out-dir", type=flags.output_dir, help="where the .md, .csv and .png files go (default "
                   "docs/results; with --quick: quick-results)")
    p.add_argument("--quick", action="store_true", help="CI smoke-test preset (seconds; meaningless numbers)")
    p.add_argument("--threads", type=flags.threads, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if training:
        g = p.add_argument_group("recipe (defaults: fastncsn.experiments.CPU_DIGITS_RECIPE, or QUICK_RECIPE "
                                 "with --quick)")
        for dest, typ, hlp in _RECIPE_ARGS:
            g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, help=hlp + " (default: the recipe's)")
        g.add_argument("--step-convention", choices=["paper", "reference", "snr"],
                       help="meaning of --eps (default: the recipe's)")
        g.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                       help="final denoising step (default: the recipe's)")
        p.add_argument("--runs-dir", type=flags.output_dir, help="where the trained models, and each sampling "
                       "seed's samples, are kept and reused (default runs/experiments; with --quick: "
                       "<out-dir>/runs)")


def resolve_dirs(a: argparse.Namespace) -> None:
    """Fill in the default ``--out-dir`` (and ``--runs-dir``); ``--quick`` never writes into docs/ by default."""
    if a.out_dir is None:
        a.out_dir = "quick-results" if a.quick else "docs/results"
    if hasattr(a, "runs_dir") and a.runs_dir is None:
        a.runs_dir = os.path.join(a.out_dir, "runs") if a.quick else os.path.join("runs", "experiments")


def resolve_recipe(quick: bool = False, overrides: Optional[dict] = None) -> dict:
    """The recipe: ``QUICK_RECIPE`` or ``CPU_DIGITS_RECIPE`` updated with the non-None ``overrides``."""
    r = dict(QUICK_RECIPE if quick else CPU_DIGITS_RECIPE)
    for k, v in (overrides or {}).items():
        if k not in r:
            raise ExperimentError(f"recipe: unknown key {k!r} (known: {', '.join(r)})")
        if v is not None:
            r[k] = v
    for k in ("ngf", "batch_size", "steps", "sample_n", "sample_batch", "steps_per_level"):
        if not isinstance(r[k], int) or isinstance(r[k], bool) or r[k] < 1:
            raise ExperimentError(f"--{k.replace('_', '-')}: expected an int >= 1, got {r[k]!r}")
    for k in ("lr", "eps"):
        if not r[k] > 0:
            raise ExperimentError(f"--{k}: expected > 0, got {r[k]!r}")
    if r["ema_rate"] is not None and not 0.0 <= r["ema_rate"] < 1.0:
        raise ExperimentError(f"--ema-rate: expected a rate in [0, 1) (0 = raw weights), got {r['ema_rate']!r}")
    r["ema_rate"] = r["ema_rate"] or None
    return r


def recipe_overrides(a: argparse.Namespace) -> dict:
    """The recipe values given on the command line (for ``resolve_recipe``)."""
    over = {dest: getattr(a, dest) for dest, _, _ in _RECIPE_ARGS}
    over.update(step_convention=a.step_convention, denoise=a.denoise)
    return {k: v for k, v in over.items() if v is not None}


def recipe_text(r: dict) -> str:
    """The recipe in one sentence (for the Markdown pages)."""
    ema = f", EMA {r['ema_rate']:g}" if r["ema_rate"] else ""
    return (f"CondRefineNetDilated ngf {r['ngf']}, {r['steps']} DSM steps of {r['batch_size']} images, Adam lr "
            f"{r['lr']:g}{ema}, seed {r['seed']}; sampling T = {r['steps_per_level']} per level, eps = {r['eps']:g} "
            f"({r['step_convention']} convention), {'with' if r['denoise'] else 'without'} final denoising, "
            f"{r['sample_n']} samples")


def check_levels(num_levels: int, sigma_1: float, sigma_L: float) -> None:
    if not isinstance(num_levels, int) or num_levels < 2:
        raise ExperimentError(f"--num-levels: expected L >= 2, got {num_levels!r}")
    if not (sigma_1 > sigma_L > 0):
        raise ExperimentError(f"--sigma-1/--sigma-L: expected sigma_1 > sigma_L > 0, got {sigma_1} and {sigma_L}")


def check_schedules(names: Sequence[str]) -> list:
    from ..schedules import SCHEDULES
    names = list(names)
    bad = [s for s in names if s not in SCHEDULES]
    if bad or not names:
        raise ExperimentError(f"--schedules: expected names from {', '.join(SCHEDULES)}, got {bad or names!r}")
    return names


def check_file(path: Optional[str], what: str) -> None:
    if path is not None and not os.path.isfile(path):
        raise ExperimentError(f"{what}: no such file {path!r}")


def load_model(checkpoint: Optional[str]):
    """The model at ``checkpoint`` (None: the bundled digits model), in eval mode."""
    from ..checkpoint import CheckpointError, error_line, load, load_bundled
    check_file(checkpoint, "--checkpoint")
    try:
        return load_bundled() if checkpoint is None else load(checkpoint)
    except CheckpointError as exc:
        raise ExperimentError(error_line(exc, "--checkpoint")) from None


def fid_scorer(classifier: Optional[str]) -> Callable[[torch.Tensor], float]:
    """digits-FID against all embedded digits, with the shipped classifier or the one at ``classifier``."""
    from .. import metrics
    features, ref = fid_parts(classifier)
    if features is None:
        return metrics.digits_fid
    return lambda x: metrics.fid(x, ref, features, 512)


#: the datasets the training experiments run on, with the metric of each (``fastncsn.metrics``: digits-FID
#: against the 1797 embedded digits, MNIST-FID against the 60,000 MNIST training digits)
DATASETS = ("digits", "mnist")


def check_data(data: str) -> str:
    if data not in DATASETS:
        raise ExperimentError(f"--data: expected one of {', '.join(DATASETS)}, got {data!r}")
    if data == "mnist":
        from ..data import mnist_tensor
        try:
            mnist_tensor(False)                      # the data package is there, else one line now
        except (FileNotFoundError, ValueError, OSError) as exc:
            raise ExperimentError(str(exc).splitlines()[0]) from None
    return data


def fid_parts(classifier: Optional[str], data: str = "digits"):
    """``(extractor, reference statistics)`` of ``data``'s FID with the classifier at ``classifier``, or
    ``(None, None)`` for the shipped one (``fastncsn.metrics.intervals.fid_intervals``'s default)."""
    from .. import metrics
    if classifier is None:                           # the shipped weights exist, else one line now
        path, name = ((metrics.DIGITS_CLASSIFIER_PATH, "digits") if data == "digits"
                      else (metrics.MNIST_CLASSIFIER_PATH, "MNIST"))
        if not path.is_file():
            raise ExperimentError(f"{name} classifier weights missing ({path}); create them with  python -m "
                                  f"fastncsn.metrics --train-{name.lower()}-classifier")
        return None, None
    net = classifier_module(classifier, data)
    ref = metrics.compute_feature_stats(reference_images(data), net.features, 512)
    return net.features, (ref.mean(), ref.cov())


def reference_images(data: str = "digits") -> torch.Tensor:
    """The real images ``data``'s FID is measured against: all embedded digits / the MNIST training split."""
    from ..data import embedded_digits, mnist_tensor
    return embedded_digits()[0] if data == "digits" else mnist_tensor(True)[0]


def sample_seeds(model, r: dict, seeds: Sequence[int], parts: tuple = (None, None), progress: bool = False,
                 init: Optional[str] = None, n_boot: int = 200, data: str = "digits",
                 cache_dir: Optional[str] = None):
    """The recipe's samples of ``model`` for each sampling seed, scored with ``data``'s FID and its intervals.

    Returns ``(fields, samples, seconds)`` (``samples``: one tensor per seed): ``fields`` holds ``<data>_fid``
    (the mean over the seeds) and ``<data>_<column>`` for each of
    :data:`fastncsn.metrics.intervals.INTERVAL_COLUMNS` except the mean (the Student-t interval over the
    seeds, the bootstrap spread, the per-seed FIDs).  With ``cache_dir`` each seed's samples are kept there
    and reused (:func:`sample_digits`), so an interrupted run resumes at the seed it stopped in."""
    from ..metrics.intervals import INTERVAL_COLUMNS, fid_intervals
    sets, seconds = [], 0.0
    for s in seeds:
        x, t = sample_digits(model, dict(r, seed=int(s)), progress, init=init, cache_dir=cache_dir)
        sets.append(x)
        seconds += t
    iv = fid_intervals(sets, data, extractor=parts[0], reference=parts[1], n_boot=n_boot)
    fields = {f"{data}_fid": iv["fid_mean"], "sample_seeds": "/".join(str(int(s)) for s in seeds)}
    fields.update({f"{data}_{c}": iv[c] for c in INTERVAL_COLUMNS if c != "fid_mean"})
    return fields, sets, seconds


#: the columns :func:`sample_seeds` fills, after ``digits_fid``
SEED_COLUMNS = ("digits_fid_seed_low", "digits_fid_seed_high", "digits_fid_boot_low", "digits_fid_boot_high",
                "digits_fid_seeds", "sample_seeds")


#: per dataset: (what it is, its FID in words), for the Markdown pages
DATA_TEXT = {
    "digits": ("the embedded digits", "digits-FID: FID in the 64-d features of the shipped digits classifier "
               "against all 1797 embedded digits"),
    "mnist": ("MNIST (the 60,000 training digits)", "MNIST-FID: FID in the 64-d features of the shipped MNIST "
              "classifier against the 60,000 MNIST training digits"),
}


def output_name(name: str, data: str) -> str:
    """The file stem of an experiment's outputs: ``name`` on the digits, ``name_mnist`` on MNIST."""
    return name if data == "digits" else f"{name}_{data}"


def metric_columns(columns: Sequence[str], data: str) -> tuple:
    """``columns`` with the digits-FID names (``digits_fid...``) renamed for ``data``'s metric."""
    return tuple(data + c[len("digits"):] if c.startswith("digits_fid") else c for c in columns)


def add_data_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", choices=list(DATASETS),
                   help="training data: the embedded digits (scored with digits-FID) or MNIST (offline, the data "
                        "package of README's Quick start; scored with MNIST-FID)")


def add_sample_seeds_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-seeds", type=flags.listing(flags.seed, "seeds"), default="0,1,2",
                   help="sampling seeds; digits-FID is their mean with a Student-t interval over them and "
                        "a bootstrap interval over the samples (default 0,1,2; --quick: 0,1)")


def resolve_sample_seeds(a: argparse.Namespace) -> list:
    seeds = list(a.sample_seeds)
    if a.quick and seeds == [0, 1, 2]:
        seeds = [0, 1]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ExperimentError(f"--sample-seeds: expected >= 2 different seeds >= 0, got {seeds!r}")
    return seeds


def classifier_module(classifier: Optional[str], data: str = "digits"):
    """The classifier at ``classifier``, else the shipped one of ``data`` (digits or MNIST)."""
    from .. import metrics
    check_file(classifier, "--classifier")
    if classifier is None and data == "mnist":
        return metrics.load_mnist_classifier()
    return metrics.load_digits_classifier(classifier)


def run_name(schedule: str, num_levels: int, sigma_1: float, sigma_L: float, r: dict, data: str = "digits") -> str:
    return (("" if data == "digits" else f"{data}_") + f"{schedule}_L{num_levels}_s{sigma_1:g}-{sigma_L:g}_ngf{r['ngf']}_bs{r['batch_size']}_lr{r['lr']:g}"
            f"_seed{r['seed']}")


def train_digits(run_dir: str, schedule: str, num_levels: int, sigma_1: float, sigma_L: float, r: dict,
                 progress: bool = False, data: str = "digits"):
    """Train (or resume, or reuse a finished run in ``run_dir``) a model on ``data`` (the embedded digits or
    MNIST); returns ``(model, seconds)``.

    With ``r["ema_rate"]`` the EMA weights of the last checkpoint are returned.
    """
    from ..checkpoint import load
    from ..training import find_checkpoints, train
    t0 = time.time()
    model = train(None, data=data, steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"], out_dir=run_dir,
                  checkpoint_every=max(1, min(500, r["steps"])), keep_last=1, ema_rate=r["ema_rate"],
                  seed=r["seed"], progress=progress, ngf=r["ngf"], num_levels=num_levels, sigma_1=sigma_1,
                  sigma_L=sigma_L, schedule=schedule, extra={"experiment_recipe": dict(r)})
    if r["ema_rate"]:
        model = load(find_checkpoints(run_dir)[0], ema=True)
    return model, time.time() - t0


#: the recipe entries that decide the samples (with the model's weights); the cache key of :func:`sample_digits`
SAMPLING_KEYS = ("sample_n", "steps_per_level", "eps", "step_convention", "denoise", "seed", "sample_batch")


def sample_cache_path(cache_dir: str, model, r: dict, init: Optional[str] = None) -> str:
    """Where :func:`sample_digits` keeps the samples of ``model`` under the recipe ``r``: the file name
    hashes the sampling settings and every weight of the model, so a retrained or resumed model, or any
    other setting, never reuses another's samples."""
    import hashlib
    import json
    h = hashlib.sha256(json.dumps({**{k: r[k] for k in SAMPLING_KEYS}, "init": init}, sort_keys=True,
                                  default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return os.path.join(cache_dir, f"samples_seed{int(r['seed'])}_{h.hexdigest()[:16]}.pt")


def sample_digits(model, r: dict, progress: bool = False, init: Optional[str] = None, snapshot_every: int = 0,
                  cache_dir: Optional[str] = None):
    """``r["sample_n"]`` samples of ``model`` with the recipe's sampler, clamped to [0, 1]; ``(x, seconds)``.

    With ``cache_dir`` (and no snapshots) the samples are written there atomically
    (:func:`sample_cache_path`) and a later call with the same model and settings reads them back
    (weights-only load; ``seconds`` is then 0) instead of sampling again."""
    from ..checkpoint import atomic_save
    from ..files import safe_torch_load
    from ..sampling.api import sample
    t0 = time.time()
    path = sample_cache_path(cache_dir, model, r, init) if cache_dir and not snapshot_every else None
    if path and os.path.exists(path):
        x = safe_torch_load(path, arg="cache_dir")
        if isinstance(x, torch.Tensor) and x.shape[0] == r["sample_n"]:
            return x, 0.0
    out = sample(model, n=r["sample_n"], steps_per_level=r["steps_per_level"], eps=r["eps"],
                 step_convention=r["step_convention"], denoise=r["denoise"], seed=r["seed"], init=init,
                 batch_size=r["sample_batch"], progress=progress, snapshot_every=snapshot_every, fast=False)
    x = (out[0] if snapshot_every else out).clamp(0, 1)
    if path:
        atomic_save(x, path)                         # (atomic_write creates the folder)
    return x, time.time() - t0


def last_loss(run_dir: str) -> Optional[float]:
    """The last logged training loss of ``run_dir`` (None when there is no log)."""
    import json
    path = os.path.join(run_dir, "train_log.jsonl")
    if not os.path.isfile(path):
        return None
    lines = [ln for ln in open(path).read().splitlines() if ln.strip()]
    return float(json.loads(lines[-1])["loss"]) if lines else None


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers: Optional[Sequence[str]] = None) -> str:
    head = headers or columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """``rows`` (dicts) as CSV with ``columns``, written atomically."""
    import io
    from ..files import atomic_write_text
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    atomic_write_text(f.getvalue(), path)


def write_markdown(path: str, title: str, command: str, body: str, quick: bool) -> None:
    import datetime
    import platform
    head = f"# {title}\n\nGenerated by `{command}` on {datetime.date.today().isoformat()} " \
           f"({platform.machine()} CPU, {torch.get_num_threads()} threads).\n\n"
    from ..files import atomic_write_text
    atomic_write_text(head + (QUICK_NOTE + "\n\n" if quick else "") + body.rstrip() + "\n", path)


def command_line(name: str, argv: Optional[Sequence[str]]) -> str:
    args = list(argv if argv is not None else sys.argv[1:])
    return " ".join(["fastncsn experiment", name] + args)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_main(name: str, parser: argparse.ArgumentParser, execute: Callable[[argparse.Namespace, str], object],
             argv: Optional[Sequence[str]]) -> int:
    """Parse ``argv`` (a bad flag: one line, 2), apply ``--threads``, run ``execute(args, command)``; expected
    failures -> one line naming the flag, 2."""
    from ..checkpoint import CheckpointError
    try:
        a = parser.parse_args(argv)
    except FlagError:
        return 2
    resolve_dirs(a)
    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)
    try:
        execute(a, command_line(name, argv))
    except (ExperimentError, CheckpointError, ValueError, FileNotFoundError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{parser.prog}: error: {flag_message(parser, msg)}", file=sys.stderr)
        return 2
    return 0


def flag_message(parser: argparse.ArgumentParser, msg: str) -> str:
    """``msg`` of a library error that starts with a Python argument (``sigma_1: ...``) with the parser's
    flag of that name instead (``--sigma-1: ...``), when it has one."""
    name, sep, rest = msg.partition(":")
    flag = "--" + name.replace("_", "-")
    if sep and flag in parser._option_string_actions:
        return flag + ":" + rest
    return msg



def add_seeds_argument(p: argparse.ArgumentParser, default: str, what: str = "training and sampling seeds") -> None:
    """``--seeds 0,1,2`` (a comma-separated list of seeds; ``default`` in the help)."""
    p.add_argument("--seeds", type=flags.listing(flags.seed, "seeds"), help=f"{what} (default {default})")


def add_toy_training_arguments(p: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--lr`` and ``--hidden`` of the toy experiments' MLP score models."""
    p.add_argument("--batch-size", type=flags.count, default=128, help="training batch size")
    p.add_argument("--lr", type=flags.positive, default=1e-3, help="Adam learning rate")
    p.add_argument("--hidden", type=flags.count, default=128, help="MLP width")


def seed_summary(values: Sequence[float]) -> dict:
    """``dict(mean, sd, ci_low, ci_high)`` of per-seed figures: the Student-t 95% interval of the mean
    (:func:`fastncsn.metrics.intervals.seed_interval`; sd and the interval None for a single seed)."""
    from ..metrics.intervals import seed_interval
    v = [float(x) for x in values]
    if len(v) < 2:
        return dict(mean=v[0] if v else None, sd=None, ci_low=None, ci_high=None)
    s = seed_interval(v)
    return dict(mean=s["mean"], sd=s["sd"], ci_low=s["low"], ci_high=s["high"])


def interval_text(s: dict, digits: int = 3) -> str:
    """``mean [low, high]`` of a :func:`seed_summary` (just the mean without an interval)."""
    if s.get("ci_low") is None:
        return fmt(s.get("mean"), digits)
    return f"{fmt(s['mean'], digits)} [{fmt(s['ci_low'], digits)}, {fmt(s['ci_high'], digits)}]"


def read_csv(path: str) -> list:
    """The rows of a CSV written by :func:`write_csv` (dicts of strings; empty cells as None)."""
    with open(path, newline="") as f:
        return [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]


def rounded(row: dict, digits: int = 5) -> dict:
    """``row`` with its floats rounded to ``digits`` significant digits (smaller CSVs)."""
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for k, v in row.items()}
