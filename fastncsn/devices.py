"""Device helpers shared by the CUDA-graph executors (the graph sampler and the whole-step training graph)."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["resolve_graph_device"]


def resolve_graph_device(device, use_graphs: Optional[bool]) -> tuple:
    """``(device, use_graphs)``: ``device`` with its CUDA index filled in (the current device) and
    ``use_graphs`` defaulted to "on CUDA devices".

    Raises:
        ValueError: naming ``use_graphs`` when graphs are asked for off CUDA.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if use_graphs is None:
        use_graphs = device.type == "cuda"
    if use_graphs and device.type != "cuda":
        raise ValueError(f"use_graphs: CUDA graphs need a CUDA device, got {device}")
    return device, bool(use_graphs)
