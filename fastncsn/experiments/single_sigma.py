"""Seed 003 section 5 / appendix C.1 baseline: one noise level sigma = 0.01 with plain Langevin vs the annealed ladder.

The paper trains a score network at the single noise level ``sigma = 0.01`` and samples it with
vanilla Langevin dynamics: it "fails to generate reasonable images", while the noise-conditional
network sampled with annealed Langevin works. The image version needs an image model with one level
(this repository's digits trainer requires ``sigma_1 > sigma_L``, i.e. L >= 2), so this is the toy
version, on ``p_data = 1/5 N((-5,-5), I) + 4/5 N((5,5), I)`` (:func:`fastncsn.toy.seed003_mixture`, two
well-separated modes). For every seed of ``--seeds``:

* ``single`` -- :class:`fastncsn.toy.ToyScoreNet` with one level ``sigmas = [0.01]``, trained with DSM,
  sampled with plain Langevin (seed 003 eq. 4) at each step size of ``--langevin-eps`` (default 0.1 and
  0.01) for ``L * T`` steps (the annealed sampler's number of score evaluations): ``single@EPS``;
* ``ladder`` -- ToyScoreNet over the geometric ladder ``--sigma-1`` -> 0.01 (L = ``--levels``), trained
  with DSM on the same data budget, sampled with annealed Langevin (Algorithm 1; the toy defaults
  :data:`fastncsn.toy.TOY_SAMPLING`: snr convention, eps 0.25, T = 100);
* the same samplers with the EXACT scores (``exact-single@EPS``: ``grad log q_0.01`` with plain
  Langevin, seed 003 Figure 3(b); ``exact-ladder``: annealed, Figure 3(c)), which separate the two
  failure causes: wrong scores in low-density regions vs the slow mixing of plain Langevin.

All samplers start from U[-8, 8]^2. Measured on ``--n`` samples against as many fresh samples of
``p_data``: the weight of the heavy mode (``x1 + x2 > 0``; true 0.8) and its error, the energy
distance, the mean squared distance to the nearest mode per coordinate (``spread``; true
``1 + 0.01^2``), and the fraction of samples farther than 4 from both modes (``off``; true 3e-4).
For the trained models, also their relative score error at sigma = 0.01 against the exact score in the
high- and low-density regions of ``score-accuracy`` (``score_err_high``, ``score_err_low``).
Means over the seeds with Student-t 95% intervals (the energy distance spans orders of magnitude, so
its interval is also given for log10 of it). Verdict on the claim (the single-sigma baseline fails where
the ladder works), from log10 energy distance: *reproduced* when every ``single@EPS`` interval (over the
seeds whose sampler did not diverge; a sampler that diverged for every seed counts as failing) lies
above the ``ladder`` one; *contradicted* when one does not.

Writes ``single_sigma.csv`` (one row per method and seed, and the summary rows ``seed = mean``),
``single_sigma.md`` and ``single_sigma.png`` (the first seed's samples per method and the metrics
with their intervals, from the CSV and ``single_sigma_samples.csv``).

Run: ``fastncsn experiment single-sigma [--quick] [--seeds 0,1,2,3,4] [--steps 5000] [--threads 1]``
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
from ..sampling.core import SamplingDivergedError
from ..sampling.langevin import annealed_langevin, langevin
from ..schedules import get_sigmas
from ..toy import TOY_SAMPLING, ToyScoreNet, mode_weight, seed003_mixture, train_toy

NAME = "single_sigma"
SIGMA = 0.01
LABELS = {"single": "one sigma = 0.01, plain Langevin", "ladder": "NCSN ladder, annealed Langevin",
          "exact-single": "exact score q_0.01, plain Langevin", "exact-ladder": "exact scores, annealed Langevin"}
METRICS = ("weight", "weight_error", "energy", "log10_energy", "spread", "off", "score_err_high", "score_err_low")
COLUMNS = ("method", "seed", "n", "diverged") + METRICS + tuple(f"{m}_{s}" for m in METRICS for s in ("ci_low", "ci_high"))
SAMPLE_COLUMNS = ("method", "x", "y")
MODES = torch.tensor([[-5.0, -5.0], [5.0, 5.0]])
CLAIM = ("a model trained at the single noise level sigma = 0.01 and sampled with vanilla Langevin dynamics fails to "
         "generate reasonable samples, where the noise-conditional model with annealed Langevin works "
         "(seed 003 section 5, appendix C.1)")


def methods(langevin_eps: Sequence[float]) -> list:
    """The methods: ``single@EPS`` and ``exact-single@EPS`` for each plain-Langevin step, the two ladders."""
    return ([f"single@{e:g}" for e in langevin_eps] + ["ladder"] + [f"exact-single@{e:g}" for e in langevin_eps]
            + ["exact-ladder"])


def label(method: str) -> str:
    base, _, eps = method.partition("@")
    return LABELS[base] + (f" (step {eps})" if eps else "")


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistics) of two 2-D samples."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sample_metrics(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """The metrics of samples ``x`` against reference samples ``ref`` (non-finite samples count as ``off``)."""
    ok = torch.isfinite(x).all(1)
    d2 = torch.cdist(x[ok].double(), MODES.double()).square().min(1).values
    w = mode_weight(x[ok]) * float(ok.double().mean()) if ok.any() else 0.0
    e = energy_distance(x[ok], ref) if ok.any() else float("nan")
    return dict(weight=w, weight_error=abs(w - 0.8), energy=e, log10_energy=float(np.log10(max(e, 1e-12))),
                spread=float(d2.mean() / 2) if ok.any() else float("nan"),
                off=float(1 - ((d2 <= 16).sum() / x.shape[0])))


def score_errors(model, mix) -> dict:
    """Relative error of ``model`` at its smallest level (sigma = 0.01) against the exact ``grad log q_0.01`` in
    the high- and low-density regions of :mod:`.score_accuracy` (81 x 81 grid over [-8, 8]^2)."""
    from .score_accuracy import grid_points, region_errors
    x = grid_points(81)
    with torch.no_grad():
        est = model(x, torch.full((x.shape[0],), model.sigmas.numel() - 1, dtype=torch.long))
    rel = {r[0]: r[3] for r in region_errors(est, mix.score(x.double(), SIGMA), x, mix.log_prob(x).exp().numpy())}
    return dict(score_err_high=rel["high"], score_err_low=rel["low"])


def _score_fn(model):
    @torch.no_grad()
    def fn(x, idx):
        return model(x, idx)
    return fn


def run_seed(seed: int, steps: int, batch_size: int, lr: float, hidden: int, sigma_1: float, levels: int, n: int,
             langevin_eps: Sequence[float]) -> tuple:
    """``(rows, samples)``: one metrics row per method, and the samples ``{method: [n, 2]}``."""
    mix = seed003_mixture()
    ladder = get_sigmas("geometric", sigma_1, SIGMA, levels)
    nets = {}
    for name, sigmas in (("single", [SIGMA]), ("ladder", ladder)):
        torch.manual_seed(seed)
        nets[name] = ToyScoreNet(dim=2, hidden=hidden, num_levels=len(sigmas), sigmas=sigmas)
        train_toy(nets[name], mix, steps=steps, batch_size=batch_size, lr=lr,
                  generator=torch.Generator().manual_seed(seed))
        nets[name].eval()
    fns = {"single": _score_fn(nets["single"]), "ladder": _score_fn(nets["ladder"]),
           "exact-single": mix.score_fn([SIGMA]), "exact-ladder": mix.score_fn(ladder)}
    g = torch.Generator().manual_seed(10_000 + seed)
    ref = mix.sample(n, generator=g)
    lo, hi = TOY_SAMPLING["init_range"]
    x0 = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    T = TOY_SAMPLING["steps_per_level"]
    errs = {k: score_errors(v, mix) for k, v in nets.items()}
    rows, samples = [], {}
    for method in methods(langevin_eps):
        base, _, eps = method.partition("@")
        diverged = 0
        try:
            if eps:
                x = langevin(fns[base], x0.clone(), float(eps), levels * T, seed=seed)
            else:
                x = annealed_langevin(fns[base], x0.clone(), ladder, eps=TOY_SAMPLING["eps"], steps_per_level=T,
                                      step_convention=TOY_SAMPLING["step_convention"], seed=seed)
        except SamplingDivergedError:
            x, diverged = torch.full_like(x0, float("nan")), 1
        samples[method] = x
        rows.append(dict(method=method, seed=seed, n=n, diverged=diverged, **sample_metrics(x, ref),
                         **errs.get(base, dict(score_err_high=None, score_err_low=None))))
    return rows, samples


def summarise(rows: list) -> list:
    """Summary rows (``seed = mean``) per method from the per-seed rows (CSV strings or numbers)."""
    per = [r for r in rows if str(r["seed"]) != "mean"]
    out = []
    for method in dict.fromkeys(r["method"] for r in per):
        sel = [r for r in per if r["method"] == method]
        row = dict(method=method, seed="mean", n=int(sel[0]["n"]), diverged=sum(int(r["diverged"]) for r in sel),
                   n_seeds=len(sel))
        for m in METRICS:
            vals = [float(r[m]) for r in sel if r.get(m) is not None and np.isfinite(float(r[m]))]
            s = common.seed_summary(vals) if vals else dict(mean=None, ci_low=None, ci_high=None)
            row.update({m: s["mean"], f"{m}_ci_low": s["ci_low"], f"{m}_ci_high": s["ci_high"]})
        out.append(row)
    return out


def verdict(summary: list) -> str:
    """Reproduced when, for every plain-Langevin step, the single-sigma model fails: its interval of log10
    energy distance (over the seeds whose sampler did not diverge) lies above the ladder's, or every
    seed's sampler diverged."""
    by = {r["method"]: r for r in summary}
    singles = [r for m, r in by.items() if m.startswith("single@")]
    lad = by.get("ladder")
    if not singles or lad is None or lad["log10_energy_ci_high"] is None:
        return "not testable (needs >= 2 seeds)"
    fails = []
    for r in singles:
        if int(r["diverged"]) == int(r["n_seeds"]):
            fails.append(True)
        elif r["log10_energy_ci_low"] is None:
            return "not testable (fewer than 2 seeds without divergence)"
        else:
            fails.append(float(r["log10_energy_ci_low"]) > float(lad["log10_energy_ci_high"]))
    return "reproduced" if all(fails) else "contradicted"


def _cell(r: dict, m: str) -> str:
    f = (lambda k: None if r.get(k) is None else float(r[k]))
    return common.interval_text(dict(mean=f(m), ci_low=f(f"{m}_ci_low"), ci_high=f(f"{m}_ci_high")))


def to_markdown(summary: list) -> str:
    lines = ["| method | weight (true 0.8) | weight error | energy distance | log10 energy distance | spread (true "
             "1.0001) | off (true 0.0003) | score error, high density | score error, low density | diverged runs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {label(r['method'])} | " + " | ".join(_cell(r, m) for m in METRICS) + f" | {r['diverged']} |")
    return "\n".join(lines)


def _plot(rows: list, samples: list, path: str) -> None:
    plt = common.pyplot()
    summ = [r for r in rows if r["seed"] == "mean"]
    k = len(summ)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.1 * k + 4.5, 3.6), gridspec_kw=dict(width_ratios=[1] * k + [1.5]))
    for ax, method in zip(axes, [r["method"] for r in summ]):
        pts = np.array([[float(r["x"]), float(r["y"])] for r in samples if r["method"] == method]).reshape(-1, 2)
        pts = pts[np.isfinite(pts).all(1)]
        inside = (np.abs(pts) <= 9).all(1)
        ax.scatter(pts[inside, 0], pts[inside, 1], s=2, alpha=0.4)
        ax.scatter(MODES[:, 0], MODES[:, 1], marker="x", color="r")
        ax.set_xlim(-9, 9); ax.set_ylim(-9, 9); ax.set_aspect("equal")
        ax.set_title(f"{label(method)}\n{int((~inside).sum())} of {len(pts)} shown samples off the frame", fontsize=7)
        ax.tick_params(labelsize=7)
    ax = axes[-1]
    ys = np.arange(k)
    get = (lambda r, c: float(r[c]) if r[c] is not None else np.nan)
    m = np.array([get(r, "log10_energy") for r in summ])
    lo = np.array([get(r, "log10_energy_ci_low") for r in summ])
    hi = np.array([get(r, "log10_energy_ci_high") for r in summ])
    ax.errorbar(m, ys, xerr=[m - lo, hi - m], fmt="o", capsize=3)
    ax.set_yticks(ys); ax.set_yticklabels([r["method"] for r in summ], fontsize=8)
    ax.set_xlabel("log10 energy distance to p_data\n(mean over seeds, 95% interval)", fontsize=8)
    fig.tight_layout(); save_figure(fig, path, dpi=100); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("single-sigma", __doc__)
    common.add_seeds_argument(p, "0,1,2,3,4; with --quick 0,1")
    p.add_argument("--steps", type=flags.count, help="DSM training steps per model (default 5000; --quick 20)")
    common.add_toy_training_arguments(p)
    p.add_argument("--sigma-1", type=flags.noise_level, default=10.0, help="largest level of the ladder (to 0.01)")
    p.add_argument("--levels", type=flags.integer(2), default=10, help="L, levels of the ladder")
    p.add_argument("--langevin-eps", type=flags.listing(flags.positive, "steps"), default=[0.1, 0.01],
                   help="steps of the plain Langevin sampler (default 0.1,0.01)")
    p.add_argument("--n", type=flags.count, help="samples per method and seed (default 2000; --quick 200)")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> str:
    flags.check_above(a.sigma_1, "--sigma-1", SIGMA, "sigma_L")
    seeds = a.seeds or ([0, 1] if a.quick else [0, 1, 2, 3, 4])
    steps = a.steps or (20 if a.quick else 5000)
    n = a.n or (200 if a.quick else 2000)
    t0 = time.time()
    rows, first = [], None
    for seed in seeds:
        r, samples = run_seed(seed, steps, a.batch_size, a.lr, a.hidden, a.sigma_1, a.levels, n, a.langevin_eps)
        rows += r
        first = first or samples
        if not a.quiet:
            print(f"seed {seed}: " + ", ".join(f"{x['method']} energy {x['energy']:.3g}" for x in r)
                  + f" ({time.time() - t0:.0f} s)")
    wall = time.time() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    csv_path = os.path.join(a.out_dir, NAME + ".csv")
    samples_path = os.path.join(a.out_dir, NAME + "_samples.csv")
    common.write_csv(csv_path, [common.rounded(r) for r in rows + summarise(rows)], COLUMNS)
    common.write_csv(samples_path, [common.rounded(dict(method=k, x=float(p[0]), y=float(p[1])), 4)
                                    for k, v in first.items() for p in v[:1000]], SAMPLE_COLUMNS)
    back = common.read_csv(csv_path)                          # the table and the plot: from the CSVs
    summary = summarise([r for r in back if r["seed"] != "mean"])
    v = verdict(summary)
    _plot(back, common.read_csv(samples_path), os.path.join(a.out_dir, NAME + ".png"))
    table = to_markdown(summary)
    print(table + f"\n\nverdict: {v}")
    settings = (f"seeds {', '.join(map(str, seeds))}; {steps} DSM steps (Adam lr {a.lr:g}, batch {a.batch_size}) per "
                f"model; ToyScoreNet width {a.hidden}; ladder geometric {a.sigma_1:g} -> {SIGMA:g}, L = {a.levels}; "
                f"annealed: snr convention eps {TOY_SAMPLING['eps']:g}, T = {TOY_SAMPLING['steps_per_level']}; plain "
                f"Langevin: step {', '.join(f'{e:g}' for e in a.langevin_eps)}, {a.levels * TOY_SAMPLING['steps_per_level']} steps; {n} samples "
                f"from U[-8, 8]^2; wall time {wall:.0f} s")
    body = (f"Claim: \"{CLAIM}\". Toy version (the image version is not run: the digits trainer needs L >= 2 "
            f"levels, sigma_1 > sigma_L). Settings: {settings}.\n\nMeans over the seeds with Student-t 95% "
            f"intervals; `energy` = energy distance to {n} fresh samples of p_data; `spread` = mean squared distance "
            f"to the nearest mode per coordinate; `off` = fraction of samples farther than 4 from both modes; `score error` = the "
            f"trained model's relative error sqrt(mse / mean ||score||^2) at sigma = 0.01 against the exact score of "
            f"q_0.01 where p_data >= 1e-2 max p_data (high) and < 1e-4 max p_data (low), as in score-accuracy.\n\n"
            f"{table}\n\n**Verdict: {v}** (rule: reproduced when the interval of log10 energy distance of "
            f"the single-sigma model lies above the ladder model's for every plain-Langevin step).\n\n![samples of the first seed; energy distances]({NAME}.png)\n")
    common.write_markdown(os.path.join(a.out_dir, NAME + ".md"),
                          "Seed 003 appendix C.1: one noise level with plain Langevin vs the annealed ladder",
                          command, body, a.quick)
    print(f"wall time {wall:.0f} s; written {a.out_dir}/{NAME}.md, .csv, _samples.csv, .png")
    return v


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("single-sigma", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
