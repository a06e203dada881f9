"""Reproductions of the papers' experiments, runnable as modules.

* ``python -m fastncsn.experiments.mode_weights`` -- seed 004 Table 1 (mixture
  weights recovered by annealed Langevin with exact scores).
* ``python -m fastncsn.experiments.schedules`` -- seed 000 Figure 1 (the five
  ladders) and their overlap probabilities (Proposition 2): table, CSV, plot.
"""
