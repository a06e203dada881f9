#!/usr/bin/env python
"""Kernel-time breakdown of one CUDA-graph replay of a sampler step (the perf lab's ``profile`` stage).

Builds the graph sampler that ``fastncsn.sample`` runs (``GraphSampler``, fused ops, backend
``auto``) for an NCSN v1 network with random weights -- default the MNIST config, batch 1000,
bf16 -- with one level and one step per level captured as one graph, replays it once untimed,
then profiles ``--replays`` replays with ``torch.profiler`` (CUDA activity: the kernels inside
the graph) and writes the top ``--top`` kernels by device time, the kernel count and the device
time per step to ``--out`` (and stdout).

    python scripts/profile_step.py --out $OUT/profile.txt                 # MNIST b1000 bf16, top 15
    python scripts/profile_step.py --config cifar10 --batch 100 --precision fp32
    python3 scripts/profile_step.py --variant all        # a pending variant (benchmarks/variants.py), bf16

``--variant`` profiles one of the pending variants of the bf16 sampler (``benchmarks/variants.py``: the
sampler's ``layout`` / ``weights`` and the model's fused pool / glue switches) instead of the defaults.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.variants import VARIANTS, apply_switches, settings  # noqa: E402

CONFIGS = {"mnist": dict(image_size=28, channels=1, ngf=64), "cifar10": dict(image_size=32, channels=3, ngf=128)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="mnist")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--backend", choices=("auto", "triton", "cuda", "torch"), default="auto",
                    help="backend of the CIN++ layers and the Langevin step (default: %(default)s)")
    ap.add_argument("--levels", type=int, default=10, help="noise levels of the network (default: %(default)s)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                    help="a pending variant of the bf16 sampler (benchmarks/variants.py; default: the defaults)")
    ap.add_argument("--replays", type=int, default=1, help="graph replays profiled (default: %(default)s)")
    ap.add_argument("--top", type=int, default=15, help="kernels listed (default: %(default)s)")
    ap.add_argument("--out", default=None, help="file for the table (default: stdout only)")
    args = ap.parse_args(argv)
    if args.variant is not None and args.precision != "bf16":
        ap.error(f"--variant: the variants are of the bf16 sampler, got --precision {args.precision}")
    for name in ("batch", "levels", "replays", "top"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")
    return args


def profile(args) -> str:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from fastncsn.models import CondRefineNetDilated
    from fastncsn.sampling import GraphSampler

    torch.manual_seed(0)
    model = CondRefineNetDilated(num_levels=args.levels, backend=args.backend, **CONFIGS[args.config]).cuda().eval()
    cfg = CONFIGS[args.config]
    x0 = torch.rand(args.batch, cfg["channels"], cfg["image_size"], cfg["image_size"], device="cuda")
    opts = settings(args.variant)
    apply_switches(model, opts["fused_pool"], opts["fused_glue"])
    sampler = GraphSampler(model, args.batch, sigmas=model.sigmas[-1:], model_levels=[args.levels - 1],
                           steps_per_level=1, precision=args.precision, backend=args.backend, capture="step",
                           layout=opts["layout"], weights=opts["weights"])
    sampler.sample(args.batch, seed=0, x0=x0)         # build, warm up, capture, one replay
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.replays):
            sampler.sample(args.batch, seed=0, x0=x0)
        torch.cuda.synchronize()
    events = prof.key_averages()
    attr = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    sort = "self_cuda_time_total" if attr == "self_cuda_time_total" else "self_device_time_total"
    total_us = sum(getattr(e, attr) for e in events)
    launches = sum(e.count for e in events if getattr(e, attr) > 0)
    head = (f"{torch.cuda.get_device_name()}  torch {torch.__version__}  config={args.config} batch={args.batch} "
            f"precision={args.precision} backend={args.backend} (step {sampler.step_backend}) "
            f"variant={args.variant or 'defaults'} {opts} "
            f"replays={args.replays}\n"
            f"device time per replay (sample() call: input copy, one graph step, output copy): "
            f"{total_us / 1e3 / args.replays:.3f} ms in {launches // args.replays} kernels/copies\n")
    return head + events.table(sort_by=sort, row_limit=args.top, max_name_column_width=90)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("profile_step.py: needs a CUDA GPU", file=sys.stderr)
        return 2
    text = profile(args)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
