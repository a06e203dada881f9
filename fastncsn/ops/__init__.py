"""Fused ops of fastncsn: one file per op, one place that knows backends.

Layout::

    dispatch.py            backends ("auto" | "triton" | "cuda" | "torch"), availability, the auto choice
    common.py              helpers shared by the op files and both fast backends
    cond_instance_norm.py  CIN++: reference, argument checks, public function, torch.library ops, autograd
                           (and the glue fused into it: bias=, add_cond_instance_norm_plus)
    langevin.py            the Langevin step: Philox reference, argument checks, public function, op
    avg_pool.py            the 5x5 stride-1 average pool of the chained residual pooling (same parts)
    triton/                Triton kernels (imported only when the "triton" backend is used)
    cuda.py                wrappers of the CUDA extension fastncsn._C (built from csrc/)

Importing this package touches neither CUDA nor triton nor the extension.
"""
from .avg_pool import avg_pool5x5, avg_pool5x5_ref
from .cond_instance_norm import (ACTIVATIONS, CIN_EPS, add_cond_instance_norm_plus, add_cond_instance_norm_plus_ref,
                                 cond_instance_norm_plus, cond_instance_norm_plus_ref)
from .dispatch import AUTO_PREFERENCE, BACKENDS, BackendUnavailableError, available_backends, resolve_backend
from .langevin import langevin_noise_counters, langevin_noise_ref, langevin_step_, langevin_step_ref

__all__ = [
    "cond_instance_norm_plus",
    "langevin_step_",
    "langevin_noise_counters",
    "avg_pool5x5",
    "avg_pool5x5_ref",
    "cond_instance_norm_plus_ref",
    "add_cond_instance_norm_plus",
    "add_cond_instance_norm_plus_ref",
    "langevin_step_ref",
    "langevin_noise_ref",
    "CIN_EPS",
    "ACTIVATIONS",
    "BACKENDS",
    "AUTO_PREFERENCE",
    "BackendUnavailableError",
    "available_backends",
    "resolve_backend",
]
