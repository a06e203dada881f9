"""The pending variants of the bf16 graph sampler: one table for the benchmarks, the smoke tests, the
profile and the defaults script.

Each variant is a speed change behind a switch (benchmarks/NOTES.md), the old path being the default
until a GPU window measures it: ``GraphSampler(layout=, weights=)`` (issue 15 item 2) and the model
switches ``fastncsn.nn.set_fused_pool`` / ``set_fused_glue`` (issue 15 item 3).  The sampling benchmark
times variant ``v`` as path ``graph-bf16-<v>`` next to ``graph-bf16`` (the defaults); the smoke test
``tests/test_graph_bf16.py::test_gpu_smoke_variant_step[<source>-<v>]`` checks it element by element.
"""
from __future__ import annotations

#: the defaults of the old path: GraphSampler layout / weights, model switches
DEFAULTS = dict(layout="channels_last", weights="autocast", fused_pool=False, fused_glue=False)

#: variant name -> the settings it changes (the others as in ``DEFAULTS``); ordered by priority (a stage cut
#: at its limit keeps the first ones): every switch at once, the network format, then one switch at a time
VARIANTS = {
    "all": dict(layout="channels_last_strict", weights="bf16_once", fused_pool=True, fused_glue=True),
    "strict-once": dict(layout="channels_last_strict", weights="bf16_once"),
    "strict": dict(layout="channels_last_strict"),
    "once": dict(weights="bf16_once"),
    "pool": dict(fused_pool=True),
    "glue": dict(fused_glue=True),        # under autocast the mixed-dtype RCU skips stay unfused
}

#: sampling benchmark path of a variant
PATH_PREFIX = "graph-bf16-"


def settings(variant: str | None) -> dict:
    """All four settings (``DEFAULTS`` updated by the variant; ``None`` = the defaults)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {tuple(VARIANTS)} or None, got {variant!r}")
    return dict(DEFAULTS, **(VARIANTS[variant] if variant else {}))


def apply_switches(model, fused_pool: bool, fused_glue: bool):
    """Set the model switches of a variant on ``model`` (returns it)."""
    from fastncsn.nn import set_fused_glue, set_fused_pool
    set_fused_pool(model, fused_pool)
    set_fused_glue(model, fused_glue)
    return model
