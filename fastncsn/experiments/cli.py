"""``fastncsn experiment <name> [options]``: the papers' experiments from the command line.

Each name maps to a module of :mod:`fastncsn.experiments` whose ``main(argv)`` parses the
remaining options (``fastncsn experiment <name> --help`` lists them) and returns the exit
status: 0, or 2 after a one-line error for a bad configuration.
"""
from __future__ import annotations

import argparse
import importlib

#: experiment name -> (module, one-line description)
EXPERIMENTS = {
    "schedules-study": ("schedule_study", "seed 000 Figs 2-4: digits-FID of models trained with each noise schedule"),
    "initial-noise": ("initial_noise", "seed 000 section 7: class histograms for sigma_1 = 1 vs 30, L = 200"),
    "mode-weights": ("mode_weights", "seed 004 Table 1: mixture weights recovered by annealed Langevin"),
    "score-norm": ("score_norm", "seed 004 Fig 5: E||s(x, sigma)|| against sigma (the 1/sigma law)"),
    "schedules": ("schedules", "seed 000 Fig 1: the five noise ladders and their overlap probabilities"),
    "pictures": ("pictures", "sample grid, annealing strip/GIF, nearest training neighbours (seed 003)"),
    "score-accuracy": ("score_accuracy", "seed 003 Fig 2: learned scores against exact ones, high vs low density"),
    "ssm-manifold": ("ssm_manifold", "seed 003 Fig 1: SSM loss on data on a manifold, clean vs N(0, 1e-4) noise"),
    "single-sigma": ("single_sigma", "seed 003 App. C.1: one sigma = 0.01 + plain Langevin vs the annealed ladder"),
    "samplers": ("samplers", "issue 28: digits-FID against NFE for each sampler (ald, cas, pc, heun)"),
    "mode-weights-learned": ("mode_weights_learned", "seed 004 Table 1 with learned scores, and the 4.2.2 step rule"),
    "toy-figures": ("toy_figures", "seed 004 Figs 1, 7, 9: circle, constant step, diameter (exact scores)"),
    "hmc-vs-ald": ("hmc_vs_ald", "seed 004 section 5.1: annealed HMC (with/without MH) vs annealed Langevin"),
}


def add_experiment_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``experiment`` on the ``fastncsn`` command's subparsers."""
    listing = "\n".join(f"  {k:<20} {d}" for k, (_, d) in EXPERIMENTS.items())
    e = subparsers.add_parser("experiment", help="run one of the papers' experiments (tables, CSV, plots)",
                              description="Run an experiment; `fastncsn experiment NAME --help` shows its "
                                          "options.\n\nexperiments:\n" + listing,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("name", choices=list(EXPERIMENTS), metavar="NAME", help="one of: " + ", ".join(EXPERIMENTS))
    e.add_argument("args", nargs=argparse.REMAINDER, help="the experiment's options")
    e.set_defaults(func=run_experiment_command)
    return e


def run_experiment_command(a: argparse.Namespace) -> int:
    """Run experiment ``a.name`` with options ``a.args``; returns its exit status."""
    module = importlib.import_module(f"{__package__}.{EXPERIMENTS[a.name][0]}")
    return int(module.main(list(a.args)) or 0)
