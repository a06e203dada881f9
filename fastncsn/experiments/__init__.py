"""Reproductions of the papers' experiments, runnable as modules or as ``fastncsn experiment <name>``.

* ``schedules-study`` (:mod:`.schedule_study`) -- seed 000 Figures 2-4: one model per
  noise schedule on the embedded digits, scored with digits-FID.
* ``initial-noise`` (:mod:`.initial_noise`) -- seed 000 section 7, Figures 13-14:
  sigma_1 = 1 vs 30 with L = 200, class histograms of the samples.
* ``mode-weights`` (:mod:`.mode_weights`) -- seed 004 Table 1 (mixture weights
  recovered by annealed Langevin with exact scores).
* ``score-norm`` (:mod:`.score_norm`) -- seed 004 Figure 5: E||s(x, sigma)|| against
  sigma for a trained model (the 1/sigma law).
* ``schedules`` (:mod:`.schedules`) -- seed 000 Figure 1 (the five ladders) and their
  overlap probabilities (Proposition 2): table, CSV, plot.
* ``pictures`` (:mod:`.pictures`) -- sample grid, annealing strip and GIF (seed 003
  Figure 4), nearest training neighbours (seed 003 appendix C.2).
* ``samplers`` (:mod:`.samplers`) -- issue 28: digits-FID against NFE for each sampler.
* ``score-accuracy`` (:mod:`.score_accuracy`) -- seed 003 Figure 2: toy score models (sliced
  score matching on clean data, one-sigma DSM, the NCSN ladder) against the exact mixture score,
  in high- vs low-density regions.
* ``ssm-manifold`` (:mod:`.ssm_manifold`) -- seed 003 Figure 1: the sliced score matching loss on
  data on a manifold (the unit circle), clean vs perturbed with N(0, 0.0001).
* ``single-sigma`` (:mod:`.single_sigma`) -- seed 003 section 5 / appendix C.1: one noise level
  sigma = 0.01 with plain Langevin vs the annealed ladder, on the toy mixture.
* ``mode-weights-learned`` (:mod:`.mode_weights_learned`) -- seed 004 Table 1 with learned
  toy scores beside exact ones, intervals over seeds, and the section 4.2.2 step-size rule.
* ``toy-figures`` (:mod:`.toy_figures`) -- seed 004 section 4.1: circle (Fig. 1), constant
  step (Fig. 7), diameter and the sigma_1 heuristic (Fig. 9), exact scores.
* ``hmc-vs-ald`` (:mod:`.hmc_vs_ald`) -- seed 004 section 5.1: annealed HMC with and without
  the Metropolis step against annealed Langevin, exact scores and log-densities.

The training experiments share one recipe, :data:`CPU_DIGITS_RECIPE` (the "CPU full"
defaults), and a CI preset, :data:`QUICK_RECIPE` (``--quick``: a few steps of a
tiny model; its numbers mean nothing and the outputs say so).
"""

from ..training.recipes import CPU_DIGITS_RECIPE as _TRAINING, DATASET_SAMPLING as _SAMPLING

#: Training and sampling recipe of the digits experiments on a CPU.  Training: the trainer's CPU
#: digits recipe (:data:`fastncsn.training.recipes.CPU_DIGITS_RECIPE`, defined there once):
#: CondRefineNetDilated(ngf) with DSM, Adam(lr), ``steps`` steps of ``batch_size`` images, optional
#: EMA of the weights (``ema_rate``; None = raw weights).  Sampling: the digits sampler defaults
#: (:data:`fastncsn.training.recipes.DATASET_SAMPLING`): annealed Langevin with ``eps`` in
#: ``step_convention``, ``steps_per_level`` steps per level, final denoising step; plus ``sample_n``
#: samples drawn ``sample_batch`` at a time, and the seed.
CPU_DIGITS_RECIPE = dict(
    **_TRAINING,
    **{k: _SAMPLING["digits"][k] for k in ("steps_per_level", "eps", "step_convention", "denoise")},
    sample_n=500,
    sample_batch=250,
    seed=0,
)

#: ``--quick``: end-to-end smoke test for CI (seconds); the numbers it prints are meaningless.
QUICK_RECIPE = dict(CPU_DIGITS_RECIPE, ngf=4, batch_size=8, steps=2, sample_n=16, sample_batch=16,
                    steps_per_level=1)
