"""Samplers.

* ``core.py``: the one defaults table (NCSN's: step_lr 2e-5 in the reference convention,
  T = 100), settings validation, the three step-size conventions, initialisation,
  chunking, snapshots and progress -- shared by every sampler;
* ``rules.py``: every sampler (ald, cas, pc, heun) as a plan of steps, its NFE, per-sample noise
  streams, and the reference executor of a plan (``run_plan``);
* ``langevin.py``: the reference executors (vanilla and annealed Langevin, inpainting, HMC);
* ``graphs.py``: the CUDA-graph executor of the same steps (``GraphSampler``);
* ``api.py``: :func:`fastncsn.sample`; ``distributed.py``: sharding over processes.
"""
from .core import (INITS, NCSN_SAMPLING, NOISE_MODES, SAMPLER_DEFAULTS, SAMPLERS, STEP_CONVENTIONS, SamplerSettings,
                   SamplingDivergedError, init_samples, make_generator, resolve_model, step_sizes)
from .langevin import annealed_langevin, hmc_annealed, langevin
from .graphs import GraphSampler, clear_graph_cache, get_graph_sampler
from .rules import Plan, build_plan
from .api import plan, sample
from .distributed import sample_distributed, shard_seed, shard_sizes

__all__ = ["INITS", "NCSN_SAMPLING", "NOISE_MODES", "SAMPLER_DEFAULTS", "SAMPLERS", "Plan", "build_plan", "plan",
           "STEP_CONVENTIONS", "SamplerSettings", "SamplingDivergedError", "annealed_langevin", "hmc_annealed",
           "init_samples", "langevin", "make_generator", "resolve_model", "step_sizes", "GraphSampler",
           "get_graph_sampler", "clear_graph_cache", "sample", "sample_distributed", "shard_seed", "shard_sizes"]
