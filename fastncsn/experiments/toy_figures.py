"""Seed 004 section 4.1 with exact scores: the circle (Fig. 1), constant steps (Fig. 7), the diameter (Fig. 9).

* (a) circle: the uniform distribution on the unit circle (:class:`fastncsn.toy.CircleManifold`, exact
  perturbed scores), ladder geometric 1 -> 0.01, L = 10 (the report's general setting), paper step
  convention with eps = 2e-5.  *annealed*: Algorithm 1 (``a_i = eps sigma_i^2/sigma_L^2``, T steps per
  level); *plain*: Langevin on the score of the smallest level only, ``a = eps``, for the same L T
  steps.  Two starts: a centred box [-3, 3]^2 and an off-manifold box [2, 4] x [-1, 1] beside the circle.
  Measured: angular coverage (fraction of 36 angle bins holding at least half the uniform count), the
  total-variation distance of the angle histogram from uniform, the mean radius error ``|rho - 1|``.
* (b) constant step (Fig. 7): the wide/peaked mixture of Table 1 on its ladder (10 -> 0.1, L = 10, start
  uniform on [-8, 8]^2) with the sigma-dependent ``a_i = 1e-3 sigma_i^2/sigma_L^2`` against constant
  steps ``a`` in {1e-3, 1e-2, 1e-1, 1, 10} at every level; the recovered weight of the peaked mode
  (true 0.8), the per-coordinate variance of the particles on its side (true 0.26), diverged particles.
* (c) diameter (Fig. 9 and the 4.1.2 heuristic): ``0.2 N(-c, I) + 0.8 N(c, I)`` with ``|2c| = d`` for
  growing d, start uniform on the data's box widened by 3, T = 300 per level; ladder 1 -> 0.01 (L = 10) against
  sigma_1 = the maximum pairwise distance of 1000 training samples
  (:func:`fastncsn.schedules.sigma_1_from_data`) -> 0.01 (L = 10), eps = 2e-5; the error of the fraction
  of particles nearer to the heavy centre against that of exact samples (``0.8 Phi(d/2) + 0.2 (1 - Phi(d/2))``:
  the modes overlap at small d; 0.8 from d = 10 on).

Every cell: mean over ``--seeds`` seeds with the Student-t 95% interval.  Writes ``toy_figures.md``/``.csv``
(one row per panel, arm, setting and seed) and ``toy_figures.png`` (the three panels, from those rows).

Run: ``fastncsn experiment toy-figures [--quick] [--seeds 3] [--T 1000] [--T-diameter 300] [--n 1000]``
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Optional, Sequence

import torch

from . import common
from .toy_common import anneal, cell, errorbar, heavy_weight, paper_alphas, summarise, uniform_init, yerr
from .. import flags
from ..images import save_figure
from ..schedules import get_sigmas, sigma_1_from_data
from ..toy import CircleManifold, GaussianMixture, seed004_wide_peaked

NAME = "toy_figures"
CIRCLE_EPS = 2e-5
CIRCLE_INITS = {"centred box [-3,3]^2": ((-3.0, -3.0), (3.0, 3.0)), "off-manifold box [2,4]x[-1,1]":
                ((2.0, -1.0), (4.0, 1.0))}
ANGLE_BINS = 36
CONST_STEPS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
VARYING_EPS = 1e-3
DISTANCES = (2.0, 5.0, 10.0, 20.0, 40.0)
DIAM_EPS = 2e-5
ESCAPED = 100.0
COLUMNS = ("panel", "arm", "setting", "seed", "d", "sigma_1", "coverage", "tv", "radius_err", "weight", "true_weight",
           "weight_err", "var_heavy", "diverged")


def circle_stats(x: torch.Tensor) -> dict:
    """Angular coverage, TV distance of the angle histogram from uniform, mean radius error, diverged fraction
    of ``x`` ``[n, 2]`` (around the unit circle at the origin)."""
    ok = torch.isfinite(x).all(1) & (x.abs().amax(1) < ESCAPED)
    xo = x[ok].double()
    theta = torch.atan2(xo[:, 1], xo[:, 0])
    counts = torch.histc(theta, bins=ANGLE_BINS, min=-math.pi, max=math.pi)
    p = counts / max(1, xo.shape[0])
    return dict(coverage=float((counts >= 0.5 * x.shape[0] / ANGLE_BINS).double().mean()),
                tv=float(0.5 * (p - 1.0 / ANGLE_BINS).abs().sum()),
                radius_err=float((xo.norm(dim=1) - 1).abs().mean()) if xo.shape[0] else float("nan"),
                diverged=float((~ok).double().mean()))


def circle_panel(T: int, n: int, seed: int) -> list:
    """(a): annealed and plain Langevin from each start; sets stacked (annealed, plain) x starts."""
    circ = CircleManifold(1.0)
    sig = get_sigmas("geometric", 1.0, 0.01, 10, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    starts = [uniform_init(1, n, lo, hi, g, torch.float64)[0] for lo, hi in CIRCLE_INITS.values()]
    x = torch.stack([s.clone() for s in starts for _ in range(2)])         # [(init, arm)], arm 0 annealed, 1 plain
    E = x.shape[0]
    alphas = paper_alphas([CIRCLE_EPS] * E, sig)
    alphas[1::2] = CIRCLE_EPS                                               # plain: the smallest level's step
    plain = torch.tensor([k % 2 == 1 for k in range(E)])

    def score(xf, i):
        s = torch.where(plain, sig[-1], sig[i]).repeat_interleave(n)
        return circ.score(xf, s, _check=False)
    x = anneal(score, x, alphas, T, torch.Generator().manual_seed(100 + seed))
    rows = []
    for k in range(E):
        rows.append(dict(panel="a", arm="plain" if plain[k] else "annealed", setting=list(CIRCLE_INITS)[k // 2],
                         seed=seed, **circle_stats(x[k])))
    return rows


def constant_step_panel(T: int, n: int, seed: int) -> list:
    """(b): sigma-dependent vs constant steps on the wide/peaked mixture (all sets moved at once)."""
    mix = seed004_wide_peaked()
    sig = get_sigmas("geometric", 10.0, 0.1, 10, dtype=torch.float64)
    alphas = torch.cat([paper_alphas([VARYING_EPS], sig), torch.tensor(CONST_STEPS, dtype=torch.float64)[:, None]
                        .expand(len(CONST_STEPS), sig.numel())])
    E = alphas.shape[0]
    x = uniform_init(E, n, (-8.0, -8.0), (8.0, 8.0), torch.Generator().manual_seed(seed))
    x = anneal(mix.score_fn(sig), x, alphas, T, torch.Generator().manual_seed(100 + seed)).double()
    labels = [f"a_i = {VARYING_EPS:g} sigma_i^2/sigma_L^2"] + [f"constant a = {a:g}" for a in CONST_STEPS]
    rows = []
    for k in range(E):
        ok = torch.isfinite(x[k]).all(1) & (x[k].abs().amax(1) < ESCAPED)
        side = ok & (x[k].sum(1) > 0)
        w = float(side.double().mean())
        rows.append(dict(panel="b", arm="sigma-dependent" if k == 0 else "constant", setting=labels[k], seed=seed,
                         weight=w, weight_err=abs(w - 0.8),
                         var_heavy=float(x[k][side].var(0).mean()) if int(side.sum()) > 2 else None,
                         diverged=float((~ok).double().mean())))
    return rows


def two_gaussians(d: float) -> GaussianMixture:
    c = d / (2 * math.sqrt(2))
    return GaussianMixture([[-c, -c], [c, c]], [1.0, 1.0], [0.2, 0.8])


def true_near_fraction(d: float) -> float:
    """Fraction of exact samples of :func:`two_gaussians` ``(d)`` nearer to the heavy centre: the modes
    overlap at small d, so it is ``0.8 Phi(d/2) + 0.2 (1 - Phi(d/2))``, not 0.8 (0.705 at d = 2)."""
    phi = 0.5 * (1 + math.erf(d / 2 / math.sqrt(2)))
    return 0.8 * phi + 0.2 * (1 - phi)


def diameter_panel(T: int, n: int, seed: int, distances: Sequence[float]) -> list:
    """(c): weight error of the heavy mode against the distance of the modes, sigma_1 = 1 vs the diameter."""
    rows = []
    for d in distances:
        mix = two_gaussians(d)
        g = torch.Generator().manual_seed(seed)
        diam = sigma_1_from_data(mix.sample(1000, generator=g))
        c = d / (2 * math.sqrt(2)) + 3.0
        x0 = uniform_init(1, n, (-c, -c), (c, c), g)
        for arm, s1 in (("sigma_1 = 1", 1.0), ("sigma_1 = max pairwise distance", diam)):
            sig = get_sigmas("geometric", s1, 0.01, 10, dtype=torch.float64)
            x = anneal(mix.score_fn(sig), x0.clone(), paper_alphas([DIAM_EPS], sig), T,
                       torch.Generator().manual_seed(100 + seed))
            ok = torch.isfinite(x[0]).all(1) & (x[0].abs().amax(1) < ESCAPED + d)
            w = float(heavy_weight(x, mix.means[1], mix.means[0])[0])
            rows.append(dict(panel="c", arm=arm, setting=f"d = {d:g}", seed=seed, d=d, sigma_1=s1, weight=w,
                             true_weight=true_near_fraction(d), weight_err=abs(w - true_near_fraction(d)),
                             diverged=float((~ok).double().mean())))
    return rows


def run(T: int, n: int, seeds: int, distances: Sequence[float], T_circle: int, T_diameter: int, log=print) -> list:
    rows = []
    for seed in range(seeds):
        for name, fn in (("a", lambda: circle_panel(T_circle, n, seed)),
                         ("b", lambda: constant_step_panel(T, n // 2, seed)),
                         ("c", lambda: diameter_panel(T_diameter, n, seed, distances))):
            t0 = time.time()
            new = fn()
            rows += new
            log(f"seed {seed} panel {name}: " + "; ".join(
                f"{r['arm']} / {r['setting']}: " + ", ".join(f"{k} {r[k]:.3f}" for k in ("coverage", "tv", "radius_err",
                                                                                      "weight", "var_heavy")
                                                         if r.get(k) is not None) for r in new)
                + f" ({time.time() - t0:.1f} s)")
    return rows


KEYS = ("panel", "arm", "setting")
FIELDS = ("coverage", "tv", "radius_err", "weight", "true_weight", "weight_err", "var_heavy", "diverged", "d",
          "sigma_1")


def tables(rows: Sequence[dict]) -> str:
    summ = summarise(rows, KEYS, FIELDS)
    a = ["| start | sampler | angular coverage (36 bins) | TV from uniform angle | mean radius error | diverged |",
         "|---|---|---|---|---|---|"]
    a += [f"| {s['setting']} | {s['arm']} | {cell(s, 'coverage')} | {cell(s, 'tv')} | {cell(s, 'radius_err', 4)} | "
          f"{s['diverged']:.3f} |" for s in summ if s["panel"] == "a"]
    b = ["| step | peaked-mode weight (0.8) | variance on its side (0.26) | diverged |", "|---|---|---|---|"]
    b += [f"| {s['setting']} | {cell(s, 'weight')} | {cell(s, 'var_heavy')} | {cell(s, 'diverged')} |"
          for s in summ if s["panel"] == "b"]
    c = ["| d | ladder | sigma_1 | fraction nearer the heavy mode | exact samples' | error |",
         "|---|---|---|---|---|---|"]
    c += [f"| {s['d']:g} | {s['arm']} | {s['sigma_1']:.3g} | {cell(s, 'weight')} | {s['true_weight']:.3f} | "
          f"{cell(s, 'weight_err')} |"
          for s in sorted((s for s in summ if s["panel"] == "c"), key=lambda s: (s["d"], s["arm"]))]
    return ("(a) circle\n\n" + "\n".join(a) + "\n\n(b) constant against sigma-dependent step\n\n" + "\n".join(b)
            + "\n\n(c) diameter\n\n" + "\n".join(c))


def _plot(rows: Sequence[dict], path: str) -> None:
    plt = common.pyplot()
    summ = summarise(rows, KEYS, FIELDS)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    sa = [s for s in summ if s["panel"] == "a"]
    for k, (field, label) in enumerate((("coverage", "angular coverage"), ("tv", "TV from uniform"))):
        xs = [j + 0.4 * k for j in range(len(sa))]
        axes[0].bar(xs, [s[field] for s in sa], width=0.4, label=label, yerr=yerr(sa, field), capsize=3)
    axes[0].set_xticks([j + 0.2 for j in range(len(sa))])
    axes[0].set_xticklabels([f"{s['arm']}\n{s['setting'].split(' box')[0]} start" for s in sa], fontsize=7)
    axes[0].set_ylim(0, 1.05); axes[0].legend(fontsize=7)
    axes[0].set_title("(a) unit circle, exact scores (Fig. 1)", fontsize=9)
    sb = [s for s in summ if s["panel"] == "b"]
    axes[1].bar(range(len(sb)), [s["weight"] for s in sb], color=["k"] + ["tab:orange"] * (len(sb) - 1),
                yerr=yerr(sb, "weight"), capsize=3)
    axes[1].axhline(0.8, color="k", linestyle=":", linewidth=1)
    axes[1].set_xticks(range(len(sb)))
    axes[1].set_xticklabels([s["setting"].replace("constant ", "").replace(" sigma_i^2/sigma_L^2", "\nx sigma_i^2/"
                                                                            "sigma_L^2") for s in sb], fontsize=7)
    axes[1].set_ylim(0, 1); axes[1].set_ylabel("peaked-mode weight (true 0.8)")
    axes[1].set_title("(b) sigma-dependent (black) vs constant step (Fig. 7)", fontsize=9)
    for arm in dict.fromkeys(s["arm"] for s in summ if s["panel"] == "c"):
        sc = sorted((s for s in summ if s["panel"] == "c" and s["arm"] == arm), key=lambda s: s["d"])
        errorbar(axes[2], sc, "d", "weight_err", marker="o", label=arm)
    axes[2].set_xscale("log")
    axes[2].set_xticks(sorted({s["d"] for s in summ if s["panel"] == "c"}))
    axes[2].get_xaxis().set_major_formatter(common.pyplot().matplotlib.ticker.ScalarFormatter())
    axes[2].minorticks_off(); axes[2].set_xlabel("distance between the modes d")
    axes[2].set_ylabel("|fraction nearer the heavy mode - exact samples'|"); axes[2].legend(fontsize=7)
    axes[2].set_title("(c) diameter: sigma_1 = 1 vs max pairwise distance (Fig. 9)", fontsize=9)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("toy-figures", __doc__)
    p.add_argument("--seeds", type=flags.integer(2), default=3, help="seeds (with --quick: 2)")
    p.add_argument("--T", type=flags.count, default=1000, help="steps per level of (b) (with --quick: 10)")
    p.add_argument("--T-circle", type=flags.count, default=1000, help="steps per level of (a) (with --quick: 10)")
    p.add_argument("--T-diameter", type=flags.count, default=300, help="steps per level of (c) (with --quick: 10)")
    p.add_argument("--n", type=flags.count, default=1000, help="particles ((b): half; with --quick: at most 200)")
    p.add_argument("--distances", type=flags.listing(flags.positive, "numbers > 0"), default=list(DISTANCES),
                   help="distances between the two modes of (c)")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    if a.quick:
        a.seeds, a.T, a.T_circle, a.T_diameter, a.n = 2, 10, 10, 10, min(a.n, 200)
    settings = (f"{a.seeds} seeds; (a) T = {a.T_circle} per level, {a.n} particles per start; (b) T = {a.T}, "
                f"{a.n // 2} particles per step; (c) T = {a.T_diameter}, {a.n} particles, d in "
                f"{', '.join(f'{d:g}' for d in a.distances)}")
    print(f"seed 004 section 4.1 toy figures: {settings}")
    t0 = time.time()
    rows = run(a.T, a.n, a.seeds, a.distances, a.T_circle, a.T_diameter, log=(lambda *_: None) if a.quiet else print)
    wall = time.time() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    common.write_csv(os.path.join(a.out_dir, NAME + ".csv"), rows, COLUMNS)
    _plot(rows, os.path.join(a.out_dir, NAME + ".png"))
    tab = tables(rows)
    print(tab)
    body = (f"Settings: {settings}; exact scores throughout; wall time {wall:.0f} s. Cells: mean over the seeds "
            f"[Student-t 95% interval].\n\n"
            f"* (a) unit circle; annealed: geometric 1 -> 0.01, L = 10, a_i = {CIRCLE_EPS:g} sigma_i^2/sigma_L^2; "
            f"plain: the score of sigma_L only with a = {CIRCLE_EPS:g}, for the same L T steps; coverage: fraction of "
            f"{ANGLE_BINS} angle bins holding at least half the uniform count.\n"
            f"* (b) the wide/peaked mixture of Table 1, geometric 10 -> 0.1, L = 10, start uniform on [-8, 8]^2.\n"
            f"* (c) 0.2 N(-c, I) + 0.8 N(c, I), |2c| = d, start uniform on the data's box widened by 3; geometric "
            f"sigma_1 -> 0.01, L = 10, a_i = {DIAM_EPS:g} sigma_i^2/sigma_L^2; sigma_1 = 1 or the largest "
            f"distance between 1000 training samples (seed 004 section 4.1.2). The error is against the fraction "
            f"of exact samples nearer the heavy centre (the modes overlap at small d).\n\n{tab}\n\n"
            f"![the three panels]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"), "Seed 004 section 4.1: circle, constant step, "
                          "diameter (exact scores)", command, body, a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, .png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("toy-figures", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
