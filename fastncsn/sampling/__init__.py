"""Samplers: reference annealed Langevin dynamics and friends (``langevin.py``), the CUDA-graph
sampler (``graphs.py``) and multi-GPU sharding (``distributed.py``).

See :mod:`fastncsn.sampling.langevin` for the three step-size conventions.
"""
from .langevin import (STEP_CONVENTIONS, annealed_langevin, hmc_annealed, init_samples, langevin,
                       make_generator, step_sizes)
from .graphs import GraphSampler, clear_graph_cache, get_graph_sampler
from .distributed import sample_distributed, shard_seed, shard_sizes

__all__ = ["STEP_CONVENTIONS", "annealed_langevin", "hmc_annealed", "init_samples", "langevin",
           "make_generator", "step_sizes", "GraphSampler", "get_graph_sampler", "clear_graph_cache",
           "sample_distributed", "shard_seed", "shard_sizes"]
