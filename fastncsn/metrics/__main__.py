"""``python -m fastncsn.metrics --train-digits-classifier | --train-mnist-classifier``: (re)train a shipped classifier."""
from __future__ import annotations

import time
from typing import Optional

import torch

from .. import flags as F
from .extractors import (DIGITS_CLASSIFIER_PATH, MNIST_CLASSIFIER_PATH, save_digits_classifier,
                         train_digits_classifier, train_mnist_classifier)


def main(argv: Optional[list] = None) -> int:
    parser = F.Parser(prog="python -m fastncsn.metrics", description="Metrics utilities for fastncsn.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--train-digits-classifier", action="store_true",
                       help="train the digits classifier (embedded digits) and write its weights")
    which.add_argument("--train-mnist-classifier", action="store_true",
                       help="train the MNIST classifier (MNIST training split, offline) and write its weights")
    parser.add_argument("--steps", type=F.count, default=3000, help="training steps (batch 128)")
    parser.add_argument("--seed", type=F.seed, default=0, help="seed of the weights and the batches")
    parser.add_argument("--threads", type=F.threads,
                        help="torch threads (default: up to 4 of this machine's)")
    parser.add_argument("--root", type=F.existing_dir,
                        help="MNIST's idx files or mnist.pkl.gz (default: none, the installed data package)")
    parser.add_argument("--output", type=F.output_file("any"),
                        help="where to write the weights (default: the packaged asset)")
    try:
        args = parser.parse_args(argv)
    except F.FlagError:
        return 2
    if not (args.train_digits_classifier or args.train_mnist_classifier):
        parser.print_help()
        return 2
    torch.set_num_threads(args.threads or max(1, min(4, torch.get_num_threads())))
    t0 = time.time()
    if args.train_mnist_classifier:
        model = train_mnist_classifier(steps=args.steps, seed=args.seed, root=args.root, log_every=500)
        model.metadata["train_seconds"] = round(time.time() - t0, 1)
        model.metadata["threads"] = torch.get_num_threads()
        path = save_digits_classifier(model, args.output or MNIST_CLASSIFIER_PATH)
    else:
        model = train_digits_classifier(steps=args.steps, seed=args.seed, log_every=500)
        path = save_digits_classifier(model, args.output or DIGITS_CLASSIFIER_PATH)
    meta = model.metadata
    print(f"held-out accuracy {meta['heldout_accuracy']:.4f} on {meta['num_heldout']} digits, "
          f"train accuracy {meta['train_accuracy']:.4f}; {time.time() - t0:.0f} s on {torch.get_num_threads()} "
          f"thread(s); wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
