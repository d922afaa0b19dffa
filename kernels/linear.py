"""Masked linear on the fused Triton GEMMs (same signature and meaning as :func:`dgm.ops.reference.linear`).

Every mask form is fused: soft mask, one task's bits, per-row bits (replay), frozen bits, HAT's
frozen units and the per-unit or per-row ``unit_scale``. Inputs of more than two dimensions are
flattened to rows; ``row_task`` and ``unit_scale`` are defined on rows of a 2-D input, so with a
higher-dimensional input those two run on the reference. float64 runs on the reference too.
"""

import torch

from dgm.ops import reference

from .masked_gemm import run

FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def linear(x, weight, bias=None, *, logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None,
           frozen_units=None, unit_scale=None):
    """Masked ``F.linear``; see :mod:`dgm.ops.reference` for the mask arguments."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("linear: x and weight must be tensors")
    if weight.dim() != 2:
        raise ValueError(f"linear: weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x must end in {weight.shape[1]} features (weight's in), got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype:
        raise TypeError(f"linear: x ({x.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if x.device != weight.device:
        raise ValueError(f"linear: x is on {x.device} but weight is on {weight.device}")
    kwargs = dict(logits=logits, s=s, bits=bits, row_task=row_task, frozen_bits=frozen_bits,
                  frozen_units=frozen_units, unit_scale=unit_scale)
    if x.dtype not in FUSED_DTYPES or (x.dim() != 2 and (row_task is not None or unit_scale is not None)):
        return reference.linear(x, weight, bias, **kwargs)
    y = run("linear", x.reshape(-1, x.shape[-1]), weight, bias, transposed=False, kk=1, **kwargs)
    return y.reshape(*x.shape[:-1], weight.shape[0])
