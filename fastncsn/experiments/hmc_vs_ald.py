"""Seed 004 section 5.1: annealed HMC against annealed Langevin, with EXACT scores.

The report tried Hamiltonian Monte Carlo (its section 1.3.2: leapfrog, Metropolis step) in place of
Langevin inside the annealing and found it "did not converge", blaming the missing Metropolis-Hastings
step (log p is unknown for a learned score).  For a Gaussian mixture the perturbed density
``log q_sigma`` is known exactly, so both versions can be run: annealed HMC over the same ladder as
Table 1 (geometric 10 -> 0.1, L = 10), at each level ``T // K`` iterations of: fresh momentum
``p ~ N(0, I)``, ``K`` leapfrog steps of size ``h_i`` on ``U = -log q_sigma_i``, then either accept
(unadjusted) or the Metropolis test ``min(1, exp(-dH))`` -- against annealed Langevin (seed 004
eq. 11, ``a_i = eps sigma_i^2/sigma_L^2``, eps = 1e-3) with ``T`` steps per level: the same number
of score evaluations per level (the leapfrog reuses the gradient at the end of a trajectory).

Leapfrog step sizes:

* ``sqrt``: ``h_i = sqrt(e) sigma_i / sigma_L`` -- one leapfrog step with a fresh momentum IS the
  Langevin step with ``a_i = h_i^2`` (K = 1, unadjusted, e = 1e-3 reproduces the Langevin arm);
* ``alpha``: ``h_i = e sigma_i^2 / sigma_L^2`` -- the Langevin step ``a_i`` itself used as the leapfrog
  step (the literal reading of "a step size eps" in both of the report's algorithms).

Reported, over ``--seeds`` seeds (mean, Student-t 95% interval): the recovered weight of the heavy mode
(true 0.8), the per-coordinate variance of the particles on each side (true ``std_k^2 + sigma_L^2``),
the acceptance rate, the energy error (median ``|dH|`` of the worst level) and the diverged fraction.

Writes ``hmc_vs_ald.md``/``.csv`` (one row per mixture, sampler and seed) and ``hmc_vs_ald.png``.

Run: ``fastncsn experiment hmc-vs-ald [--quick] [--seeds 3] [--T 1000] [--n 1000]``
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
from .toy_common import anneal, cell, mixture_logp_score, paper_alphas, summarise, uniform_init, yerr
from .. import flags
from ..images import save_figure
from ..schedules import get_sigmas
from ..toy import seed003_mixture, seed004_wide_peaked

NAME = "hmc_vs_ald"
MIXTURES = {"seed004": seed004_wide_peaked, "seed003": seed003_mixture}
ALD_EPS = 1e-3
#: a particle this far from the origin (or non-finite) has diverged (the data lie within about 15)
ESCAPED = 100.0
#: (step rule, e, leapfrog steps K, Metropolis) of the HMC arms
HMC_ARMS = tuple((rule, e, K, mh) for rule, es in (("sqrt", (1e-3, 1e-2, 1e-1)), ("alpha", (1e-3,)))
                 for e in es for K in (1, 10) for mh in (0, 1))
COLUMNS = ("mixture", "sampler", "step_rule", "e", "K", "mh", "seed", "nfe_per_level", "weight", "var_heavy",
           "var_light", "true_var_heavy", "true_var_light", "accept", "dH_worst", "diverged")


def leapfrog_steps(rule: str, e: float, sigmas: torch.Tensor) -> torch.Tensor:
    """``[L]`` leapfrog step sizes: ``sqrt(e) sigma_i/sigma_L`` (``sqrt``) or ``e sigma_i^2/sigma_L^2`` (``alpha``)."""
    r = sigmas.double() / float(sigmas[-1])
    if rule == "sqrt":
        return math.sqrt(e) * r
    if rule == "alpha":
        return e * r ** 2
    raise ValueError(f"rule: expected 'sqrt' or 'alpha', got {rule!r}")


@torch.no_grad()
def annealed_hmc(mix, sigmas: torch.Tensor, x: torch.Tensor, h: torch.Tensor, K: int, T: int, mh: bool,
                 g: torch.Generator):
    """Annealed HMC from ``x`` ``[n, D]`` (float64): per level ``T // K`` iterations of ``K`` leapfrog steps of
    size ``h[i]``, Metropolis-corrected with ``mh``.  Returns ``(x, stats)``: acceptance rate, median
    ``|dH|`` of the worst level, score evaluations per level (``1 + K (T // K)``)."""
    x = x.double().clone()
    n, D = x.shape
    acc_sum, acc_cnt, dH_worst = 0.0, 0, 0.0
    iters = max(1, T // K)
    for i in range(sigmas.numel()):
        s, hi = float(sigmas[i]), float(h[i])
        lp, sc = mixture_logp_score(mix, x, s)
        level_dH = []
        for _ in range(iters):
            p = torch.randn(n, D, generator=g, dtype=torch.float64)
            H0 = -lp + 0.5 * p.square().sum(1)
            x1, p1 = x, p + 0.5 * hi * sc
            for k in range(K):
                x1 = x1 + hi * p1
                lp1, sc1 = mixture_logp_score(mix, x1, s)
                p1 = p1 + (hi if k < K - 1 else 0.5 * hi) * sc1
            dH = -lp1 + 0.5 * p1.square().sum(1) - H0
            level_dH.append(dH.abs())
            if mh:
                u = torch.rand(n, generator=g, dtype=torch.float64)
                ok = torch.isfinite(dH) & (torch.log(u) < -dH)
                x, lp, sc = torch.where(ok[:, None], x1, x), torch.where(ok, lp1, lp), torch.where(ok[:, None], sc1, sc)
                acc_sum, acc_cnt = acc_sum + float(ok.double().sum()), acc_cnt + n
            else:
                x, lp, sc = x1, lp1, sc1
                acc_sum, acc_cnt = acc_sum + n, acc_cnt + n
        d = torch.cat(level_dH)
        d = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf")))
        dH_worst = max(dH_worst, float(d.median()))
    return x, dict(accept=acc_sum / acc_cnt, dH_worst=dH_worst, nfe_per_level=1 + K * iters)


def sample_stats(mix, x: torch.Tensor, sigma_L: float) -> dict:
    """Heavy-mode weight, per-coordinate variances of each side, their true values, diverged fraction."""
    heavy = int(mix.weights.argmax())
    mh, ml = mix.means[heavy], mix.means[1 - heavy]
    ok = torch.isfinite(x).all(1) & (x.abs().amax(1) < ESCAPED)
    near = ((x - mh).square().sum(1) < (x - ml).square().sum(1)) & ok
    far = (~near) & ok

    def var(mask):
        return float(x[mask].var(0, unbiased=True).mean()) if int(mask.sum()) > 2 else float("nan")
    return dict(weight=float(near.double().mean()), var_heavy=var(near), var_light=var(far),
                true_var_heavy=float(mix.stds[heavy] ** 2 + sigma_L ** 2),
                true_var_light=float(mix.stds[1 - heavy] ** 2 + sigma_L ** 2), diverged=float((~ok).double().mean()))


def run(mixtures: Sequence[str], sigmas: torch.Tensor, T: int, n: int, seeds: int, log=print) -> list:
    rows = []
    sL = float(sigmas[-1])
    for name in mixtures:
        mix = MIXTURES[name]()
        for seed in range(seeds):
            t0 = time.time()
            x0 = uniform_init(1, n, (-8.0, -8.0), (8.0, 8.0), torch.Generator().manual_seed(seed),
                              dtype=torch.float64)[0]
            x = anneal(mix.score_fn(sigmas), x0.clone()[None], paper_alphas([ALD_EPS], sigmas), T,
                       torch.Generator().manual_seed(10_000 + seed))[0]
            rows.append(dict(mixture=name, sampler="ald", step_rule="alpha", e=ALD_EPS, K=1, mh=0, seed=seed,
                             nfe_per_level=T, accept=None, dH_worst=None, **sample_stats(mix, x, sL)))
            for rule, e, K, mh in HMC_ARMS:
                x, st = annealed_hmc(mix, sigmas, x0, leapfrog_steps(rule, e, sigmas), K, T, bool(mh),
                                     torch.Generator().manual_seed(10_000 + seed))
                rows.append(dict(mixture=name, sampler="hmc", step_rule=rule, e=e, K=K, mh=mh, seed=seed, **st,
                                 **sample_stats(mix, x, sL)))
            log(f"{name} seed {seed}: " + ", ".join(
                f"{r['sampler']}/{r['step_rule']}/{r['e']:g}/K{r['K']}/{'mh' if r['mh'] else 'u'}={r['weight']:.3f}"
                for r in rows[-1 - len(HMC_ARMS):]) + f" ({time.time() - t0:.1f} s)")
    return rows


KEYS = ("mixture", "sampler", "step_rule", "e", "K", "mh")
FIELDS = ("weight", "var_heavy", "var_light", "accept", "dH_worst", "diverged", "nfe_per_level", "true_var_heavy",
          "true_var_light")


def table(rows: Sequence[dict]) -> str:
    lines = ["| mixture | sampler | leapfrog step h_i | K | Metropolis | NFE / level | heavy weight (0.8) | "
             "var heavy side (true) | var light side (true) | acceptance | median abs(dH), worst level | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summarise(rows, KEYS, FIELDS):
        if s["sampler"] == "ald":
            step = f"Langevin a_i = {s['e']:g} sigma_i^2/sigma_L^2"
        elif s["step_rule"] == "sqrt":
            step = f"sqrt({s['e']:g}) sigma_i/sigma_L"
        else:
            step = f"{s['e']:g} sigma_i^2/sigma_L^2"
        acc = "-" if s["sampler"] == "ald" else f"{s['accept']:.3f}"
        dh = "-" if s["sampler"] == "ald" else f"{s['dH_worst']:.3g}"
        lines.append(f"| {s['mixture']} | {s['sampler']} | {step} | {s['K']} | {'yes' if s['mh'] else 'no'} | "
                     f"{s['nfe_per_level']:.0f} | {cell(s, 'weight')} | {cell(s, 'var_heavy', 2)} "
                     f"({s['true_var_heavy']:.2f}) | {cell(s, 'var_light', 2)} ({s['true_var_light']:.2f}) | "
                     f"{acc} | {dh} | {s['diverged']:.3f} |")
    return "\n".join(lines)


def _plot(rows: Sequence[dict], path: str) -> None:
    plt = common.pyplot()
    summ = summarise(rows, KEYS, FIELDS)
    mixtures = list(dict.fromkeys(s["mixture"] for s in summ))
    fig, axes = plt.subplots(len(mixtures), 1, figsize=(11, 3.6 * len(mixtures)), squeeze=False)
    for ax, name in zip(axes[:, 0], mixtures):
        ss = [s for s in summ if s["mixture"] == name]
        labels = [("ALD" if s["sampler"] == "ald" else f"{s['step_rule']} {s['e']:g}\nK{s['K']} "
                   f"{'MH' if s['mh'] else 'unadj.'}") for s in ss]
        colors = ["k" if s["sampler"] == "ald" else ("tab:blue" if s["mh"] else "tab:orange") for s in ss]
        ax.bar(range(len(ss)), [s["weight"] for s in ss], yerr=yerr(ss, "weight"), color=colors, capsize=2)
        ax.axhline(0.8, color="k", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(ss))); ax.set_xticklabels(labels, fontsize=6)
        ax.set_ylim(0, 1); ax.set_ylabel("heavy-mode weight")
        ax.set_title(f"{name}: annealed HMC (blue: Metropolis, orange: unadjusted) vs ALD (black)", fontsize=9)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("hmc-vs-ald", __doc__)
    p.add_argument("--mixtures", type=flags.listing(None, "", choices=list(MIXTURES)), default=list(MIXTURES),
                   help="mixtures to sample")
    p.add_argument("--seeds", type=flags.integer(2), default=3, help="seeds (with --quick: 2)")
    p.add_argument("--T", type=flags.integer(10), default=1000, help="score evaluations per level (--quick: 20)")
    p.add_argument("--n", type=flags.count, default=1000, help="particles (with --quick: at most 200)")
    p.add_argument("--sigma-1", type=flags.noise_level, default=10.0, help="largest noise level")
    p.add_argument("--sigma-L", type=flags.noise_level, default=0.1, help="smallest noise level")
    p.add_argument("--levels", type=flags.integer(2), default=10, help="L, the number of geometric levels")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    flags.check_above(a.sigma_1, "--sigma-1", a.sigma_L, "--sigma-L")
    sigmas = get_sigmas("geometric", a.sigma_1, a.sigma_L, a.levels, dtype=torch.float64)
    if a.quick:
        a.seeds, a.T, a.n = 2, 20, min(a.n, 200)
    settings = (f"geometric sigma {a.sigma_1:g} -> {a.sigma_L:g}, L = {a.levels}; {a.T} score evaluations per "
                f"level; {a.n} particles, uniform start on [-8, 8]^2; {a.seeds} seeds; exact scores and exact "
                f"log q_sigma (float64)")
    print(f"seed 004 section 5.1, annealed HMC vs annealed Langevin: {settings}")
    t0 = time.time()
    rows = run(a.mixtures, sigmas, a.T, a.n, a.seeds, log=(lambda *_: None) if a.quiet else print)
    wall = time.time() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    common.write_csv(os.path.join(a.out_dir, NAME + ".csv"), rows, COLUMNS)
    _plot(rows, os.path.join(a.out_dir, NAME + ".png"))
    tab = table(rows)
    print(tab)
    body = (f"Settings: {settings}; wall time {wall:.0f} s. Mixtures: seed004 = wide (-5,-5), std 3, weight 0.2 + "
            f"peaked (5,5), std 0.5, weight 0.8; seed003 = 0.2 N((-5,-5), I) + 0.8 N((5,5), I). Cells: mean over "
            f"the seeds [Student-t 95% interval]; heavy/light side = particles nearer to the heavy/light centre; "
            f"acceptance 1 for the unadjusted runs; a diverged particle (non-finite or a coordinate beyond "
            f"{ESCAPED:g}) counts as outside the heavy mode and in neither variance.\n\n{tab}\n\n"
            f"![heavy-mode weight per sampler]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"), "Seed 004 section 5.1: annealed HMC vs annealed "
                          "Langevin (exact scores)", command, body, a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, .png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("hmc-vs-ald", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
