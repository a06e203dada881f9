"""Seed 000 Figures 2-4: which noise schedule gives the best samples?

One CondRefineNetDilated per schedule (geometric, linear, cosine, squared cosine,
sigmoid; L levels from sigma_1 to sigma_L, rescaled onto those endpoints) is
trained with DSM on the embedded digits and sampled with annealed Langevin
dynamics; the samples are scored with digits-FID (FID in the 64-d feature space
of the shipped digits classifier, against all 1797 embedded digits).  Besides the
table (``schedules_study.md``/``.csv``) it writes a bar plot of the FIDs beside the
report's MNIST FIDs (``schedules_study.png``) and one row of samples per schedule
(``schedules_study_samples.png``).  The FID of ``sample_n`` real digits is printed
as the floor that a perfect model would reach with this many samples.

Trained models are kept in ``<runs-dir>/<schedule>_L..`` (default
``runs/experiments``) and reused (or resumed) by a later run with the same settings.

Run: ``fastncsn experiment schedules-study [--quick] [--schedules geometric,sigmoid] [--steps N] ...``
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from . import common
from .. import flags
from ..images import save_figure
from ..schedules import SCHEDULES

NAME = "schedules_study"
#: seed 000 Figure 2 (MNIST, Inception FID, L = 10, sigma 1 -> 0.01, T = 100, eps = 2e-5)
REPORT_MNIST_FID = {"geometric": 43.33, "linear": 70.97, "cosine": 130.70, "squared_cosine": 40.44, "sigmoid": 32.46}
COLUMNS = ("schedule", "digits_fid", *common.SEED_COLUMNS, "report_mnist_fid", "rank", "report_rank", "final_loss", "train_steps",
           "sample_n", "train_s", "sample_s")


def _ranks(values: dict) -> dict:
    order = sorted(values, key=lambda k: values[k])
    return {k: order.index(k) + 1 for k in values}


def spearman(a: dict, b: dict) -> Optional[float]:
    """Spearman rank correlation of two ``{key: value}`` maps over their common keys (None if < 3 keys)."""
    keys = [k for k in a if k in b]
    if len(keys) < 3:
        return None
    ra, rb = _ranks({k: a[k] for k in keys}), _ranks({k: b[k] for k in keys})
    n = len(keys)
    d2 = sum((ra[k] - rb[k]) ** 2 for k in keys)
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def run(schedules: Sequence[str] = SCHEDULES, num_levels: int = 10, sigma_1: float = 1.0, sigma_L: float = 0.01,
        recipe: Optional[dict] = None, out_dir: str = "docs/results", quick: bool = False,
        classifier: Optional[str] = None, progress: bool = False, command: Optional[str] = None,
        runs_dir: Optional[str] = None, sample_seeds: Sequence[int] = (0, 1, 2), data: str = "digits") -> list:
    """Train, sample and score one model per schedule; write the table, CSV and plots.

    Args:
        schedules: names from ``fastncsn.schedules.SCHEDULES``.
        num_levels, sigma_1, sigma_L: the ladder (L >= 2, sigma_1 > sigma_L > 0).
        recipe: training/sampling recipe (default ``CPU_DIGITS_RECIPE``, or ``QUICK_RECIPE`` when ``quick``).
        classifier: digits classifier weights for the FID (default: the shipped one).
        runs_dir: where the trained models are kept and reused (default ``<out_dir>/runs``).
        data: ``"digits"`` or ``"mnist"`` (the FID columns are then ``mnist_fid...``: MNIST-FID).
        sample_seeds: sampling seeds (>= 2); ``digits_fid`` is their mean, with the Student-t interval over
            them and the bootstrap spread over the samples (:func:`fastncsn.experiments.common.sample_seeds`).

    Returns:
        one row per schedule with the keys of :data:`COLUMNS` (``common.metric_columns(COLUMNS, data)``).
    """
    from ..images import save_grid
    schedules = common.check_schedules(schedules)
    data = common.check_data(data)
    key, cols, name = f"{data}_fid", common.metric_columns(COLUMNS, data), common.output_name(NAME, data)
    common.check_levels(num_levels, sigma_1, sigma_L)
    r = common.resolve_recipe(quick, recipe)
    parts = common.fid_parts(classifier, data)     # fails now, not after an hour of training
    os.makedirs(out_dir, exist_ok=True)
    rows, grids = [], []
    for kind in schedules:
        run_dir = os.path.join(runs_dir or os.path.join(out_dir, "runs"),
                               common.run_name(kind, num_levels, sigma_1, sigma_L, r, data))
        model, t_train = common.train_digits(run_dir, kind, num_levels, sigma_1, sigma_L, r, progress, data)
        fields, sets, t_sample = common.sample_seeds(model, r, sample_seeds, parts, progress, data=data,
                                                     cache_dir=run_dir)
        fid = fields[key]
        grids.append(sets[0][:10])
        rows.append(dict(schedule=kind, **fields, report_mnist_fid=REPORT_MNIST_FID.get(kind),
                         final_loss=common.last_loss(run_dir), train_steps=getattr(model, "train_step", r["steps"]),
                         sample_n=int(sets[0].shape[0]), train_s=round(t_train, 1), sample_s=round(t_sample, 1)))
        if progress:
            print(f"{kind}: {data}-FID {fid:.2f} ({t_train:.0f} s training, {t_sample:.0f} s sampling)")
    ours = _ranks({row["schedule"]: row[key] for row in rows})
    theirs = _ranks({k: v for k, v in REPORT_MNIST_FID.items() if k in ours})
    for row in rows:
        row["rank"], row["report_rank"] = ours[row["schedule"]], theirs.get(row["schedule"])
    # the floor: FID of sample_n real digits, one draw per sampling seed (a perfect model reaches about this);
    # MNIST: held-out test digits against the training statistics
    from ..data import embedded_digits, mnist_tensor
    from ..metrics.intervals import fid_intervals
    real = embedded_digits()[0] if data == "digits" else mnist_tensor(False)[0]
    draws = [real[torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(int(s)))[:r["sample_n"]]]
             for s in sample_seeds]
    fl = fid_intervals(draws, data, extractor=parts[0], reference=parts[1], n_boot=20)
    floor = fl["fid_mean"]

    common.write_csv(os.path.join(out_dir, name + ".csv"), rows, cols)
    _plot(rows, floor, os.path.join(out_dir, name + ".png"), data)
    save_grid(torch.cat(grids), os.path.join(out_dir, name + "_samples.png"), nrow=10, scale=2)
    rho = spearman({row["schedule"]: row[key] for row in rows}, REPORT_MNIST_FID)
    what, metric = common.DATA_TEXT[data]
    body = (f"Seed 000 Figures 2-4 on {what}. L = {num_levels}, sigma {sigma_1:g} -> {sigma_L:g} "
            f"(ladders rescaled onto these endpoints). Recipe: {common.recipe_text(r)}.\n\n"
            f"{metric} (not comparable in scale with the report's Inception FIDs on MNIST; compare orderings). "
            f"Rank 1 = best. {key}: the mean over the sampling seeds {', '.join(map(str, sample_seeds))}; "
            f"{key}_seed_low / high: its Student-t 95% interval over the seeds; {key}_boot_low / high: "
            f"the 95% spread of that mean from resampling the samples alone (bootstrap); {key}_seeds: "
            f"the seeds' FIDs. {r['sample_n']} real {'held-out ' if data == 'mnist' else ''}digits score "
            f"{floor:.3g} (mean of {len(draws)} draws: "
            f"{fl['fid_seeds']}; the floor at this sample size).\n\n"
            + common.markdown_table(rows, cols) +
            f"\n\nSpearman rank correlation with the report's MNIST ordering: {common.fmt(rho, 3)}.\n\n"
            f"![{data}-FID per schedule]({name}.png)\n\nSamples (one row per schedule, in table order):\n\n"
            f"![samples]({name}_samples.png)\n")
    common.write_markdown(os.path.join(out_dir, name + ".md"), f"Noise schedules and {data}-FID (seed 000 Figures 2-4)",
                          command or "fastncsn experiment schedules-study", body, quick)
    return rows


def _plot(rows: list, floor: float, path: str, data: str = "digits") -> None:
    plt = common.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [row["schedule"] for row in rows]
    key = f"{data}_fid"
    fids = [row[key] for row in rows]
    err = [[f - (row[key + "_seed_low"] if row.get(key + "_seed_low") is not None else f) for f, row in
            zip(fids, rows)], [(row[key + "_seed_high"] or f) - f for f, row in zip(fids, rows)]]
    a.bar(names, fids, yerr=err, capsize=3, color="#4c72b0")
    a.axhline(floor, color="#c44e52", linestyle="--", linewidth=1, label="real digits (same n)")
    a.set_ylabel(f"{data}-FID (lower is better)")
    a.set_title("this package, " + ("embedded digits" if data == "digits" else "MNIST")); a.legend(fontsize=8)
    rep = [(n, REPORT_MNIST_FID[n]) for n in names if n in REPORT_MNIST_FID]
    b.bar([n for n, _ in rep], [v for _, v in rep], color="#8c8c8c")
    b.set_ylabel("Inception FID"); b.set_title("seed 000 Figure 2 (MNIST)")
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout(); save_figure(fig, path, dpi=110); plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("schedules-study", __doc__)
    p.add_argument("--schedules", type=flags.listing(None, "schedules", SCHEDULES), default=",".join(SCHEDULES),
                   help="comma-separated schedules (default: all five)")
    p.add_argument("--num-levels", type=flags.integer(2), default=10, help="L, noise levels per model")
    p.add_argument("--sigma-1", type=flags.noise_level, default=1.0, help="largest noise level (level 0)")
    p.add_argument("--sigma-L", type=flags.noise_level, default=0.01, help="smallest noise level (level L-1)")
    p.add_argument("--classifier", type=flags.existing_file,
                   help="digits classifier weights for the FID (default: the shipped one)")
    common.add_common_arguments(p)
    common.add_data_argument(p)
    common.add_sample_seeds_argument(p)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    rows = run(a.schedules, a.num_levels, a.sigma_1, a.sigma_L,
               recipe=common.recipe_overrides(a), out_dir=a.out_dir,
               quick=a.quick, classifier=a.classifier, progress=not a.quiet, command=command,
               runs_dir=a.runs_dir, sample_seeds=common.resolve_sample_seeds(a), data=a.data)
    print(common.markdown_table(rows, common.metric_columns(COLUMNS, a.data)))
    print(f"written {a.out_dir}/{common.output_name(NAME, a.data)}.md, .csv, .png, _samples.png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("schedules-study", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
