"""Samplers: reference annealed Langevin dynamics and friends (``langevin.py``).

See :mod:`fastncsn.sampling.langevin` for the three step-size conventions.
"""
from .langevin import (STEP_CONVENTIONS, annealed_langevin, hmc_annealed, init_samples, langevin,
                       make_generator, step_sizes)

__all__ = ["STEP_CONVENTIONS", "annealed_langevin", "hmc_annealed", "init_samples", "langevin",
           "make_generator", "step_sizes"]
