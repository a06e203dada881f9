"""Seed 003 Figure 1: the sliced score matching loss on data confined to a manifold, clean vs slightly perturbed.

The data lie on a low-dimensional manifold: the unit circle in R^2 (:class:`fastncsn.toy.CircleManifold`,
a 1-d manifold; seed 004 Figure 1's example), where the paper used CIFAR-10 images. For every seed of
``--seeds`` an unconditional MLP ``s(x)`` (2 -> hidden -> hidden -> 2, softplus; a one-level
:class:`~fastncsn.toy.ToyScoreNet`) is trained with sliced score matching (seed 003 eq. 3,
variance-reduced, one projection, unweighted) on fresh samples of

* ``clean`` -- the points on the circle as they are, and
* ``perturbed`` -- the points plus ``N(0, s^2 I)`` noise, ``s = --noise-std`` (default 0.01: the paper's
  ``N(0, 0.0001)``, small against the circle's radius 1 as it is against pixel values in [0, 1]).

On clean data the objective has no lower bound (a score field pointing at the circle with growing
strength lowers ``tr grad s`` without limit); on perturbed data its minimum is
``L* = -1/2 E ||grad log q_s||^2`` (computed here from the exact perturbed score, Monte Carlo).

The loss curves are logged as window means (``--windows`` windows; CSV). Per seed, from the windows:
``final`` (mean of the last tenth of the run), ``drop_ratio`` (the loss decrease over the last quarter
divided by that over the quarter before: < 1 slowing down -- converging --, >= 1 not slowing down),
``final_over_bound`` (``final / L*``; > 1: below the minimum the perturbed objective can reach) and
``tail_sd`` (mean within-window standard deviation over the last quarter, the fluctuation).
Means over the seeds with Student-t 95% intervals. Verdict on the claim (clean: the loss does not
converge; perturbed: it converges): *reproduced* when the clean ``drop_ratio`` interval lies above the
perturbed one, the perturbed mean is below 1 and the clean ``final_over_bound`` exceeds 1 for every seed;
*contradicted* when the clean runs slow down at least as much as the perturbed ones; otherwise
inconclusive.

Writes ``ssm_manifold.csv`` (the curves), ``ssm_manifold.md`` (the statistics, from the CSV) and
``ssm_manifold.png`` (the curves, from the CSV).

Run: ``fastncsn experiment ssm-manifold [--quick] [--seeds 0,1,2] [--steps 8000] [--threads 1]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from . import common
from .. import flags
from ..images import save_figure
from ..toy import CircleManifold, ToyScoreNet, train_toy

NAME = "ssm_manifold"
COLUMNS = ("condition", "noise_std", "seed", "step", "loss", "loss_sd", "nonfinite")
STATS = ("final", "drop_ratio", "final_over_bound", "tail_sd")
CLAIM = ("on the original (clean) data the sliced score matching loss first decreases and then fluctuates "
         "irregularly; with N(0, 0.0001) noise added the loss curve converges (seed 003 section 3.1, Figure 1)")


class NoisyData:
    """Samples of ``dist`` plus ``N(0, std^2 I)`` noise (``std = 0``: the samples as they are)."""

    def __init__(self, dist, std: float):
        self.dist, self.std = dist, float(std)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = self.dist.sample(n, generator=generator)
        return x + self.std * torch.randn(x.shape, generator=generator) if self.std else x


def perturbed_minimum(circle: CircleManifold, std: float, n: int = 200000, seed: int = 12345) -> float:
    """``L* = -1/2 E_q ||grad log q_std(x)||^2``, the minimum of the SSM objective on the perturbed data."""
    g = torch.Generator().manual_seed(seed)
    x = NoisyData(circle, std).sample(n, generator=g).double()
    return -0.5 * float(circle.score(x, std).square().sum(1).mean())


def curve_rows(losses: Sequence[float], windows: int, condition: str, std: float, seed: int) -> list:
    """The loss curve as ``windows`` window means (and standard deviations) at the windows' last step."""
    v = np.asarray(losses, dtype=np.float64)
    edges = np.linspace(0, v.size, min(windows, v.size) + 1).astype(int)
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        w = v[a:b]
        ok = np.isfinite(w)
        rows.append(common.rounded(dict(condition=condition, noise_std=std, seed=seed, step=int(b),
                                        loss=float(w[ok].mean()) if ok.any() else float("nan"),
                                        loss_sd=float(w[ok].std()) if ok.sum() > 1 else 0.0,
                                        nonfinite=int((~ok).sum()))))
    return rows


def seed_stats(curve: list, bound: float) -> dict:
    """``final``, ``drop_ratio``, ``final_over_bound``, ``tail_sd`` of one run's window rows (CSV strings or numbers)."""
    loss = np.array([float(r["loss"]) for r in curve])
    sd = np.array([float(r["loss_sd"]) for r in curve])
    n = loss.size
    q = [loss[int(i * n / 4):int((i + 1) * n / 4)].mean() for i in range(4)]
    final = float(loss[-max(1, n // 10):].mean())
    prev_drop = q[1] - q[2]
    return dict(final=final, drop_ratio=float((q[2] - q[3]) / prev_drop) if prev_drop != 0 else float("nan"),
                final_over_bound=final / bound, tail_sd=float(sd[-max(1, n // 4):].mean()),
                nonfinite=int(sum(int(r["nonfinite"]) for r in curve)))


def summarise(rows: list, bound: float) -> dict:
    """``{condition: {stat: seed_summary, "seeds": {seed: stats}}}`` from the CSV rows."""
    out = {}
    for cond in dict.fromkeys(r["condition"] for r in rows):
        per = {}
        for seed in dict.fromkeys(r["seed"] for r in rows if r["condition"] == cond):
            per[seed] = seed_stats([r for r in rows if r["condition"] == cond and r["seed"] == seed], bound)
        out[cond] = {k: common.seed_summary([s[k] for s in per.values()]) for k in STATS}
        out[cond]["seeds"] = per
    return out


def verdict(summary: dict) -> str:
    c, p = summary.get("clean"), summary.get("perturbed")
    if c is None or p is None or c["drop_ratio"]["ci_low"] is None or p["drop_ratio"]["ci_high"] is None:
        return "not testable (needs both conditions and >= 2 seeds)"
    if c["drop_ratio"]["mean"] <= p["drop_ratio"]["mean"]:
        return "contradicted"
    below = all(s["final_over_bound"] > 1 for s in c["seeds"].values())
    if c["drop_ratio"]["ci_low"] > p["drop_ratio"]["ci_high"] and p["drop_ratio"]["mean"] < 1 and below:
        return "reproduced"
    return "inconclusive"


def to_markdown(summary: dict) -> str:
    lines = ["| data | seeds | final loss | drop ratio | final / L* | tail sd | non-finite losses |",
             "|---|---|---|---|---|---|---|"]
    for cond, s in summary.items():
        lines.append(f"| {cond} | {len(s['seeds'])} | " + " | ".join(common.interval_text(s[k]) for k in STATS)
                     + f" | {sum(v['nonfinite'] for v in s['seeds'].values())} |")
    lines += ["", "Per seed:", "", "| data | seed | " + " | ".join(STATS) + " |", "|---|---|" + "---|" * len(STATS)]
    for cond, s in summary.items():
        for seed, v in s["seeds"].items():
            lines.append(f"| {cond} | {seed} | " + " | ".join(common.fmt(v[k]) for k in STATS) + " |")
    return "\n".join(lines)


def _plot(rows: list, bound: float, path: str) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"clean": "C3", "perturbed": "C0"}
    for cond in dict.fromkeys(r["condition"] for r in rows):
        for j, seed in enumerate(dict.fromkeys(r["seed"] for r in rows if r["condition"] == cond)):
            sel = [r for r in rows if r["condition"] == cond and r["seed"] == seed]
            step = [int(r["step"]) for r in sel]
            lab = f"{cond} (noise std {float(sel[0]['noise_std']):g})" if j == 0 else None
            axes[0].plot(step, [float(r["loss"]) for r in sel], color=colours.get(cond), linewidth=1, label=lab)
            axes[1].plot(step, [float(r["loss_sd"]) for r in sel], color=colours.get(cond), linewidth=1, label=lab)
    axes[0].axhline(bound, color="k", linestyle="--", linewidth=1, label=f"L* = {bound:.4g} (perturbed minimum)")
    axes[0].set_yscale("symlog", linthresh=10); axes[0].set_ylabel("SSM loss (window mean)")
    axes[1].set_yscale("log"); axes[1].set_ylabel("within-window sd of the loss")
    for ax in axes:
        ax.set_xlabel("training step"); ax.legend(fontsize=8)
    axes[0].set_title("sliced score matching on the unit circle (one line per seed)", fontsize=9)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("ssm-manifold", __doc__)
    common.add_seeds_argument(p, "0,1,2; with --quick 0,1")
    p.add_argument("--steps", type=flags.count, help="training steps per run (default 8000; with --quick 40)")
    common.add_toy_training_arguments(p)
    p.add_argument("--noise-std", type=flags.noise_level, default=0.01, help="std of the perturbed data's noise")
    p.add_argument("--windows", type=flags.integer(8), help="windows of the logged loss curve (default 100; --quick 20)")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> str:
    seeds = a.seeds or ([0, 1] if a.quick else [0, 1, 2])
    steps = a.steps or (40 if a.quick else 8000)
    a.windows = a.windows or (20 if a.quick else 100)
    if steps < a.windows:
        raise common.ExperimentError(f"--steps: expected at least --windows ({a.windows}) steps, got {steps}")
    circle = CircleManifold()
    bound = perturbed_minimum(circle, a.noise_std, n=20000 if a.quick else 200000)
    t0 = time.time()
    rows = []
    for seed in seeds:
        for cond, std in (("clean", 0.0), ("perturbed", a.noise_std)):
            torch.manual_seed(seed)
            net = ToyScoreNet(dim=2, hidden=a.hidden, num_levels=1, sigmas=[1.0])
            losses = train_toy(net, NoisyData(circle, std), steps=steps, batch_size=a.batch_size, lr=a.lr,
                               generator=torch.Generator().manual_seed(seed), objective="ssm")
            rows += curve_rows(losses, a.windows, cond, std, seed)
            if not a.quiet:
                print(f"seed {seed} {cond}: last window {rows[-1]['loss']:.4g} ({time.time() - t0:.0f} s)")
    wall = time.time() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    csv_path = os.path.join(a.out_dir, NAME + ".csv")
    common.write_csv(csv_path, rows, COLUMNS)
    back = common.read_csv(csv_path)                          # the statistics and the plot: from the CSV
    summary = summarise(back, bound)
    v = verdict(summary)
    _plot(back, bound, os.path.join(a.out_dir, NAME + ".png"))
    table = to_markdown(summary)
    print(table + f"\n\nverdict: {v}")
    settings = (f"unit circle in R^2; seeds {', '.join(map(str, seeds))}; {steps} Adam steps (lr {a.lr:g}) of "
                f"{a.batch_size} fresh samples per run; MLP 2 -> {a.hidden} -> {a.hidden} -> 2, softplus; "
                f"perturbed noise std {a.noise_std:g}; L* = {bound:.5g} (Monte Carlo); wall time {wall:.0f} s")
    body = (f"Claim: \"{CLAIM}\". Settings: {settings}.\n\nStatistics of the logged curves (means over the seeds "
            f"with Student-t 95% intervals): `final loss` = mean of the last tenth of the run; `drop ratio` = the "
            f"loss decrease over the last quarter / that over the quarter before (< 1: slowing down); `final / L*` "
            f"(> 1: below the minimum of the perturbed objective); `tail sd` = mean within-window sd over the last "
            f"quarter.\n\n{table}\n\n**Verdict: {v}.** (Rule: reproduced when the clean drop-ratio interval lies "
            f"above the perturbed one, the perturbed mean is below 1 and every clean run ends below L*.)\n\n"
            f"![loss curves]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"),
                          "Seed 003 Figure 1: sliced score matching on a manifold, clean vs perturbed", command,
                          body, a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, .png")
    return v


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("ssm-manifold", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
