"""The MNIST-FID floor: real held-out MNIST digits scored against the MNIST training statistics.

    python scripts/mnist_fid_floor.py            # writes docs/results/mnist_fid_floor.csv and .md

An MNIST-FID of ``n`` generated samples can be no better than that of ``n`` real digits the model never saw:
the finite-sample bias of the Frechet distance (covariance estimated from ``n`` images) and the test set's
own difference from the training set. For each size of ``--sizes`` (default 500 and 1000, the sample sizes
the MNIST experiments use) and each draw ``d`` of ``--draws`` (default 3), ``n`` of the 10,000 MNIST test
digits are drawn without replacement (``numpy.random.default_rng(d)``) and scored with :func:`mnist_fid`
(the shipped MNIST classifier's 64-d features) against the statistics of the 60,000 training digits; the
whole test set is scored too. MNIST from the installed data package (or ``--root``), offline.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastncsn import flags as F  # noqa: E402
from fastncsn.data import mnist_tensor  # noqa: E402
from fastncsn.files import atomic_write_text  # noqa: E402
from fastncsn.metrics.extractors import MNIST_CLASSIFIER_PATH, shipped_mnist_classifier  # noqa: E402
from fastncsn.metrics.fid import compute_feature_stats, fid  # noqa: E402
from fastncsn.metrics.fid_run import file_sha256  # noqa: E402

FIELDS = ("n", "draw", "mnist_fid", "ref_n", "test_pool", "classifier_sha256", "classifier_test_accuracy", "date")


def floor_rows(sizes, draws: int, root=None) -> list:
    """One row per (size, draw) and one for the whole test set (``draw`` = ``all``)."""
    test_x, _ = mnist_tensor(False, root)
    for n in sizes:
        if n > test_x.shape[0]:
            raise ValueError(f"--sizes: {n} is more than the {test_x.shape[0]} test digits")
    net = shipped_mnist_classifier("cpu")
    train_x, _ = mnist_tensor(True, root)
    ref = compute_feature_stats(train_x, net.features, 512)
    ref = (ref.mean(), ref.cov())
    common = dict(ref_n=int(train_x.shape[0]), test_pool=int(test_x.shape[0]),
                  classifier_sha256=file_sha256(MNIST_CLASSIFIER_PATH)[:16],
                  classifier_test_accuracy=round(float(net.metadata["test_accuracy"]), 4),
                  date=datetime.date.today().isoformat())
    rows = []
    for n in sizes:
        for d in range(draws):
            idx = np.random.default_rng(d).permutation(test_x.shape[0])[:n]
            value = fid(test_x[torch.from_numpy(idx)], ref, net.features, 512)
            rows.append(dict(n=n, draw=d, mnist_fid=round(value, 4), **common))
    rows.append(dict(n=int(test_x.shape[0]), draw="all", mnist_fid=round(fid(test_x, ref, net.features, 512), 4),
                     **common))
    return rows


def markdown(rows, command: str, seconds: float) -> str:
    lines = ["# MNIST-FID floor: real held-out digits against the training statistics", "",
             f"Written by `{command}` ({seconds:.0f} s on {torch.get_num_threads()} thread(s), "
             f"{rows[0]['date']}); CSV: [mnist_fid_floor.csv](mnist_fid_floor.csv).", "",
             f"MNIST-FID (the shipped MNIST classifier's 64-d features; its test accuracy "
             f"{rows[0]['classifier_test_accuracy']:.4f}) of n of the {rows[0]['test_pool']} MNIST test digits, drawn "
             f"without replacement, against the statistics of the {rows[0]['ref_n']} training digits. A generated "
             "set of n samples cannot be expected to score below the floor at its n.", "",
             "| n | draws | MNIST-FID per draw | mean | sd |", "|---|---|---|---|---|"]
    sizes = list(dict.fromkeys(r["n"] for r in rows if r["draw"] != "all"))
    for n in sizes:
        vals = [r["mnist_fid"] for r in rows if r["n"] == n and r["draw"] != "all"]
        sd = f"{statistics.stdev(vals):.2f}" if len(vals) > 1 else "-"
        lines.append(f"| {n} | {len(vals)} | {', '.join(f'{v:.2f}' for v in vals)} | "
                     f"{statistics.mean(vals):.2f} | {sd} |")
    full = [r for r in rows if r["draw"] == "all"][0]
    lines.append(f"| {full['n']} (all) | 1 | {full['mnist_fid']:.2f} | {full['mnist_fid']:.2f} | - |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = F.Parser(prog="python scripts/mnist_fid_floor.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=F.listing(F.count, "ints >= 1"), default=[500, 1000], help="sample sizes n, comma-separated")
    p.add_argument("--draws", type=F.count, default=3, help="draws of n test digits per size")
    p.add_argument("--root", type=F.existing_dir, help="MNIST's idx files or mnist.pkl.gz (default: the data package)")
    p.add_argument("--out-dir", type=F.output_dir, default="docs/results",
                   help="where mnist_fid_floor.csv and .md are written")
    p.add_argument("--threads", type=F.threads, default=1, help="torch threads")
    try:
        a = p.parse_args(argv)
    except F.FlagError:
        return 2
    torch.set_num_threads(a.threads)
    t0 = time.time()
    rows = floor_rows(a.sizes, a.draws, a.root)
    os.makedirs(a.out_dir, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(buf.getvalue(), os.path.join(a.out_dir, "mnist_fid_floor.csv"))
    command = "python scripts/mnist_fid_floor.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    md = markdown(rows, command, time.time() - t0)
    atomic_write_text(md, os.path.join(a.out_dir, "mnist_fid_floor.md"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
