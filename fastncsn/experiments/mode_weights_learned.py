"""Seed 004 Table 1 with LEARNED scores, beside the exact ones, and the step-size rule of section 4.2.2.

For each of ``--seeds`` training seeds a :class:`fastncsn.toy.ToyScoreNet` is trained with DSM
(:func:`fastncsn.toy.train_toy`) on the wide/peaked mixture of seed 004 Figure 10 (centres (-5,-5) and
(5,5), stds 3 and 0.5, weights 0.2 / 0.8) on the ladder of ``mode-weights`` (geometric 10 -> 0.1,
L = 10), and annealed Langevin (seed 004 eq. 11, paper step convention
``a_i = eps sigma_i^2 / sigma_L^2``, update ``x + a_i/2 s + sqrt(a_i) z``, uniform start on [-8, 8]^2)
samples it for eps in {1e-2, 1e-3, 3e-4, 1e-4} and each T of ``--t-grid``; the same particles and noise
(same seed) are also moved with the EXACT perturbed scores.  A further row per T uses the step the rule
of seed 004 section 4.2.2 picks: eps such that

    (1 - e/sigma_L^2)^(2T) (gamma^2 - 2e/(sigma_L^2 - sigma_L^2 (1 - e/sigma_L^2)^2))
        + 2e/(sigma_L^2 - sigma_L^2 (1 - e/sigma_L^2)^2)  ~  1

(:func:`fastncsn.schedules.step_size_for`; derived for the update ``x + e_i s + sqrt(2 e_i) z``, so the
paper-convention eps is 2e).  Reported: the recovered weight of the peaked mode (fraction of particles
with x1 + x2 > 0, true 0.8), mean and Student-t 95% interval over the seeds.

Writes ``mode_weights_learned.md``/``.csv`` (one row per seed, scores, T and eps) and ``.png``.

Run: ``fastncsn experiment mode-weights-learned [--quick] [--seeds 3] [--t-grid 100,1000,10000]``
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
from .mode_weights import EPS_GRID, REPORT, T_GRID
from .toy_common import anneal, cell, errorbar, model_score, paper_alphas, summarise, uniform_init
from .. import flags
from ..images import save_figure
from ..schedules import get_sigmas, step_rule_value, step_size_for
from ..toy import ToyScoreNet, seed004_wide_peaked, train_toy

NAME = "mode_weights_learned"
COLUMNS = ("scores", "seed", "T", "eps", "rule", "rule_value", "n", "weight", "diverged", "train_loss",
           "report_weight")


def rule_eps(T: int, sigmas: torch.Tensor) -> float:
    """The section 4.2.2 step for ``T`` steps per level, in the paper convention (2x the rule's own)."""
    return 2.0 * step_size_for(int(T), float(sigmas[0] / sigmas[1]), float(sigmas[-1]))


def rule_ratio(eps_paper: float, T: int, sigmas: torch.Tensor) -> float:
    """The section 4.2.2 expression at the paper-convention step ``eps_paper`` (the rule wants ~1)."""
    e = eps_paper / 2
    if not e < float(sigmas[-1]) ** 2:
        return float("nan")
    return step_rule_value(e, int(T), float(sigmas[0] / sigmas[1]), float(sigmas[-1]))


def train_model(sigmas: torch.Tensor, seed: int, steps: int, hidden: int, batch_size: int = 256,
                lr: float = 1e-3):
    """A ToyScoreNet trained with DSM on the wide/peaked mixture; ``(model, mean loss of the last 10%)``."""
    torch.manual_seed(seed)
    model = ToyScoreNet(dim=2, hidden=hidden, num_levels=int(sigmas.numel()), sigmas=sigmas)
    losses = train_toy(model, seed004_wide_peaked(), steps=steps, batch_size=batch_size, lr=lr,
                       generator=torch.Generator().manual_seed(seed))
    tail = losses[-max(1, len(losses) // 10):]
    return model.eval(), sum(tail) / len(tail)


def weights_of(x: torch.Tensor) -> tuple:
    ok = torch.isfinite(x).all(-1)
    w = ((x[..., 0] + x[..., 1] > 0) & ok).double().mean(-1)
    return [float(v) for v in w], [float(v) for v in (~ok).double().mean(-1)]


def run(sigmas: torch.Tensor, t_grid: Sequence[int], seeds: int, n: int, n_long: int, train_steps: int,
        hidden: int, log=print) -> list:
    """One row per (scores, seed, T, eps): the recovered weight of the peaked mode."""
    mix = seed004_wide_peaked()
    exact = mix.score_fn(sigmas)
    rows = []
    for seed in range(seeds):
        t0 = time.time()
        model, loss = train_model(sigmas, seed, train_steps, hidden)
        log(f"seed {seed}: trained {train_steps} steps, loss {loss:.4f} ({time.time() - t0:.1f} s)")
        for T in t_grid:
            t0 = time.time()
            eps_list = list(EPS_GRID) + [rule_eps(T, sigmas)]
            m = n_long if T == max(t_grid) and len(t_grid) > 1 else n
            alphas = paper_alphas(eps_list, sigmas)
            x0 = uniform_init(len(eps_list), m, (-8.0, -8.0), (8.0, 8.0), torch.Generator().manual_seed(
                1000 * seed + T))
            for scores, fn in (("exact", exact), ("learned", model_score(model))):
                x = anneal(fn, x0.clone(), alphas, T, torch.Generator().manual_seed(7919 * seed + T))
                w, div = weights_of(x)
                for k, eps in enumerate(eps_list):
                    is_rule = k == len(EPS_GRID)
                    rep = REPORT.get(eps) if not is_rule else None
                    rows.append(dict(scores=scores, seed=seed, T=T, eps=eps, rule=int(is_rule),
                                     rule_value=rule_ratio(eps, T, sigmas), n=m, weight=w[k], diverged=div[k],
                                     train_loss=loss if scores == "learned" else None,
                                     report_weight=rep[T_GRID.index(T)] if rep and T in T_GRID else None))
            log(f"  T={T} (n={m}): " + ", ".join(
                f"{r['scores'][0]}{'*' if r['rule'] else ''}{r['eps']:.3g}={r['weight']:.3f}"
                for r in rows if r["seed"] == seed and r["T"] == T) + f" ({time.time() - t0:.1f} s)")
    return rows


def table(rows: Sequence[dict]) -> str:
    """The Markdown table of the CSV rows: per T and eps, exact and learned weight with intervals."""
    summ = {(s["scores"], s["T"], s["eps"], s["rule"]): s
            for s in summarise(rows, ("scores", "T", "eps", "rule"), ("weight", "diverged"))}
    first = {(r["T"], r["eps"], r["rule"]): r for r in rows}
    lines = ["| T | eps (paper convention) | rule ratio (4.2.2) | exact scores | learned scores | report |",
             "|---|---|---|---|---|---|"]
    for (T, eps, rule), r in first.items():
        rep = "-" if r["report_weight"] is None or r["report_weight"] == "" else f"{float(r['report_weight']):.2f}"
        ratio = r["rule_value"]
        lines.append(f"| {T} | {'**rule** ' if rule else ''}{eps:.3g} | "
                     f"{'-' if ratio is None or not math.isfinite(ratio) else f'{ratio:.3g}'} | "
                     f"{cell(summ[('exact', T, eps, rule)], 'weight')} | "
                     f"{cell(summ[('learned', T, eps, rule)], 'weight')} | {rep} |")
    return "\n".join(lines)


def best_lines(rows: Sequence[dict]) -> str:
    """Per T and scores: the best eps of the grid (mean weight nearest 0.8) against the rule's eps."""
    summ = summarise(rows, ("scores", "T", "eps", "rule"), ("weight",))
    out = []
    for scores in ("exact", "learned"):
        for T in dict.fromkeys(s["T"] for s in summ):
            grid = [s for s in summ if s["scores"] == scores and s["T"] == T and not s["rule"]]
            rule = [s for s in summ if s["scores"] == scores and s["T"] == T and s["rule"]][0]
            best = min(grid, key=lambda s: abs(s["weight"] - 0.8))
            out.append(f"* {scores}, T = {T}: best grid eps {best['eps']:g} -> {cell(best, 'weight')}; "
                       f"the rule's eps {rule['eps']:.3g} -> {cell(rule, 'weight')}")
    return "\n".join(out)


def _plot(rows: Sequence[dict], path: str) -> None:
    plt = common.pyplot()
    summ = summarise(rows, ("scores", "T", "eps", "rule"), ("weight",))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, scores in zip(axes, ("exact", "learned")):
        for eps in EPS_GRID:
            s = [v for v in summ if v["scores"] == scores and v["eps"] == eps and not v["rule"]]
            errorbar(ax, s, "T", "weight", marker="o", label=f"eps {eps:g}")
            rep = [(T, REPORT[eps][T_GRID.index(T)]) for T in (v["T"] for v in s) if T in T_GRID]
            if rep:
                ax.plot(*zip(*rep), "x--", linewidth=1, color=ax.lines[-1].get_color())
        s = [v for v in summ if v["scores"] == scores and v["rule"]]
        errorbar(ax, s, "T", "weight", marker="s", color="k", linestyle=":", label="eps of the 4.2.2 rule")
        ax.axhline(0.8, color="k", linestyle=":", linewidth=1)
        ax.set_xscale("log"); ax.set_ylim(0, 1); ax.set_xlabel("T, steps per level")
        ax.set_title(f"{scores} scores (x--: report's Table 1)")
    axes[0].set_ylabel("recovered weight of the peaked mode (true 0.8)")
    axes[0].legend(fontsize=7)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("mode-weights-learned", __doc__)
    p.add_argument("--seeds", type=flags.integer(2), default=3, help="training (and sampling) seeds (with --quick: 2)")
    p.add_argument("--t-grid", type=flags.listing(flags.count, "ints >= 1"), default=[100, 1000, 10000],
                   help="steps per level T (with --quick: 5,20)")
    p.add_argument("--n", type=flags.count, default=1000, help="particles per cell (with --quick: at most 200)")
    p.add_argument("--n-long", type=flags.count, default=200, help="particles per cell at the largest T")
    p.add_argument("--train-steps", type=flags.count, default=5000, help="DSM steps of 256 samples (--quick: 100)")
    p.add_argument("--hidden", type=flags.count, default=128, help="width of ToyScoreNet")
    p.add_argument("--sigma-1", type=flags.noise_level, default=10.0, help="largest noise level")
    p.add_argument("--sigma-L", type=flags.noise_level, default=0.1, help="smallest noise level")
    p.add_argument("--levels", type=flags.integer(2), default=10, help="L, the number of geometric levels")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    flags.check_above(a.sigma_1, "--sigma-1", a.sigma_L, "--sigma-L")
    sigmas = get_sigmas("geometric", a.sigma_1, a.sigma_L, a.levels)
    if a.quick:
        a.seeds, a.t_grid, a.n, a.n_long, a.train_steps = 2, [5, 20], min(a.n, 200), min(a.n_long, 200), 100
    t_grid = sorted(set(a.t_grid))
    settings = (f"geometric sigma {a.sigma_1:g} -> {a.sigma_L:g}, L = {a.levels}; ToyScoreNet width {a.hidden}, "
                f"{a.train_steps} DSM steps of 256 (Adam 1e-3) per seed; {a.seeds} seeds; T in "
                f"{', '.join(map(str, t_grid))}; {a.n} particles per cell"
                + (f" ({a.n_long} at T = {t_grid[-1]})" if len(t_grid) > 1 else "")
                + "; paper step convention; uniform start on [-8, 8]^2")
    print(f"seed 004 Table 1, learned and exact scores: {settings}")
    t0 = time.time()
    rows = run(sigmas, t_grid, a.seeds, a.n, a.n_long, a.train_steps, a.hidden,
               log=(lambda *_: None) if a.quiet else print)
    wall = time.time() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    common.write_csv(os.path.join(a.out_dir, NAME + ".csv"), rows, COLUMNS)
    _plot(rows, os.path.join(a.out_dir, NAME + ".png"))
    tab, best = table(rows), best_lines(rows)
    print(tab + "\n" + best)
    body = (f"Settings: {settings}; wall time {wall:.0f} s.\n\nRecovered weight of the peaked mode (true 0.8): "
            f"mean over the seeds [Student-t 95% interval]; the exact and learned runs of a seed share their "
            f"start and noise. \"rule ratio\": the section 4.2.2 expression at that step (the rule wants 1); "
            f"**rule** rows use the eps the rule picks for that T. \"report\": seed 004 Table 1 (it has no "
            f"T = 100 column).\n\n{tab}\n\nBest step of the grid against the rule's:\n\n{best}\n\n"
            f"![weight against T, exact and learned scores]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"), "Seed 004 Table 1 with learned scores and the "
                          "4.2.2 step-size rule", command, body, a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, .png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("mode-weights-learned", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
