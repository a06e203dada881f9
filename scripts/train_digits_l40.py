"""Train, score and export a digits model whose ladder suits one-step-per-level samplers (issue 28 item 4).

    python scripts/train_digits_l40.py train          # the stages below (resumable: rerun after a stop)
    python scripts/train_digits_l40.py export runs/digits_l40/checkpoint_00009000.pt runs/digits_l40/digits_l40.pt
    python scripts/train_digits_l40.py score ASSET    # print the figures again

The bundled digits recipe (scripts/train_bundled_digits.py: CondRefineNetDilated ngf 8, batch 64, sigma_1 15,
the same four stages to 9000 steps, one thread) with one change: L = 40 geometric levels 15 -> 0.01 instead
of 10 (ratio 0.829 between neighbours instead of 0.444), so that consistent annealed sampling with one step
per level spends 40 evaluations (41 with the final denoising step) and each step moves between close levels.
``export`` attaches the sampling defaults below and scores the written file like the bundled model's
script (digits-FID of 500 samples, seed 0, and the class histograms).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_bundled_digits as base  # noqa: E402

RECIPE = dict(base.RECIPE, num_levels=40)
STAGES = [dict(st) for st in base.STAGES]
STAGES[0]["steps"] = 5000
OUT = "runs/digits_l40"
#: consistent annealed sampling, one step per level, final denoising step (eps chosen by a sweep after
#: training; see docs/results/samplers.md)
SAMPLING = dict(sampler="cas", eps=0.75, steps_per_level=1, init="gaussian", denoise=True)


describe = base.describer("train_digits_l40.py", base.DIGITS_DATA, OUT, RECIPE, STAGES)


def main(argv: list) -> int:
    if argv[:1] == ["train"] and len(argv) <= 2:
        base.train(argv[1] if len(argv) == 2 else OUT, RECIPE, STAGES)
    elif argv[:1] == ["export"] and len(argv) == 3:
        base.export(argv[1], argv[2], describe=describe, sampling=SAMPLING)
    elif argv[:1] == ["score"] and len(argv) == 2:
        print(json.dumps(base.score(argv[1])))
    else:
        print("usage: train [OUT] | export CHECKPOINT ASSET | score ASSET", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
