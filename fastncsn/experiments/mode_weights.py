"""Seed 004, Table 1: how well annealed Langevin recovers mixture weights.

The wide/peaked mixture of seed 004 Figure 10 (centres (-5,-5) and (5,5), stds
3 and 0.5, weights 0.2 and 0.8) is sampled with annealed Langevin dynamics
(Algorithm 1, the *paper* step convention of seed 004 eq. 11:
``alpha_i = eps sigma_i^2 / sigma_L^2``, update ``x + alpha_i/2 s + sqrt(alpha_i) z``)
using the EXACT perturbed scores, for eps in {1e-2, 1e-3, 3e-4, 1e-4} and
T in {1000, 10000, 30000} steps per level, and the recovered weight of the
peaked mode (fraction of samples with x1 + x2 > 0) is reported beside the
report's values.

The report does not print its ladder for this experiment, and it sampled with
its *estimated* score maps, where this uses the exact scores.  Its general
setting sigma_1 = 1 -> sigma_L = 0.01 cannot be what it used here: with
``alpha_1 = eps (sigma_1/sigma_L)^2 = 100`` at eps = 1e-2 the first level
diverges (every particle is lost; ``--sigma-1 1 --sigma-L 0.01`` shows it),
while the report finds 0.07-0.78 there.  The default is therefore seed 003's
toy ladder, geometric sigma_1 = 10 -> sigma_L = 0.1 with L = 10, which is
stable for the whole eps grid; ``--sigma-1``/``--sigma-L``/``--levels`` change it.

Writes ``mode_weights.md``/``.csv`` (one row per cell) and ``mode_weights.png`` (weight against T per
step size, the report's values dashed) into ``--out-dir``.

Run: ``fastncsn experiment mode-weights [--quick] [--n 10000] [--out-dir docs/results]``
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import torch

from . import common
from .. import flags
from ..images import save_figure
from ..schedules import get_sigmas, step_size_for
from ..toy import seed004_wide_peaked

EPS_GRID = (1e-2, 1e-3, 3e-4, 1e-4)
T_GRID = (1000, 10000, 30000)
#: seed 004 Table 1 (relative weight of the peaked Gaussian; the true weight is 0.8)
REPORT = {1e-2: (0.07, 0.46, 0.78), 1e-3: (0.47, 0.86, 0.94), 3e-4: (0.46, 0.83, 0.93), 1e-4: (0.36, 0.6, 0.77)}


@torch.no_grad()
def run_cells(eps_list: Sequence[float], T: int, sigmas: torch.Tensor, n: int = 10000, seed: int = 0,
              init_range=(-8.0, 8.0)) -> list:
    """Recovered weight of the peaked mode for the cells ``(eps, T)``, eps in ``eps_list``.

    All particles of all step sizes move at once (a ``[E, n, 2]`` state; each
    step size gets its own independent particles, drawn from one generator).
    Exact scores; diverging particles (non-finite) count as not in the peaked mode.
    """
    mix = seed004_wide_peaked()
    g = torch.Generator().manual_seed(seed)
    lo, hi = init_range
    E = len(eps_list)
    x = lo + (hi - lo) * torch.rand(E, n, 2, generator=g)
    mu = mix.means.float()                                  # [2, 2]
    logw = mix.weights.float().log()
    sig = sigmas.double()
    eps = torch.tensor(eps_list, dtype=torch.float64)
    for i in range(sig.numel()):
        var = (mix.stds.double() ** 2 + sig[i] ** 2).float()    # [2]
        a = (eps * (sig[i] / sig[-1]) ** 2).float().view(E, 1, 1)
        half_a, sqrt_a = a / 2, a.sqrt()
        c = logw - torch.log(var)                           # log w_k - D/2 log var_k (D = 2), constants dropped
        for _ in range(T):
            d0, d1 = x - mu[0], x - mu[1]
            l0 = c[0] - 0.5 * d0.square().sum(-1) / var[0]
            l1 = c[1] - 0.5 * d1.square().sum(-1) / var[1]
            r1 = torch.sigmoid(l1 - l0).unsqueeze(-1)       # responsibility of the peaked mode
            score = -(1 - r1) * d0 / var[0] - r1 * d1 / var[1]
            x += half_a * score + sqrt_a * torch.randn(E, n, 2, generator=g)
    ok = torch.isfinite(x).all(-1)
    return [float(v) for v in (((x[..., 0] + x[..., 1] > 0) & ok).double().mean(-1))]


def run_grid(eps_grid: Sequence[float], t_grid: Sequence[int], sigmas: torch.Tensor, n: int, seed: int,
             log=print) -> dict:
    out = {}
    for T in t_grid:
        t0 = time.time()
        for eps, v in zip(eps_grid, run_cells(eps_grid, T, sigmas, n=n, seed=seed)):
            out[(eps, T)] = v
        log(f"T={T}: " + ", ".join(f"eps={e:g}: {out[(e, T)]:.3f}" for e in eps_grid)
            + f" ({time.time() - t0:.1f} s)")
    return out


def to_markdown(result: dict, eps_grid, t_grid, sigmas: torch.Tensor) -> str:
    lines = ["| eps \\ T | " + " | ".join(f"T = {T} (ours / report)" for T in t_grid) + " |",
             "|---|" + "---|" * len(t_grid)]
    for eps in eps_grid:
        cells = []
        for j, T in enumerate(t_grid):
            rep = REPORT.get(eps)
            rep_v = rep[T_GRID.index(T)] if rep is not None and T in T_GRID else None
            cells.append(f"{result[(eps, T)]:.3f} / {rep_v:.2f}" if rep_v is not None else f"{result[(eps, T)]:.3f} / -")
        lines.append(f"| {eps:g} | " + " | ".join(cells) + " |")
    gamma = float(sigmas[0] / sigmas[1]) if sigmas.numel() > 1 else float("nan")
    rule = []
    for T in t_grid:
        try:
            rule.append(f"T = {T}: eps = {2 * step_size_for(T, gamma, float(sigmas[-1])):.3g}")
        except ValueError as exc:
            rule.append(f"T = {T}: n/a ({exc})")
    lines.append("")
    lines.append("Step size the seed 004 section 4.2.2 rule recommends (converted to the paper convention, "
                 "2x the rule's reference-convention value): " + "; ".join(rule) + ".")
    return "\n".join(lines)


NAME = "mode_weights"
COLUMNS = ("eps", "T", "weight", "report_weight")


def grid_rows(result: dict, eps_grid, t_grid) -> list:
    """One row per cell ``(eps, T)``: our recovered weight and the report's (None where it has none)."""
    rows = []
    for eps in eps_grid:
        for T in t_grid:
            rep = REPORT.get(eps)
            rep_v = rep[T_GRID.index(T)] if rep is not None and T in T_GRID else None
            rows.append(dict(eps=eps, T=T, weight=result[(eps, T)], report_weight=rep_v))
    return rows


def _plot(rows: list, path: str) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for eps in dict.fromkeys(r["eps"] for r in rows):
        cells = [r for r in rows if r["eps"] == eps]
        ax.plot([r["T"] for r in cells], [r["weight"] for r in cells], "o-", label=f"eps {eps:g} (ours)")
        rep = [r for r in cells if r["report_weight"] is not None]
        if rep:
            ax.plot([r["T"] for r in rep], [r["report_weight"] for r in rep], "x--", linewidth=1,
                    color=ax.lines[-1].get_color(), label=f"eps {eps:g} (report)")
    ax.axhline(0.8, color="k", linestyle=":", linewidth=1, label="true weight 0.8")
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.set_xlabel("T, steps per level"); ax.set_ylabel("recovered weight of the peaked mode")
    ax.set_title("seed 004 Table 1: mode weights"); ax.legend(fontsize=7, ncol=2)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("mode-weights", __doc__)
    p.add_argument("--n", type=flags.count, default=2000, help="particles per cell (with --quick: at most 2000)")
    p.add_argument("--seed", type=flags.seed, default=0, help="seed of the particles and the noise")
    p.add_argument("--sigma-1", type=flags.noise_level, default=10.0, help="largest noise level (level 0)")
    p.add_argument("--sigma-L", type=flags.noise_level, default=0.1, help="smallest noise level (level L-1)")
    p.add_argument("--levels", type=flags.integer(2), default=10, help="L, the number of geometric levels")
    common.add_common_arguments(p, training=False)     # --out-dir, --quick (T in {100, 1000}), --threads, --quiet
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    flags.check_above(a.sigma_1, "--sigma-1", a.sigma_L, "--sigma-L")
    sigmas = get_sigmas("geometric", a.sigma_1, a.sigma_L, a.levels)
    n, t_grid = (min(a.n, 2000), (100, 1000)) if a.quick else (a.n, T_GRID)
    settings = (f"geometric sigma {a.sigma_1:g} -> {a.sigma_L:g}, L = {a.levels}, n = {n} particles, paper step "
                f"convention (seed 004 eq. 11), exact perturbed scores, uniform initialisation on [-8, 8]^2, "
                f"seed {a.seed}")
    print(f"seed 004 Table 1 grid: {settings}")
    t0 = time.time()
    res = run_grid(EPS_GRID, t_grid, sigmas, n, a.seed, log=(lambda *_: None) if a.quiet else print)
    wall = time.time() - t0
    table = to_markdown(res, EPS_GRID, t_grid, sigmas)
    print(table)
    rows = grid_rows(res, EPS_GRID, t_grid)
    os.makedirs(a.out_dir, exist_ok=True)
    common.write_csv(os.path.join(a.out_dir, NAME + ".csv"), rows, COLUMNS)
    _plot(rows, os.path.join(a.out_dir, NAME + ".png"))
    body = (f"Settings: {settings}; wall time {wall:.0f} s. Each cell: ours / the report's value.\n\n{table}\n\n"
            f"![recovered weight against T]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"),
                          "Seed 004 Table 1: recovered weight of the peaked mode (true weight 0.8)", command, body,
                          a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, .png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("mode-weights", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
