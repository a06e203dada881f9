"""Seed 000 section 7, Figures 13-14: does a larger sigma_1 spread the samples over the classes?

For each sigma_1 (default 1 and 30) a model with a geometric ladder of L = 200 levels
down to sigma_L = 0.01 is trained on the embedded digits and sampled; the shipped
digits classifier labels the samples and :func:`fastncsn.metrics.class_histogram`
gives per-class proportions with 95% Wilson intervals.  The report's finding: with
sigma_1 = 1 no class's interval reaches 10%, with sigma_1 = 30 eight of ten do.

Reduced for the CPU (see ``docs/results.md``): the recipe's small model and short
training (``CPU_DIGITS_RECIPE``), 500 samples, and T = 2 Langevin steps per level
(400 steps in all) where the report used T = 100.  The starting points are
``N(0, sigma_1^2 I)`` (``--init uniform`` for U[0, 1)).  The embedded digits are
nearly balanced (each class 9.7-10.2%), so uniform 1/10 is also the data's histogram.

Writes ``initial_noise.md``/``.csv`` (one row per class and sigma_1), ``initial_noise.png``
(the histograms side by side) and ``initial_noise_samples.png`` (one row block per sigma_1).

Run: ``fastncsn experiment initial-noise [--quick] [--sigma-1s 1,30] [--num-levels 200] ...``
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from . import common
from .. import flags
from ..images import save_figure

NAME = "initial_noise"
#: seed 000 section 7: classes whose 95% interval contains 10%, MNIST
REPORT_COVERING = {1.0: 0, 30.0: 8}
COLUMNS = ("sigma_1", "class", "count", "proportion", "ci_low", "ci_high", "covers_uniform")
SUMMARY_COLUMNS = ("sigma_1", "num_levels", "classes_covering_10pct", "report_classes_covering_10pct",
                   "max_abs_dev_from_uniform", "tv_seeds", "tv_double_T", "digits_fid", *common.SEED_COLUMNS, "sample_n",
                   "steps_per_level", "train_s", "sample_s")
#: CPU default: T per level (the report: 100); 200 levels x 2 steps = 400 network calls per sample
CPU_STEPS_PER_LEVEL = 2


def run(sigma_1s: Sequence[float] = (1.0, 30.0), num_levels: int = 200, sigma_L: float = 0.01,
        schedule: str = "geometric", recipe: Optional[dict] = None, out_dir: str = "docs/results",
        quick: bool = False, classifier: Optional[str] = None, init: str = "gaussian", progress: bool = False,
        command: Optional[str] = None, runs_dir: Optional[str] = None, sample_seeds: Sequence[int] = (0, 1, 2),
        data: str = "digits", mixing_check: bool = False) -> tuple:
    """Train and sample one model per ``sigma_1``; class histograms, table, CSV and plot.

    Args:
        sigma_1s: the largest noise levels to compare (each > ``sigma_L``).
        num_levels, sigma_L, schedule: the rest of the ladder (L >= 2).
        recipe: overrides of ``CPU_DIGITS_RECIPE`` (``QUICK_RECIPE`` when ``quick``);
            ``steps_per_level`` defaults to ``CPU_STEPS_PER_LEVEL`` here.
        classifier: digits classifier weights (labels and FID; default: the shipped one).
        init: ``"gaussian"`` (N(0, sigma_1^2)) or ``"uniform"`` (U[0, 1)) starting points.
        sample_seeds: sampling seeds (>= 2): the histograms count the samples of all of them; digits-FID is
            the mean over them with its intervals (:func:`fastncsn.experiments.common.sample_seeds`).
        data: ``"digits"`` or ``"mnist"`` (MNIST-FID and the MNIST classifier's labels; outputs
            ``initial_noise_mnist.*``).
        mixing_check: also draw the first seed's samples with 2T steps per level: ``tv_double_T`` (total
            variation between their class histogram and the second seed's at T) against ``tv_seeds`` (the
            first and second seeds at T, the sampling noise): chains that have mixed in the class
            proportions give ``tv_double_T`` about ``tv_seeds``.

    Returns:
        ``(rows, summary)``: one row per (sigma_1, class) with ``COLUMNS`` and one summary
        row per sigma_1 with ``SUMMARY_COLUMNS``.
    """
    from ..images import save_grid
    from ..metrics import class_histogram
    sigma_1s = [float(s) for s in sigma_1s]
    if not sigma_1s:
        raise common.ExperimentError("--sigma-1s: expected at least one value")
    common.check_schedules([schedule])
    for s1 in sigma_1s:
        common.check_levels(num_levels, s1, sigma_L)
    if init not in ("gaussian", "uniform"):
        raise common.ExperimentError(f"--init: expected gaussian or uniform, got {init!r}")
    over = dict(recipe or {})
    if not quick:
        over.setdefault("steps_per_level", CPU_STEPS_PER_LEVEL)
    r = common.resolve_recipe(quick, over)
    data = common.check_data(data)
    key, name = f"{data}_fid", common.output_name(NAME, data)
    net = common.classifier_module(classifier, data)
    parts = common.fid_parts(classifier, data)
    os.makedirs(out_dir, exist_ok=True)
    rows, summary, hists, grids = [], [], {}, []
    for s1 in sigma_1s:
        run_dir = os.path.join(runs_dir or os.path.join(out_dir, "runs"),
                               common.run_name(schedule, num_levels, s1, sigma_L, r, data))
        model, t_train = common.train_digits(run_dir, schedule, num_levels, s1, sigma_L, r, progress, data)
        fields, sets, t_sample = common.sample_seeds(model, r, sample_seeds, parts, progress, init=init, data=data,
                                                     cache_dir=run_dir)
        tv_double = None
        if mixing_check:
            x2, t2 = common.sample_digits(model, dict(r, seed=int(sample_seeds[0]),
                                                      steps_per_level=2 * r["steps_per_level"]), progress, init=init,
                                         cache_dir=run_dir)
            tv_double, t_sample = _tv(x2, sets[1], net), t_sample + t2
        x = torch.cat(sets)                              # the histogram: the samples of every seed
        h = class_histogram(x, classifier=net)
        hists[s1] = h
        grids.append(sets[0][:20])
        cover = h.covers(0.1)
        for k in range(h.num_classes):
            rows.append(dict(sigma_1=s1, **{"class": k}, count=int(h.counts[k]), proportion=float(h.proportions[k]),
                             ci_low=float(h.lower[k]), ci_high=float(h.upper[k]), covers_uniform=bool(cover[k])))
        summary.append(dict(sigma_1=s1, num_levels=num_levels, classes_covering_10pct=int(cover.sum()),
                            report_classes_covering_10pct=REPORT_COVERING.get(s1),
                            max_abs_dev_from_uniform=float(np.abs(h.proportions - 0.1).max()),
                            tv_seeds=_tv(sets[0], sets[1], net), tv_double_T=tv_double,
                            **fields, sample_n=int(sets[0].shape[0]), steps_per_level=r["steps_per_level"],
                            train_s=round(t_train, 1),
                            sample_s=round(t_sample, 1)))
        if progress:
            print(f"sigma_1 = {s1:g}: {int(cover.sum())} of 10 class intervals contain 10%")

    cols = common.metric_columns(SUMMARY_COLUMNS, data)
    common.write_csv(os.path.join(out_dir, name + ".csv"), rows, COLUMNS)
    common.write_csv(os.path.join(out_dir, name + "_summary.csv"), summary, cols)
    _plot(hists, os.path.join(out_dir, name + ".png"))
    save_grid(torch.cat(grids), os.path.join(out_dir, name + "_samples.png"), nrow=grids[0].shape[0], scale=2)
    what, metric = common.DATA_TEXT[data]
    body = (f"Seed 000 section 7 (Figures 13-14) on {what}: {schedule} ladder, L = {num_levels}, "
            f"sigma_L = {sigma_L:g}, starting points {'N(0, sigma_1^2 I)' if init == 'gaussian' else 'U[0, 1)'}. "
            f"Recipe: {common.recipe_text(r)}. Sampling seeds {', '.join(map(str, sample_seeds))} "
            f"({r['sample_n']} samples each): the histograms count all of them, {key} is the mean over the "
            f"seeds ({key}_seed_low / high: Student-t 95% interval over the seeds; {key}_boot_low / "
            f"high: the bootstrap's 95% spread of that mean; {metric}). Labels: the shipped {data} classifier; "
            f"intervals: 95% Wilson, per class. Mixing: tv_seeds is the total variation between the class "
            f"histograms of the first two seeds (sampling noise alone); tv_double_T (with --mixing-check) the "
            f"first seed drawn with 2T steps per level against the second at T -- about tv_seeds when the chains "
            f"have mixed in the class proportions, larger when T was too short.\n\n"
            + common.markdown_table(summary, cols) + "\n\n"
            + _class_table(hists) + f"\n\n![class histograms]({name}.png)\n\n"
            f"Samples (the first 20 of each sigma_1, in table order):\n\n![samples]({name}_samples.png)\n")
    common.write_markdown(os.path.join(out_dir, name + ".md"), "Initial noise and class coverage (seed 000 section 7)",
                          command or "fastncsn experiment initial-noise", body, quick)
    return rows, summary


def _tv(a: torch.Tensor, b: torch.Tensor, net) -> float:
    """Total variation distance between the predicted-class histograms of two sample sets (in [0, 1])."""
    from ..metrics import class_histogram
    ha, hb = (np.asarray(class_histogram(x, classifier=net).proportions, dtype=np.float64) for x in (a, b))
    return float(0.5 * np.abs(ha - hb).sum())


def _class_table(hists: dict) -> str:
    keys = list(hists)
    lines = ["| class | " + " | ".join(f"sigma_1 = {s:g}: proportion [95% CI]" for s in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for k in range(10):
        cells = [f"{h.proportions[k]:.3f} [{h.lower[k]:.3f}, {h.upper[k]:.3f}]" + (" *" if h.covers(0.1)[k] else "")
                 for h in hists.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n`*`: the interval contains the uniform 10%."


def _plot(hists: dict, path: str) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, len(hists), figsize=(5 * len(hists), 3.6), squeeze=False, sharey=True)
    for ax, (s1, h) in zip(axes[0], hists.items()):
        err = np.stack([h.proportions - h.lower, h.upper - h.proportions])
        ax.bar(np.arange(10), h.proportions, yerr=err, capsize=3, color="#4c72b0", label="95% Wilson interval")
        ax.axhline(0.1, color="#c44e52", linestyle="--", linewidth=1, label="uniform 10%")
        ax.set_xticks(np.arange(10))
        ax.set_xlabel("predicted class")
        ax.set_title(f"sigma_1 = {s1:g} (n = {h.n}, {int(h.covers(0.1).sum())}/10 cover 10%)")
    axes[0][0].set_ylabel("proportion of samples")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    from ..schedules import SCHEDULES
    p = common.experiment_parser("initial-noise", __doc__)
    p.add_argument("--sigma-1s", type=flags.listing(flags.noise_level, "noise levels"), default="1,30",
                   help="comma-separated largest noise levels (level 0), one model each")
    p.add_argument("--num-levels", type=flags.integer(2), help="L (default 200; with --quick 20)")
    p.add_argument("--sigma-L", type=flags.noise_level, default=0.01, help="smallest noise level (level L-1)")
    p.add_argument("--schedule", default="geometric", choices=SCHEDULES, help="the noise ladder")
    p.add_argument("--init", default="gaussian", choices=["gaussian", "uniform"],
                   help="starting points: gaussian N(0, sigma_1^2) or uniform U[0, 1)")
    p.add_argument("--classifier", type=flags.existing_file,
                   help="digits classifier weights (default: the shipped one)")
    p.add_argument("--mixing-check", action="store_true",
                   help="also draw the first seed with 2T steps per level (tv_double_T: have the chains mixed?)")
    common.add_common_arguments(p)
    common.add_data_argument(p)
    common.add_sample_seeds_argument(p)
    return p


def _execute(a: argparse.Namespace, command: str) -> tuple:
    L = a.num_levels if a.num_levels is not None else (20 if a.quick else 200)
    rows, summary = run(a.sigma_1s, L, a.sigma_L, a.schedule,
                        recipe=common.recipe_overrides(a), out_dir=a.out_dir, quick=a.quick, classifier=a.classifier,
                        init=a.init, progress=not a.quiet, command=command, runs_dir=a.runs_dir,
                        sample_seeds=common.resolve_sample_seeds(a), data=a.data, mixing_check=a.mixing_check)
    print(common.markdown_table(summary, common.metric_columns(SUMMARY_COLUMNS, a.data)))
    print(f"written {a.out_dir}/{common.output_name(NAME, a.data)}.md, .csv, _summary.csv, .png, _samples.png")
    return rows, summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("initial-noise", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
