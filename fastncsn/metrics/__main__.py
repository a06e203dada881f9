"""``python -m fastncsn.metrics --train-digits-classifier``: (re)train the shipped digits classifier."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from .extractors import DIGITS_CLASSIFIER_PATH, save_digits_classifier, train_digits_classifier


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastncsn.metrics",
                                     description="Metrics utilities for fastncsn.")
    parser.add_argument("--train-digits-classifier", action="store_true",
                        help="train the digits classifier and write its weights")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(DIGITS_CLASSIFIER_PATH),
                        help="where to write the weights (default: the packaged asset)")
    args = parser.parse_args(argv)
    if not args.train_digits_classifier:
        parser.print_help()
        return 2
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    model = train_digits_classifier(steps=args.steps, seed=args.seed, log_every=500)
    path = save_digits_classifier(model, args.output)
    meta = model.metadata
    print(f"held-out accuracy {meta['heldout_accuracy']:.4f} on {meta['num_heldout']} digits, "
          f"train accuracy {meta['train_accuracy']:.4f}; wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
