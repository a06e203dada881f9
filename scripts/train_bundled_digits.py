"""Train, score and export the bundled digits model, fastncsn/assets/digits_ncsn.pt.

The bundled model is made with exactly these commands, on a 2-core CPU (one thread per run):

    python scripts/train_bundled_digits.py train                       # fastncsn train ... (prints it)
    python scripts/train_bundled_digits.py export runs/bundled/checkpoint_XXXXXXXX.pt fastncsn/assets/digits_ncsn.pt

``train`` runs ``fastncsn train`` with the recipe below (checkpoints every 500 steps, resumable:
rerun the same command after an interruption). ``export`` takes the EMA weights of one of its
checkpoints, attaches the sampling defaults below, writes the asset, then *scores the written
file* with the project's own metrics and stores the figures in its metadata (``extra["metrics"]``):
digits-FID of 500 samples against all 1797 embedded digits (the shipped digits classifier's
features), the class histogram of the first 100 and of all 500 samples (classifier labels), and
the seconds that took. ``python scripts/train_bundled_digits.py score ASSET`` prints them again.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch

from fastncsn.training.recipes import DATASET_SAMPLING

#: the training run (``fastncsn train`` flags); see docs/results.md "The bundled model"
#: (CondRefineNetDilated, 10 levels geometric sigma_1 -> 0.01, the CPU digits recipe of
#: fastncsn.training.recipes with checkpoints kept every 500 steps and sigma_1 = 15, the largest distance
#: between two training digits (NCSNv2's first technique); the asset is the checkpoint named in its
#: metadata -- step 3500 scored digits-FID 206.7 (500 samples; 3000: 223.5, 4000: 228.0) where the best
#: checkpoint of the sigma_1 = 1 ladder had scored 296.3, see docs/results.md)
RECIPE = dict(data="digits", steps=20000, ngf=8, lr=2e-3, ema=0.99, sigma_1=15.0, checkpoint_every=500, keep_last=40,
              seed=0)
#: sampling defaults stored with the asset (what ``fastncsn sample`` uses unless told otherwise): the
#: digits defaults every ``fastncsn train --data digits`` checkpoint carries
SAMPLING = DATASET_SAMPLING["digits"]
#: what ``export`` measures
SCORE_N, CLASS_N, SCORE_SEED = 500, 100, 0


def train_command(out: str = "runs/bundled") -> list[str]:
    cmd = ["fastncsn", "train", "--out", out]
    for k, v in RECIPE.items():
        cmd += ["--" + k.replace("_", "-"), f"{v:g}" if isinstance(v, float) else str(v)]
    return cmd


def train(out: str = "runs/bundled") -> None:
    cmd = train_command(out)
    print("OMP_NUM_THREADS=1 " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def score(path: str, n: int = SCORE_N, seed: int = SCORE_SEED) -> dict:
    """digits-FID of ``n`` samples drawn with the asset's own defaults, and class histograms."""
    import fastncsn
    from fastncsn.metrics.extractors import digits_fid, shipped_digits_classifier
    t0 = time.time()
    x = fastncsn.sample(path, n=n, seed=seed, progress=False)
    sample_s = time.time() - t0
    with torch.no_grad():
        labels = shipped_digits_classifier()(x.clamp(0, 1)).argmax(1)
    first = torch.bincount(labels[:CLASS_N], minlength=10).tolist()
    return {
        f"digits_fid_{n}": round(digits_fid(x), 1),
        f"classes_first_{CLASS_N}": first,
        f"max_class_fraction_first_{CLASS_N}": max(first) / CLASS_N,
        f"classes_all_{n}": torch.bincount(labels, minlength=10).tolist(),
        "seed": seed,
        "sample_s": round(sample_s, 1),
        "threads": torch.get_num_threads(),
        "measured": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}",
    }


def export(src: str, dst: str) -> dict:
    import fastncsn
    ck = torch.load(src, map_location="cpu", weights_only=False)
    model = fastncsn.load(src)                      # the EMA weights
    model.sampling_defaults = dict(SAMPLING)
    extra = {
        "trained_by": "OMP_NUM_THREADS=1 " + " ".join(train_command()) + f" (checkpoint of step {ck['step']}), "
                      "then python scripts/train_bundled_digits.py export (EMA weights)",
        "data": "embedded digits (sklearn load_digits, 1797 images, 28x28)",
        "recipe": dict(RECIPE),
    }
    fastncsn.save(model, dst, step=ck["step"], extra=extra)
    extra["metrics"] = score(dst)
    fastncsn.save(model, dst, step=ck["step"], extra=extra)
    print(json.dumps(extra["metrics"]))
    return extra["metrics"]


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "train":
        train(*sys.argv[2:3])
    elif len(sys.argv) == 4 and sys.argv[1] == "export":
        export(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "score":
        print(json.dumps(score(sys.argv[2])))
    else:
        raise SystemExit("usage: train [OUT] | export CHECKPOINT ASSET | score ASSET")
