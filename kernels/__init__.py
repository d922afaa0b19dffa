"""Triton kernels of dgm (installed as ``dgm.kernels``): the ``triton`` backend of :mod:`dgm.ops`.

* :mod:`.linear`, :mod:`.conv` -- the backend's entry points, with the signatures of
  :mod:`dgm.ops.reference`; they send what the kernels do not cover to the reference.
* :mod:`.masked_gemm`, :mod:`.masked_conv` -- the ``torch.library`` custom ops with autograd
  (``dgm::masked_gemm``, ``dgm::masked_conv`` and their backwards) around the kernels.
* :mod:`.mask_args` -- the checks of the mask arguments both custom ops share.
* :mod:`.masked_matmul` -- the linear GEMM kernels and the in-register mask, epilogue and tile
  helpers every kernel uses.
* :mod:`.masked_implicit_gemm` -- the conv kernels (implicit GEMMs).
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
