"""Samplers against network evaluations: digits-FID of each sampler at each NFE on one model (issue 28).

For every point ``SAMPLER:T[:EPS]`` of ``--points`` (``T``: steps per level, ``EPS``: the sampler's
``eps``; omitted: the model's defaults for its own sampler, else the sampler's row of
``fastncsn.sampling.SAMPLER_DEFAULTS``) and every seed of ``--seeds``, ``--n`` samples are drawn
with ``fastncsn.sample(model, sampler=..., seed=...)`` (the reference loop, per-sample noise) and
scored with digits-FID against the 1797 embedded digits (the raw samples, as the bundled model's
figures 87.5 / 127.5 / 118.7 were measured).  ``ald-batch`` is ``ald`` with the releases'
batch-wide noise (``noise="batch"``): it re-measures those figures on the same code path.

Resumable: one CSV row per finished (point, seed), the CSV rewritten atomically after each; a
rerun with the same ``--out-dir`` and ``--name`` skips the rows it finds (same point, seed, n and
model).  Writes ``NAME.csv`` (the rows), ``NAME.md`` (mean and spread per point) and ``NAME.png``
(FID against NFE, one curve per sampler and eps).

Run: ``fastncsn experiment samplers [--points cas:1,cas:2,pc:1,ald:20] [--seeds 0,1,2] [--n 500]``
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from typing import Optional, Sequence

import numpy as np

from . import common
from .. import flags
from ..metrics.intervals import seed_interval

NAME = "samplers"
COLUMNS = ("sampler", "noise", "steps_per_level", "eps", "nfe", "seed", "n", "model", "digits_fid", "sample_s")
SUMMARY_COLUMNS = ("sampler", "noise", "steps_per_level", "eps", "nfe", "seeds", "fid_mean", "fid_std", "fid_ci95_low",
                   "fid_ci95_high", "fid_min",
                   "fid_max", "sample_s_mean")
#: the issue-28 grid on the bundled model (docs/results/samplers.md), each eps the best of the 100-sample
#: sweep (docs/results/samplers_sweep/samplers.md); ald:20 is the bundled model's default sampling
DEFAULT_POINTS = ("cas:1:0.6", "heun:1", "cas:2:0.6", "pc:1:0.25", "ald:4:1e-4", "cas:4:0.6", "pc:3:0.1", "ald:20")
QUICK_POINTS = ("cas:1", "ald:1")
#: one point: SAMPLER:T[:EPS], T >= 1, EPS a decimal number > 0 (checked while parsing)
_POINT = r"(ald-batch|ald|cas|pc|heun):0*[1-9]\d{0,5}(:(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)?"
POINTS = flags.listing(flags.matching(_POINT, "SAMPLER:T[:EPS] (SAMPLER: ald, ald-batch, cas, pc, heun)"),
                       "SAMPLER:T[:EPS] items (SAMPLER: ald, ald-batch, cas, pc, heun; T >= 1; EPS > 0)")


def parse_point(text: str) -> dict:
    """``SAMPLER:T[:EPS]`` -> ``dict(sampler, noise, steps_per_level, eps)`` (``eps`` None: the default)."""
    if not re.fullmatch(_POINT, text.strip()):
        raise common.ExperimentError(f"--points: expected SAMPLER:T[:EPS], got {text!r}")
    parts = text.strip().split(":")
    eps = float(parts[2]) if len(parts) > 2 else None
    if eps is not None and not (np.isfinite(eps) and eps > 0):
        raise common.ExperimentError(f"--points: EPS must be a finite number > 0, got {text!r}")
    batch = parts[0] == "ald-batch"
    return dict(sampler="ald" if batch else parts[0], noise="batch" if batch else "per_sample",
                steps_per_level=int(parts[1]), eps=eps, text=text.strip())


def _key(row: dict) -> tuple:
    eps = row.get("eps")
    return (row["sampler"], row["noise"], int(row["steps_per_level"]), "" if eps in (None, "") else float(eps),
            int(row["seed"]), int(row["n"]), row["model"])


def read_rows(path: str) -> list:
    """The finished rows of an earlier run (none when ``path`` does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def run(points: Sequence[dict], seeds: Sequence[int] = (0, 1, 2), n: int = 500, checkpoint: Optional[str] = None,
        batch_size: Optional[int] = None, out_dir: str = "docs/results", name: str = NAME, quick: bool = False,
        classifier: Optional[str] = None, progress: bool = False, command: Optional[str] = None) -> list:
    """Draw and score every (point, seed) not already in ``out_dir/name.csv``; write CSV, MD and PNG.

    Returns the summary rows (``SUMMARY_COLUMNS``), one per point, in ``points`` order."""
    from ..sampling.api import plan, sample
    model = common.load_model(checkpoint).cpu()
    model_name = "bundled" if checkpoint is None else os.path.basename(checkpoint)
    score = common.fid_scorer(classifier)
    plans = []
    for p in points:   # every point checked before any sampling (a sampler that cannot run: one line)
        try:
            plans.append(plan(model, sampler=p["sampler"], steps_per_level=p["steps_per_level"], eps=p["eps"]))
        except ValueError as exc:
            raise common.ExperimentError(f"--points: {p['text']}: {exc}") from None
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, name + ".csv")
    rows = read_rows(csv_path)
    done = {_key(r) for r in rows}
    for p, pl in zip(points, plans):
        for seed in seeds:
            row = dict(p, eps="" if p["eps"] is None else p["eps"], nfe=pl.nfe, seed=seed, n=n, model=model_name)
            del row["text"]
            if _key(row) in done:
                continue
            t0 = time.time()
            x = sample(model, n=n, seed=seed, sampler=p["sampler"], noise=p["noise"],
                       steps_per_level=p["steps_per_level"], eps=p["eps"], batch_size=batch_size, progress=False,
                       fast=False)
            row.update(sample_s=round(time.time() - t0, 1), digits_fid=round(float(score(x)), 2))
            rows.append(row)
            done.add(_key(row))
            common.write_csv(csv_path, rows, COLUMNS)        # one more finished row, atomically
            if progress:
                print(f"{p['sampler']} ({p['noise']}) T={p['steps_per_level']} eps={row['eps'] or 'default'} "
                      f"NFE {pl.nfe} seed {seed}: digits-FID {row['digits_fid']} ({row['sample_s']} s)", flush=True)
    summary = summarise(rows, points, plans, seeds, n, model_name)
    _plot(summary, os.path.join(out_dir, name + ".png"))
    body = (f"Digits-FID of {n} samples (raw, against the 1797 embedded digits) of "
            f"{'the bundled digits model' if checkpoint is None else checkpoint}, seeds "
            f"{', '.join(map(str, seeds))}, for each sampler and number of network evaluations per sample (NFE). "
            "Reference loop on the CPU, per-sample noise streams (``ald-batch``: the releases' batch-wide noise). "
            "`eps` empty: the default (the model's own for its sampler, else `SAMPLER_DEFAULTS`). "
            "fid_std: the sample standard deviation over the seeds; fid_ci95_low / high: the Student-t 95% "
            "interval of the mean over the seeds (`fastncsn.metrics.seed_interval`).\n\n"
            + common.markdown_table(summary, SUMMARY_COLUMNS) + f"\n\n![digits-FID against NFE]({name}.png)\n")
    common.write_markdown(os.path.join(out_dir, name + ".md"), "Samplers: digits-FID against NFE (issue 28)",
                          command or "fastncsn experiment samplers", body, quick)
    return summary


def summarise(rows: list, points, plans, seeds, n: int, model_name: str) -> list:
    """Mean, spread and range of the FIDs of each point over ``seeds`` (the rows of this n and model)."""
    out = []
    for p, pl in zip(points, plans):
        eps = "" if p["eps"] is None else float(p["eps"])
        mine = [r for r in rows if _key(r)[:4] == (p["sampler"], p["noise"], p["steps_per_level"], eps)
                and int(r["n"]) == n and r["model"] == model_name and int(r["seed"]) in seeds]
        fids = [float(r["digits_fid"]) for r in mine]
        secs = [float(r["sample_s"]) for r in mine]
        f = np.array(fids)
        ci = seed_interval(fids) if len(fids) > 1 else None   # Student-t interval of the mean over the seeds
        out.append(dict(sampler=p["sampler"], noise=p["noise"], steps_per_level=p["steps_per_level"], eps=eps,
                        nfe=pl.nfe, seeds=len(fids), fid_mean=float(f.mean()) if fids else None,
                        fid_std=ci["sd"] if ci else None,
                        fid_ci95_low=ci["low"] if ci else None, fid_ci95_high=ci["high"] if ci else None,
                        fid_min=float(f.min()) if fids else None, fid_max=float(f.max()) if fids else None,
                        sample_s_mean=float(np.mean(secs)) if secs else None))
    return out


def _plot(summary: list, path: str) -> None:
    from ..images import save_figure
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    curves: dict = {}
    for r in summary:    # one curve per sampler; each point labelled with its T and eps
        if r["fid_mean"] is not None:
            label = r["sampler"] + (" (batch noise)" if r["noise"] == "batch" else "")
            curves.setdefault(label, []).append(r)
    for label, rs in curves.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in rs]
        mean = [r["fid_mean"] for r in rs]
        lo = [r["fid_min"] for r in rs]
        hi = [r["fid_max"] for r in rs]
        line, = ax.plot(nfe, mean, "o-", label=label)
        ax.fill_between(nfe, lo, hi, color=line.get_color(), alpha=0.15)
        for r in rs:
            ax.annotate(f"T{r['steps_per_level']}" + (f" {r['eps']:g}" if r["eps"] != "" else ""),
                        (r["nfe"], r["fid_mean"]), textcoords="offset points", xytext=(4, 3), fontsize=6,
                        color=line.get_color())
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)"); ax.set_ylabel("digits-FID (mean; band: min-max)")
    ax.set_title("samplers on one model: quality against NFE"); ax.legend(fontsize=8)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("samplers", __doc__)
    p.add_argument("--checkpoint", type=flags.existing_file,
                   help="model checkpoint (default: the bundled digits model)")
    p.add_argument("--points", type=POINTS, help="the grid, SAMPLER:T[:EPS] items (default: "
                   f"{','.join(DEFAULT_POINTS)}; with --quick: {','.join(QUICK_POINTS)})")
    p.add_argument("--seeds", type=flags.listing(flags.seed, "seeds"), help="sampling seeds (default 0,1,2; "
                   "with --quick: 0)")
    p.add_argument("--n", type=flags.count, help="samples per (point, seed) (default 500; with --quick 8)")
    p.add_argument("--batch-size", type=flags.count, help="samples drawn at once (default: all --n)")
    p.add_argument("--classifier", type=flags.existing_file,
                   help="digits classifier weights (default: the shipped one)")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    points = [parse_point(t) for t in (a.points or (QUICK_POINTS if a.quick else DEFAULT_POINTS))]
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    n = a.n if a.n is not None else (8 if a.quick else 500)
    summary = run(points, seeds, n, a.checkpoint, a.batch_size, a.out_dir, NAME, a.quick, a.classifier,
                  progress=not a.quiet, command=command)
    print(common.markdown_table(summary, SUMMARY_COLUMNS))
    print(f"written {a.out_dir}/{NAME}.md, .csv, .png")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("samplers", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
