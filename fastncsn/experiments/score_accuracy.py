"""Seed 003 Figure 2: learned scores are accurate only near the modes of the data density.

On ``p_data = 1/5 N((-5,-5), I) + 4/5 N((5,5), I)`` (:func:`fastncsn.toy.seed003_mixture`) this trains,
for every seed of ``--seeds``, three score models on fresh samples of ``p_data``:

* ``ssm`` -- the Figure 2 setting: an unconditional MLP ``s(x)`` (2 -> hidden -> hidden -> 2, softplus;
  :class:`fastncsn.toy.ToyScoreNet` with one level, whose level embedding is then a constant input)
  trained with sliced score matching on the clean samples (seed 003 eq. 3, no noise);
  its target is ``grad log p_data``;
* ``dsm`` -- the same MLP trained with denoising score matching at one small noise level
  ``--dsm-sigma`` (default 0.1); target: the score of ``q_sigma = p_data * N(0, sigma^2 I)``;
* ``ncsn`` -- a noise-conditional :class:`~fastncsn.toy.ToyScoreNet` trained with DSM over seed 003's
  toy ladder (geometric 10 -> 0.1, L = 10), evaluated at its smallest level (target: ``q_0.1``);

plus ``exact``, the exact score of ``p_data`` itself (a check of the measurement: error 0).

Each model is compared with its target's exact score on a ``--grid`` x ``--grid`` grid over [-8, 8]^2.
Regions (by the clean density ``p`` relative to its maximum): ``weighted`` -- the squared error
weighted by ``p`` (the score-matching objective's own weighting); ``high`` -- points with
``p >= 1e-2 max p``; ``low`` -- points with ``p < 1e-4 max p``; ``between`` -- the low-density band
between the modes (``|x1 - x2| <= 2``, ``|x1 + x2| <= 6``); and ``logp_k`` -- density decades
``-k-1 < log10(p / max p) <= -k``. Per region: the mean squared error ``mse`` and the relative
error ``rel_err = sqrt(mse / mean ||grad log q||^2)``, per seed and as the mean over seeds with its
Student-t 95% interval.

Verdict on the paper's claim ("score estimation is only reliable in the immediate vicinity of the
modes"), per trained model, from the relative errors: *reproduced* when the ``low`` interval lies
entirely above the ``high`` one and the ``low`` mean exceeds 0.3; *contradicted* when the ``low``
mean is below 0.1 (reliable there too) or the ``low`` interval lies entirely below the ``high`` one;
otherwise (overlapping intervals, or a ``low`` mean in [0.1, 0.3]) *inconclusive*; *not testable* with
one seed.

Writes ``score_accuracy.csv`` (rows per model, seed and region, and the summary rows ``seed = mean``
with the verdict), ``score_accuracy_field.csv`` (the fields of seed ``--seeds[0]`` on a coarse grid)
and ``score_accuracy.png`` (exact vs learned fields over the shaded density; relative error against
density), both drawn from the CSVs, and ``score_accuracy.md``.

Run: ``fastncsn experiment score-accuracy [--quick] [--seeds 0,1,2,3,4] [--steps 5000] [--threads 1]``
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from . import common
from .. import flags
from ..images import save_figure
from ..schedules import get_sigmas
from ..toy import GaussianMixture, ToyScoreNet, seed003_mixture, train_toy

NAME = "score_accuracy"
COLUMNS = ("model", "target_sigma", "seed", "region", "n_points", "mse", "rel_err", "rel_err_ci_low",
           "rel_err_ci_high", "verdict")
FIELD_COLUMNS = ("x", "y", "p_data", "exact_u", "exact_v", "ssm_u", "ssm_v", "dsm_u", "dsm_v", "ncsn_u", "ncsn_v")
MODELS = ("exact", "ssm", "dsm", "ncsn")
LABELS = {"exact": "exact grad log p_data (check)", "ssm": "SSM, clean data", "dsm": "DSM, one sigma",
          "ncsn": "NCSN ladder, smallest sigma"}
HIGH, LOW = 1e-2, 1e-4              # density thresholds of the regions, relative to max p_data
DECADES = 12                        # logp_0 .. logp_{DECADES-1}, then logp_rest
RANGE = 8.0
CLAIM = "score estimation is only reliable in the immediate vicinity of the modes of p_data (seed 003 section 3.2.1)"


def grid_points(n: int, lim: float = RANGE) -> torch.Tensor:
    """``[n*n, 2]`` float32 points of the ``n`` x ``n`` grid over ``[-lim, lim]^2`` (x fastest)."""
    t = torch.linspace(-lim, lim, n)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def region_masks(x: torch.Tensor, p: np.ndarray) -> dict:
    """Boolean masks of the unweighted regions (``high``, ``low``, ``between``, density decades)."""
    rel = p / p.max()
    xn = x.double().numpy()
    out = {"high": rel >= HIGH, "low": rel < LOW,
           "between": (rel < LOW) & (np.abs(xn[:, 0] - xn[:, 1]) <= 2) & (np.abs(xn[:, 0] + xn[:, 1]) <= 6)}
    lg = np.log10(np.maximum(rel, 1e-300))
    for k in range(DECADES):
        out[f"logp_{k}"] = (lg <= -k) & (lg > -k - 1)
    out["logp_rest"] = lg <= -DECADES
    return out


def region_errors(est: torch.Tensor, target: torch.Tensor, x: torch.Tensor, p: np.ndarray) -> list:
    """``[(region, n_points, mse, rel_err)]`` of the score ``est`` against ``target`` (both ``[N, 2]``)."""
    e = (est.double() - target.double()).square().sum(1).numpy()
    t = target.double().square().sum(1).numpy()
    w = p / p.sum()
    out = [("weighted", int(p.size), float((w * e).sum()), math.sqrt(float((w * e).sum()) / float((w * t).sum())))]
    for name, m in region_masks(x, p).items():
        if m.any():
            out.append((name, int(m.sum()), float(e[m].mean()), math.sqrt(float(e[m].mean()) / float(t[m].mean()))))
    return out


class _Evaluated:
    """A score model as ``fn(x) -> [N, 2]`` at one of its levels, with its target noise level
    (``model`` None: the exact score of ``p_data``, the measurement's check)."""

    def __init__(self, model, level: int, target_sigma: float, mixture: Optional[GaussianMixture] = None):
        self.model, self.level, self.target_sigma, self.mixture = model, level, target_sigma, mixture

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            return self.mixture.score(x)
        self.model.eval()
        return self.model(x, torch.full((x.shape[0],), self.level, dtype=torch.long))


def train_models(mix: GaussianMixture, seed: int, steps: int, batch_size: int, lr: float, hidden: int,
                 dsm_sigma: float) -> dict:
    """The models of one seed: ``{name: _Evaluated}`` (``exact`` needs no training)."""
    ladder = get_sigmas("geometric", 10.0, 0.1, 10)
    models = {"exact": _Evaluated(None, 0, 0.0, mix)}
    for name, sigmas, objective in (("ssm", [1.0], "ssm"), ("dsm", [dsm_sigma], "dsm"), ("ncsn", ladder, "dsm")):
        torch.manual_seed(seed)                                     # the initial weights
        net = ToyScoreNet(dim=2, hidden=hidden, num_levels=len(sigmas), sigmas=sigmas)
        g = torch.Generator().manual_seed(seed)                     # data, levels, noise, projections
        train_toy(net, mix, steps=steps, batch_size=batch_size, lr=lr, generator=g, objective=objective)
        level = len(sigmas) - 1
        models[name] = _Evaluated(net, level, 0.0 if objective == "ssm" else float(net.sigmas[level]))
    return models


def _exact_score(mix: GaussianMixture, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return mix.score(x.double(), sigma) if sigma > 0 else mix.score(x.double())


def measure(mix: GaussianMixture, models: dict, seed: int, grid: int) -> list:
    """One CSV row per model and region for the models of ``seed``."""
    x = grid_points(grid)
    p = mix.log_prob(x).exp().numpy()
    rows = []
    for name in MODELS:
        m = models[name]
        for region, n, mse, rel in region_errors(m(x), _exact_score(mix, x, m.target_sigma), x, p):
            rows.append(dict(model=name, target_sigma=m.target_sigma, seed=seed, region=region, n_points=n, mse=mse,
                             rel_err=rel))
    return rows


def field_rows(mix: GaussianMixture, models: dict, n: int) -> list:
    """The exact (clean) score and each trained model's field on a coarse ``n`` x ``n`` grid."""
    x = grid_points(n)
    cols = {"exact": _exact_score(mix, x, 0.0)}
    cols.update({k: models[k](x) for k in ("ssm", "dsm", "ncsn")})
    p = mix.log_prob(x).exp()
    rows = []
    for i in range(x.shape[0]):
        r = dict(x=float(x[i, 0]), y=float(x[i, 1]), p_data=float(p[i]))
        for k, v in cols.items():
            r[f"{k}_u"], r[f"{k}_v"] = float(v[i, 0]), float(v[i, 1])
        rows.append(common.rounded(r, 4))
    return rows


def _f(v) -> Optional[float]:
    return None if v is None else float(v)


def summarise(rows: list) -> list:
    """Summary rows (``seed = mean``) per model and region from the per-seed rows (CSV strings or numbers),
    with the verdict on the ``low`` row of each trained model."""
    per = [r for r in rows if str(r["seed"]) != "mean"]
    out = []
    for model in dict.fromkeys(r["model"] for r in per):
        cells = {}
        for region in dict.fromkeys(r["region"] for r in per if r["model"] == model):
            sel = [r for r in per if r["model"] == model and r["region"] == region]
            s = common.seed_summary([float(r["rel_err"]) for r in sel])
            cells[region] = dict(model=model, target_sigma=_f(sel[0]["target_sigma"]), seed="mean", region=region,
                                 n_points=int(sel[0]["n_points"]), mse=float(np.mean([float(r["mse"]) for r in sel])),
                                 rel_err=s["mean"], rel_err_ci_low=s["ci_low"], rel_err_ci_high=s["ci_high"],
                                 n_seeds=len(sel))
        if model != "exact" and "low" in cells and "high" in cells:
            cells["low"]["verdict"] = verdict(cells["low"], cells["high"])
        out.extend(cells.values())
    return out


def verdict(low: dict, high: dict) -> str:
    """The claim against one model's relative errors in the low- and high-density regions."""
    if low.get("rel_err_ci_low") is None or high.get("rel_err_ci_high") is None:
        return "not testable (one seed)"
    if low["rel_err"] < 0.1 or low["rel_err_ci_high"] < high["rel_err_ci_low"]:
        return "contradicted"
    return "reproduced" if low["rel_err"] > 0.3 and low["rel_err_ci_low"] > high["rel_err_ci_high"] else "inconclusive"


def _plot(rows: list, field: list, path: str) -> None:
    plt = common.pyplot()
    fig = plt.figure(figsize=(13, 7.2))
    gs = fig.add_gridspec(2, 4, height_ratios=[1, 0.9])
    n = int(round(math.sqrt(len(field))))
    xs = np.array([float(r["x"]) for r in field]).reshape(n, n)
    ys = np.array([float(r["y"]) for r in field]).reshape(n, n)
    p = np.array([float(r["p_data"]) for r in field]).reshape(n, n)
    for j, key in enumerate(("exact", "ssm", "dsm", "ncsn")):
        ax = fig.add_subplot(gs[0, j])
        ax.imshow(p, origin="lower", extent=(-RANGE, RANGE, -RANGE, RANGE), cmap="Oranges", interpolation="bilinear")
        u = np.array([float(r[f"{key}_u"]) for r in field]).reshape(n, n)
        v = np.array([float(r[f"{key}_v"]) for r in field]).reshape(n, n)
        norm = np.maximum(np.hypot(u, v), 1e-12)
        q = (slice(None, None, 2), slice(None, None, 2))              # every other arrow
        ax.quiver(xs[q], ys[q], (u / norm)[q], (v / norm)[q], np.log10(norm)[q], cmap="viridis", clim=(-1, 1.3),
                  scale=22, width=0.005)
        ax.contour(xs, ys, p / p.max(), levels=[LOW, HIGH], colors=["k", "r"], linewidths=0.8, linestyles=[":", "-"])
        ax.set_title(LABELS[key] if key != "exact" else "grad log p_data", fontsize=9)
        ax.set_xlim(-RANGE, RANGE); ax.set_ylim(-RANGE, RANGE); ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[1, :3])
    summ = [r for r in rows if str(r["seed"]) == "mean" and str(r["region"]).startswith("logp_")
            and r["region"] != "logp_rest" and r["model"] != "exact"]
    for model in dict.fromkeys(r["model"] for r in summ):
        sel = sorted((r for r in summ if r["model"] == model), key=lambda r: int(r["region"].split("_")[1]))
        k = np.array([-int(r["region"].split("_")[1]) - 0.5 for r in sel])
        m = np.array([float(r["rel_err"]) for r in sel])
        lo = np.array([float(r["rel_err_ci_low"]) if r["rel_err_ci_low"] is not None else float("nan") for r in sel])
        hi = np.array([float(r["rel_err_ci_high"]) if r["rel_err_ci_high"] is not None else float("nan") for r in sel])
        ax.plot(k, m, "o-", label=LABELS[model])
        ax.fill_between(k, np.maximum(lo, 1e-4), hi, alpha=0.2, color=ax.lines[-1].get_color())
    ax.axvline(math.log10(HIGH), color="r", linewidth=0.8); ax.axvline(math.log10(LOW), color="k", linestyle=":",
                                                                          linewidth=0.8)
    ax.set_yscale("log"); ax.set_xlabel("log10 p_data(x) / max p_data (decade centres)")
    ax.set_ylabel("relative error sqrt(mse / mean ||score||^2)")
    ax.set_title("error against density (mean over seeds, 95% interval shaded)", fontsize=9)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(gs[1, 3]); ax.axis("off")
    ax.text(0, 1, "top: unit arrows coloured by log10 |score|\n(-1 .. 1.3, the same scale in every panel);\n"
            "orange: p_data; red contour: p = 1e-2 max p\n(the 'high' region), dotted: 1e-4 max p\n"
            "(outside it: the 'low' region); fields of the\nfirst seed", va="top", fontsize=8)
    fig.tight_layout(); save_figure(fig, path, dpi=100); plt.close(fig)


def to_markdown(summary: list) -> str:
    cols = ("weighted", "high", "low", "between")
    lines = ["| model | target | " + " | ".join(f"rel. error `{c}`" for c in cols) + " | verdict |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for model in dict.fromkeys(r["model"] for r in summary):
        cells = {r["region"]: r for r in summary if r["model"] == model}
        sig = float(cells["weighted"]["target_sigma"])
        target = "grad log p_data" if sig == 0 else f"grad log q_{sig:g}"
        vals = [common.interval_text(dict(mean=_f(cells[c]["rel_err"]), ci_low=_f(cells[c]["rel_err_ci_low"]),
                                          ci_high=_f(cells[c]["rel_err_ci_high"]))) if c in cells else "-"
                for c in cols]
        lines.append(f"| {LABELS[model]} | {target} | " + " | ".join(vals) + f" | {cells['low'].get('verdict') or '-'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("score-accuracy", __doc__)
    common.add_seeds_argument(p, "0,1,2,3,4; with --quick 0,1")
    p.add_argument("--steps", type=flags.count, help="training steps per model (default 5000; with --quick 20)")
    common.add_toy_training_arguments(p)
    p.add_argument("--dsm-sigma", type=flags.noise_level, default=0.1, help="noise level of the one-sigma DSM model")
    p.add_argument("--grid", type=flags.integer(5), help="evaluation grid points per axis (default 161; --quick 41)")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    seeds = a.seeds or ([0, 1] if a.quick else [0, 1, 2, 3, 4])
    steps = a.steps or (20 if a.quick else 5000)
    grid = a.grid or (41 if a.quick else 161)
    mix = seed003_mixture()
    t0 = time.time()
    rows, field = [], None
    for seed in seeds:
        models = train_models(mix, seed, steps, a.batch_size, a.lr, a.hidden, a.dsm_sigma)
        rows += measure(mix, models, seed, grid)
        if field is None:
            field = field_rows(mix, models, 33)
        if not a.quiet:
            print(f"seed {seed}: " + ", ".join(f"{r['model']} low {r['rel_err']:.3g}" for r in rows
                                               if r["seed"] == seed and r["region"] == "low") + f" ({time.time() - t0:.0f} s)")
    wall = time.time() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    csv_path = os.path.join(a.out_dir, NAME + ".csv")
    field_path = os.path.join(a.out_dir, NAME + "_field.csv")
    common.write_csv(csv_path, [common.rounded(r) for r in rows + summarise(rows)], COLUMNS)
    common.write_csv(field_path, field, FIELD_COLUMNS)
    back = common.read_csv(csv_path)                          # every figure below: from the CSVs as written
    summary = summarise([r for r in back if r["seed"] != "mean"])
    _plot(back, common.read_csv(field_path), os.path.join(a.out_dir, NAME + ".png"))
    table = to_markdown(summary)
    print(table)
    settings = (f"seeds {', '.join(map(str, seeds))}; {steps} Adam steps (lr {a.lr:g}) of {a.batch_size} fresh samples "
                f"per model; MLP 2 -> {a.hidden} -> {a.hidden} -> 2, softplus; DSM sigma {a.dsm_sigma:g}; NCSN ladder "
                f"geometric 10 -> 0.1, L = 10; grid {grid} x {grid} over [-{RANGE:g}, {RANGE:g}]^2; wall time {wall:.0f} s")
    body = (f"Claim: \"{CLAIM}\". Settings: {settings}.\n\nRelative error sqrt(mse / mean ||target score||^2) per "
            f"region, mean over the seeds with its Student-t 95% interval. Regions: `weighted` = weighted by p_data "
            f"(the objective's own weighting), `high` = p_data >= {HIGH:g} max p_data, `low` = p_data < {LOW:g} max "
            f"p_data, `between` = the low-density band between the modes. Verdict (trained models): reproduced when "
            f"the `low` interval lies above the `high` one and the `low` mean exceeds 0.3; contradicted when the "
            f"`low` mean is under 0.1 or the `low` interval lies below the `high` one; otherwise inconclusive.\n\n{table}\n\n"
            f"Every number and curve: `{NAME}.csv` (per seed and region, and the summary rows `seed = mean`); the "
            f"fields: `{NAME}_field.csv` (seed {seeds[0]}).\n\n![score fields and error against density]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"),
                          "Seed 003 Figure 2: score accuracy against data density", command, body, a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, _field.csv, .png")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("score-accuracy", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
