"""Reproductions of the papers' experiments, runnable as modules.

* ``python -m fastncsn.experiments.mode_weights`` -- seed 004 Table 1 (mixture
  weights recovered by annealed Langevin with exact scores).
"""
