"""Layers of the NCSN score networks (RefineNet blocks and instance norms++).

Module and attribute names mirror the reference implementations so that their
checkpoints load without renaming (``fastncsn.checkpoint`` handles the rest).
"""
from .norms import ConditionalInstanceNorm2dPlus, InstanceNorm2dPlus
from .blocks import (CRPBlock, ConvMeanPool, MSFBlock, RCUBlock, RefineBlock, ResidualBlock,
                     fused_op_modules, set_backend, set_fused_glue, set_fused_pool)

__all__ = ["ConditionalInstanceNorm2dPlus", "InstanceNorm2dPlus", "ResidualBlock", "RCUBlock",
           "CRPBlock", "MSFBlock", "RefineBlock", "ConvMeanPool", "fused_op_modules", "set_backend", "set_fused_glue",
           "set_fused_pool"]
