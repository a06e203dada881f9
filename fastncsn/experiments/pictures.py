"""Pictures of a digits model: sample grid, annealing strip and GIF, nearest training neighbours.

* ``pictures.png`` -- a grid of ``n`` samples (seed 003 Figure 5 style);
* ``pictures_annealing.png`` -- the first 8 samples at the end of every noise level,
  one row per sample, then the final (denoised) sample (seed 003 Figure 4);
* ``pictures_annealing.gif`` -- the same as an animation of the first 16 samples;
* ``pictures_neighbours.png`` -- each of the first ``num_queries`` samples followed by
  its ``k`` nearest embedded digits in pixel L2 distance (seed 003 appendix C.2: is
  the model copying its training images?);
* ``pictures.md``/``.csv`` -- per query: predicted class, nearest neighbours'
  indices, labels and distances, beside the typical leave-one-out nearest-neighbour
  distance between training digits (a copy would sit far below it).

Run: ``fastncsn experiment pictures [--checkpoint PATH] [--n 64] [--quick]``
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from . import common
from .. import flags

NAME = "pictures"
COLUMNS = ("sample", "predicted_class", "nn_indices", "nn_labels", "nn_distances", "nn1_over_train_median")


def nearest_neighbours(queries: torch.Tensor, data: torch.Tensor, k: int) -> tuple:
    """``(distances [Q, k], indices [Q, k])`` of the ``k`` nearest rows of ``data`` in pixel L2."""
    d = torch.cdist(queries.flatten(1).double(), data.flatten(1).double())
    dist, idx = d.topk(k, dim=1, largest=False)
    return dist, idx


def train_nn_median(data: torch.Tensor) -> float:
    """Median over the training digits of the distance to their nearest *other* training digit."""
    d = torch.cdist(data.flatten(1).double(), data.flatten(1).double())
    d.fill_diagonal_(float("inf"))
    return float(d.min(dim=1).values.median())


def run(checkpoint: Optional[str] = None, n: int = 64, steps_per_level: Optional[int] = None,
        eps: Optional[float] = None, seed: int = 0, num_queries: int = 8, k: int = 5,
        out_dir: str = "docs/results", quick: bool = False, progress: bool = False,
        command: Optional[str] = None) -> list:
    """Sample ``n`` digits (model's sampling defaults unless ``steps_per_level``/``eps`` are given) and
    write the grid, annealing strip and GIF, and the nearest-neighbour figure and table.

    Returns one row per query sample with ``COLUMNS``.
    """
    from ..data import embedded_digits
    from ..images import save_gif, save_grid, save_strip
    from ..metrics import class_histogram, load_digits_classifier
    from ..sampling import SamplerSettings, sample
    for nm, v in (("--n", n), ("--num-queries", num_queries), ("--k", k)):
        if not isinstance(v, int) or v < 1:
            raise common.ExperimentError(f"{nm}: expected an int >= 1, got {v!r}")
    model = common.load_model(checkpoint).cpu()
    if tuple(model.data_shape) != (1, 28, 28):
        raise common.ExperimentError(f"--checkpoint: expected a 28x28 digits model, got {tuple(model.data_shape)}")
    settings = SamplerSettings.resolve(model, steps_per_level=steps_per_level, eps=eps)
    T = settings.steps_per_level
    x, snaps = sample(model, n=n, steps_per_level=T, eps=eps, seed=seed, snapshot_every=T, progress=progress,
                      fast=False)
    x, snaps = x.clamp(0, 1), snaps.clamp(0, 1)                 # snaps: [L, n, 1, 28, 28]
    os.makedirs(out_dir, exist_ok=True)
    p = lambda suffix: os.path.join(out_dir, NAME + suffix)    # noqa: E731
    save_grid(x, p(".png"), scale=2)
    m = min(n, 8)
    save_strip(torch.cat([snaps[:, :m], x[None, :m]]), p("_annealing.png"), scale=2)
    save_gif([f[:16] for f in list(snaps) + [x]], p("_annealing.gif"), scale=2)

    data, labels = embedded_digits()
    q = min(num_queries, n)
    k = min(k, data.shape[0])
    dist, idx = nearest_neighbours(x[:q], data, k)
    save_grid(torch.cat([torch.cat([x[i:i + 1], data[idx[i]]]) for i in range(q)]), p("_neighbours.png"),
              nrow=k + 1, scale=2)
    clf = load_digits_classifier()
    with torch.inference_mode():
        pred = clf(x[:q]).argmax(1)
    base = train_nn_median(data)
    rows = [dict(sample=i, predicted_class=int(pred[i]), nn_indices=" ".join(str(int(j)) for j in idx[i]),
                 nn_labels=" ".join(str(int(labels[j])) for j in idx[i]),
                 nn_distances=" ".join(f"{float(v):.3f}" for v in dist[i]),
                 nn1_over_train_median=float(dist[i, 0]) / base) for i in range(q)]
    common.write_csv(p(".csv"), rows, COLUMNS)
    hist = class_histogram(x)
    name = "the bundled digits model" if checkpoint is None else f"`{checkpoint}`"
    body = (f"Samples of {name} ({type(model).__name__}, ngf {model.config.get('ngf')}, L = {snaps.shape[0]}): "
            f"n = {n}, seed {seed}, T = {T} per level, eps = {settings.eps:g} "
            f"({settings.step_convention} convention).\n\n![samples]({NAME}.png)\n\n"
            f"## Annealing (seed 003 Figure 4)\n\nEach row: one sample at the end of noise levels "
            f"0..{snaps.shape[0] - 1}, "
            f"then after the final step.\n\n![annealing]({NAME}_annealing.png)\n\n"
            f"Animation: [{NAME}_annealing.gif]({NAME}_annealing.gif)\n\n"
            f"## Nearest training neighbours (seed 003 appendix C.2)\n\nEach row: a sample, then its {k} nearest "
            f"embedded digits in pixel L2 distance. For scale, the median distance from a training digit to its "
            f"nearest other training digit is {base:.3f}; the last column is the sample's nearest distance over "
            f"that median (near 0 would mean a copy).\n\n![neighbours]({NAME}_neighbours.png)\n\n"
            + common.markdown_table(rows, COLUMNS) + "\n\n## Predicted classes of all samples\n\n"
            + hist.to_markdown() + "\n")
    common.write_markdown(p(".md"), "Samples, annealing and nearest neighbours (seed 003 Figures 4-5, appendix C.2)",
                          command or "fastncsn experiment pictures", body, quick)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = common.experiment_parser("pictures", __doc__)
    p.add_argument("--checkpoint", type=flags.existing_file,
                   help="model checkpoint (default: the bundled digits model)")
    p.add_argument("--n", type=flags.count, help="number of samples (default 64; with --quick 8)")
    p.add_argument("--steps-per-level", type=flags.count, help="T (default: the model's; with --quick 1)")
    p.add_argument("--eps", type=flags.positive, help="step size (default: the model's)")
    p.add_argument("--seed", type=flags.seed, default=0, help="seed of the samples")
    p.add_argument("--num-queries", type=flags.count, default=8, help="samples whose neighbours are shown")
    p.add_argument("--k", type=flags.count, default=5, help="neighbours per sample")
    common.add_common_arguments(p, training=False)
    return p


def _execute(a: argparse.Namespace, command: str) -> list:
    n = a.n if a.n is not None else (8 if a.quick else 64)
    T = a.steps_per_level if a.steps_per_level is not None else (1 if a.quick else None)
    rows = run(a.checkpoint, n, T, a.eps, a.seed, a.num_queries, a.k, a.out_dir, a.quick, not a.quiet, command)
    print(common.markdown_table(rows, COLUMNS))
    print(f"written {a.out_dir}/{NAME}.md, .csv, .png, _annealing.png, _annealing.gif, _neighbours.png")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main("pictures", build_parser(), _execute, argv)


if __name__ == "__main__":
    sys.exit(main())
