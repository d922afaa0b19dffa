"""Triton kernels of dgm (installed as ``dgm.kernels``): the ``triton`` backend of :mod:`dgm.ops`.

A leaf: nothing here imports :mod:`dgm.ops`; the dispatcher imports this package on first use.
Per layer kind, from the public entry down to the kernels:

* :mod:`.linear`, :mod:`.conv` -- the entry points, with the signatures of :mod:`dgm.ops.reference`;
  an input they do not serve raises (the dispatcher checks the declaration in
  :mod:`dgm.ops.backends` first).
* :mod:`.linear_op`, :mod:`.conv_op` -- the ``torch.library`` custom ops ``dgm::masked_gemm``,
  ``dgm::masked_conv`` and their backwards; :mod:`.autograd` is the autograd both share,
  :mod:`.mask_args` the checks of their arguments.
* :mod:`.linear_kernels`, :mod:`.conv_kernels` -- the ``@triton.jit`` kernels and their launchers;
  :mod:`.jit_helpers` holds the JIT helpers both use (mask in registers, epilogues), :mod:`.launch`
  the host side of a launch (autotune configs, precision, strides).
"""

import torch

from .conv import conv2d, conv_transpose2d
from .launch import interpreting
from .linear import linear


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the kernels cannot run on ``device``: they need a CUDA device, or the CPU under the
    Triton interpreter (``TRITON_INTERPRET=1``); ``None`` when they can."""
    device = torch.device(device)
    if device.type == "cuda" or (device.type == "cpu" and interpreting()):
        return None
    if device.type == "cpu":
        return "Triton runs on the CPU only under its interpreter (TRITON_INTERPRET=1, for tests)"
    return f"Triton has no kernels for device type {device.type!r}"


__all__ = ["linear", "conv2d", "conv_transpose2d", "unavailable_reason"]
