"""Triton kernels of dgm (installed as ``dgm.kernels``)."""
