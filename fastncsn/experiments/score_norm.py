"""Seed 004 Figure 5: the expected score norm E||s_theta(x, sigma)||_2 against sigma (the 1/sigma law).

For every level of a trained digits model (default: the bundled model) this
measures the mean score norm at

* ``data``: perturbed training digits ``x + sigma_i z`` (where the network was
  trained; the optimal score there has norm about ``sqrt(D)/sigma_i``, D = 784), and
* ``uniform``: inputs drawn uniformly from [0, 1]^D (seed 004 Figure 5's setting),

fits ``log E||s|| = a + b log sigma`` (the law predicts b = -1) and plots both on
log-log axes with ``sqrt(D)/sigma`` and the fitted ``c/sigma`` line.

Writes ``score_norm.md``/``.csv`` (one row per level) and ``score_norm.png``.

Run: ``fastncsn experiment score-norm [--checkpoint PATH] [--n 500] [--quick]``
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from . import common
from .. import flags
from ..images import save_figure

NAME = "score_norm"
COLUMNS = ("level", "sigma", "norm_data", "norm_data_std", "norm_uniform", "norm_uniform_std", "sqrt_d_over_sigma",
           "sigma_norm_data_over_sqrt_d")


@torch.no_grad()
def score_norms(model, x: torch.Tensor, level: int, noise: Optional[torch.Tensor], batch: int = 250) -> np.ndarray:
    """Per-sample ``||s(x + sigma z, level)||_2`` (``[N]``; no noise added when ``noise`` is None)."""
    sigma = float(model.sigmas[level])
    out = []
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch] if noise is None else x[s:s + batch] + sigma * noise[s:s + batch]
        idx = torch.full((xb.shape[0],), level, dtype=torch.long)
        out.append(model(xb, idx).flatten(1).norm(dim=1))
    return torch.cat(out).double().numpy()


def fit_slope(sigmas: np.ndarray, norms: np.ndarray) -> tuple:
    """Least-squares ``(slope, intercept)`` of ``log norm`` against ``log sigma``."""
    b, a = np.polyfit(np.log(sigmas), np.log(norms), 1)
    return float(b), float(a)


def run(checkpoint: Optional[str] = None, n: int = 500, seed: int = 0, out_dir: str = "docs/results",
        quick: bool = False, command: Optional[str] = None) -> list:
    """Measure E||s(x, sigma_i)|| for every level of the model; write the table, CSV and plot.

    Returns one row per level with ``COLUMNS`` (norms are means over ``n`` inputs).
    """
    from ..data import embedded_digits
    if not isinstance(n, int) or n < 1:
        raise common.ExperimentError(f"--n: expected an int >= 1, got {n!r}")
    model = common.load_model(checkpoint).cpu()
    shape = tuple(model.data_shape)
    if shape != (1, 28, 28):
        raise common.ExperimentError(f"--checkpoint: expected a 28x28 digits model, got data shape {shape}")
    D = int(np.prod(shape))
    g = torch.Generator().manual_seed(seed)
    data = embedded_digits()[0]
    x = data[torch.randint(0, data.shape[0], (n,), generator=g)]
    z = torch.randn(x.shape, generator=g)
    u = torch.rand(x.shape, generator=g)
    sig = model.sigmas.double().numpy()
    rows = []
    for i, s in enumerate(sig):
        nd, nu = score_norms(model, x, i, z), score_norms(model, u, i, None)
        rows.append(dict(level=i, sigma=float(s), norm_data=float(nd.mean()), norm_data_std=float(nd.std()),
                         norm_uniform=float(nu.mean()), norm_uniform_std=float(nu.std()),
                         sqrt_d_over_sigma=math.sqrt(D) / s, sigma_norm_data_over_sqrt_d=s * nd.mean() / math.sqrt(D)))
    fits = {k: fit_slope(sig, np.array([r[k] for r in rows])) for k in ("norm_data", "norm_uniform")}
    os.makedirs(out_dir, exist_ok=True)
    common.write_csv(os.path.join(out_dir, NAME + ".csv"), rows, COLUMNS)
    _plot(rows, fits, D, os.path.join(out_dir, NAME + ".png"))
    cfg = model.config
    name = "the bundled digits model" if checkpoint is None else f"`{checkpoint}`"
    body = (f"Seed 004 Figure 5 for {name} ({type(model).__name__}, ngf {cfg.get('ngf')}, L = {sig.size}, "
            f"sigma {sig[0]:.3g} -> {sig[-1]:.3g}). Means over n = {n} inputs per level: `data` = embedded digits "
            f"plus N(0, sigma^2 I) noise, `uniform` = U[0, 1]^{D} (the report's inputs). Fitted log-log slopes "
            f"(the 1/sigma law: -1): data {fits['norm_data'][0]:.3f}, uniform {fits['norm_uniform'][0]:.3f}. "
            f"The last column is sigma E||s|| / sqrt(D), 1 for the exact score of noise-dominated inputs.\n\n"
            + common.markdown_table(rows, COLUMNS) + f"\n\n![score norm against sigma]({NAME}.png)\n")
    common.write_markdown(os.path.join(out_dir, NAME + ".md"), "Expected score norm against sigma (seed 004 Figure 5)",
                          command or "fastncsn experiment score-norm", body, quick)
    return rows


def _plot(rows: list, fits: dict, D: int, path: str) -> None:
    plt = common.pyplot()
    sig = np.array([r["sigma"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for key, label, mk in (("norm_data", "data + noise", "o"), ("norm_uniform", "uniform inputs", "s")):
        v = np.array([r[key] for r in rows])
        ax.plot(sig, v, mk, label=f"{label} (slope {fits[key][0]:.2f})")
        c = float(np.exp(np.mean(np.log(v * sig))))          # best c/sigma through the points
        ax.plot(sig, c / sig, "--", linewidth=1, color=ax.lines[-1].get_color(), label=f"{c:.3g}/sigma")
    ax.plot(sig, math.sqrt(D) / sig, "k:", linewidth=1, label=f"sqrt(D)/sigma, D = {D}")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("sigma"); ax.set_ylabel("E ||s(x, sigma)||")
    ax.set_title("score norm against noise level"); ax.legend(fontsize=8)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("score-norm", __doc__)
    p.add_argument("--checkpoint", type=flags.existing_file,
                   help="model checkpoint (default: the bundled digits model)")
    p.add_argument("--n", type=flags.count, help="inputs per level (default 500; with --quick 8)")
    p.add_argument("--seed", type=flags.seed, default=0, help="seed of the inputs and their noise")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    n = a.n if a.n is not None else (8 if a.quick else 500)
    rows = run(a.checkpoint, n, a.seed, a.out_dir, a.quick, command)
    print(common.markdown_table(rows, COLUMNS))
    print(f"written {a.out_dir}/{NAME}.md, .csv, .png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("score-norm", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
