"""Triton kernels of dgm (installed as ``dgm.kernels``): the ``triton`` backend of :mod:`dgm.ops`.

:mod:`.masked_matmul` holds the kernels, :mod:`.masked_gemm` the autograd custom op around them,
:mod:`.linear` and :mod:`.conv` the ops with the signatures of :mod:`dgm.ops.reference`.
"""

import torch

from dgm.ops import interpreting

from .conv import conv2d, conv_transpose2d
from .linear import linear


def runs_on(device: torch.device) -> bool:
    """CUDA devices, and the CPU under the Triton interpreter (``TRITON_INTERPRET=1``)."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


__all__ = ["linear", "conv2d", "conv_transpose2d", "runs_on"]
