"""Masked conv2d / conv-transpose2d on the Triton backend (signatures and meaning of
:mod:`dgm.ops.reference`).

Fused, as implicit GEMMs with the mask formed in registers (:mod:`.masked_implicit_gemm`, autograd
in :mod:`.masked_conv`): every stride, padding, dilation and output padding with ``groups=1``,
batched 4-D input in fp32/fp16/bf16, and every mask form -- soft mask, one task's bits, per-row
bits (replay), frozen bits, HAT's frozen units, per-unit or per-row ``unit_scale``. NCHW and
channels_last inputs are both read in place through their strides (no conversion); the output
keeps the input's memory format. Weights and logits may be strided views of a larger storage.

On the reference: ``groups > 1``, string padding (``"same"``/``"valid"``), unbatched 3-D input,
float64, and anything ``F.conv2d``/``F.conv_transpose2d`` would reject (so their error is raised).
"""

import torch
from torch.nn.modules.utils import _pair

from dgm.ops import reference

from .linear import FUSED_DTYPES
from .masked_conv import run


def _geometry(*args):
    """The conv parameters as pairs of ints, or ``None`` if one is not (e.g. string padding)."""
    pairs = []
    for a in args:
        if isinstance(a, str):
            return None
        p = _pair(a)
        if len(p) != 2 or not all(isinstance(v, int) for v in p):
            return None
        pairs.append(p)
    return pairs


def _fusable(x, weight, groups, channels_dim: int) -> bool:
    return (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and x.dim() == 4 and weight.dim() == 4
            and x.dtype in FUSED_DTYPES and x.dtype == weight.dtype and x.device == weight.device and groups == 1
            and x.shape[1] == weight.shape[channels_dim])


def _out_len(size, k, s, p, d, transposed, out_pad=0):
    if transposed:
        return (size - 1) * s - 2 * p + d * (k - 1) + out_pad + 1
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, logits=None, s=1.0, bits=None,
           row_task=None, frozen_bits=None, frozen_units=None, unit_scale=None):
    """Masked ``F.conv2d``; see :mod:`dgm.ops.reference` for the mask arguments."""
    masks = dict(logits=logits, s=s, bits=bits, row_task=row_task, frozen_bits=frozen_bits,
                 frozen_units=frozen_units, unit_scale=unit_scale)
    geometry = _geometry(stride, padding, dilation)
    if geometry is not None and _fusable(x, weight, groups, 1):
        (st, pad, dil), k = geometry, weight.shape[2:]
        out = [_out_len(x.shape[2 + i], k[i], st[i], pad[i], dil[i], False) for i in range(2)]
        if min(st) > 0 and min(pad) >= 0 and min(dil) > 0 and min(out) > 0:
            return run("conv2d", x, weight, bias, transposed=False, stride=st, padding=pad, dilation=dil,
                       out_size=out, **masks)
    return reference.conv2d(x, weight, bias, stride, padding, dilation, groups, **masks)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None, frozen_units=None,
                     unit_scale=None):
    """Masked ``F.conv_transpose2d``; see :mod:`dgm.ops.reference` for the mask arguments."""
    masks = dict(logits=logits, s=s, bits=bits, row_task=row_task, frozen_bits=frozen_bits,
                 frozen_units=frozen_units, unit_scale=unit_scale)
    geometry = _geometry(stride, padding, dilation, output_padding)
    if geometry is not None and _fusable(x, weight, groups, 0):
        (st, pad, dil, opad), k = geometry, weight.shape[2:]
        out = [_out_len(x.shape[2 + i], k[i], st[i], pad[i], dil[i], True, opad[i]) for i in range(2)]
        if (min(st) > 0 and min(pad) >= 0 and min(dil) > 0 and min(out) > 0
                and all(0 <= opad[i] < max(st[i], dil[i]) for i in range(2))):
            return run("conv_transpose2d", x, weight, bias, transposed=True, stride=st, padding=pad, dilation=dil,
                       out_size=out, **masks)
    return reference.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation, **masks)
