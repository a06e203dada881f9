#!/usr/bin/env python
"""Why long runs on LEARNED scores overshoot seed 004 Table 1's weight: the learned score's error per level.

Trains the ``mode-weights-learned`` model of one seed (ToyScoreNet width 128, 5000 DSM steps of 256,
ladder 10 -> 0.1, L = 10) and prints, per level and per mixture component, for 20000 points drawn from
that component and perturbed at sigma_i: the mean of ``(s_learned - s_exact) . u`` with ``u = (1, 1)/sqrt 2``
(a drift towards the peaked mode when > 0), the relative error ``E|s_learned - s_exact| / E|s_exact|`` and
``E|s_exact|``.

Usage: ``PYTHONPATH=. python scripts/toy004_learned_score_bias.py [--seed 0]`` (one thread, ~15 s)
"""
import argparse

import torch

from fastncsn.experiments.mode_weights_learned import train_model
from fastncsn.schedules import get_sigmas
from fastncsn.toy import GaussianMixture, seed004_wide_peaked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    sig = get_sigmas("geometric", 10.0, 0.1, 10)
    mix = seed004_wide_peaked()
    model, loss = train_model(sig, a.seed, 5000, 128)
    print(f"seed {a.seed}: final DSM loss {loss:.4f}")
    g = torch.Generator().manual_seed(1000 + a.seed)
    u = torch.tensor([1.0, 1.0]) / 2 ** 0.5
    print("| component | level | sigma | bias towards the peaked mode | relative error | E abs(exact score) |")
    print("|---|---|---|---|---|---|")
    for name, k in (("wide", 0), ("peaked", 1)):
        comp = GaussianMixture(mix.means[k:k + 1], mix.stds[k:k + 1], [1.0])
        for i in range(sig.numel()):
            x = comp.sample(20000, generator=g) + float(sig[i]) * torch.randn(20000, 2, generator=g)
            with torch.no_grad():
                learned = model(x, torch.full((x.shape[0],), i, dtype=torch.long))
            exact = mix.score(x, float(sig[i]))
            d = learned - exact
            print(f"| {name} | {i} | {float(sig[i]):.3f} | {float((d @ u).mean()):+.3f} | "
                  f"{float(d.norm(dim=1).mean() / exact.norm(dim=1).mean()):.3f} | {float(exact.norm(dim=1).mean()):.3f} |")


if __name__ == "__main__":
    main()
