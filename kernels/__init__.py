"""Triton kernels of fastncsn (installed as ``fastncsn.kernels``)."""
