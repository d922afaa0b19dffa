"""Masked conv2d / conv-transpose2d on the Triton backend.

Fused (the masked GEMM with every mask form, see :mod:`.linear`): the convolutions that are a
single GEMM. That is the paper generator's first layer, a conv-transpose from a ``1 x 1`` input
with padding 0 (``y[b] = x[b] @ W.view(in, out * kh * kw)``), and a conv whose kernel covers
the whole (unpadded) input, giving a ``1 x 1`` output. Every other shape, and groups > 1, runs on
the reference.
"""

from torch.nn.modules.utils import _pair

from dgm.ops import reference

from .linear import FUSED_DTYPES
from .masked_gemm import run


def _matrix(t, rows: int):
    """``t`` as the 2-D ``(rows, rest)`` view the packed bits use, or ``None`` if that needs a copy."""
    if t is None:
        return None
    try:
        return t.view(rows, -1)
    except RuntimeError:
        return None


def _fusable(x, weight, logits, groups) -> bool:
    return (x.dim() == 4 and x.dtype in FUSED_DTYPES and x.dtype == weight.dtype and x.device == weight.device
            and groups == 1 and weight.dim() == 4 and _matrix(weight, weight.shape[0]) is not None
            and (logits is None or _matrix(logits, logits.shape[0]) is not None))


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, logits=None, s=1.0, bits=None,
           row_task=None, frozen_bits=None, frozen_units=None, unit_scale=None):
    """Masked ``F.conv2d``; see :mod:`dgm.ops.reference` for the mask arguments."""
    kwargs = dict(logits=logits, s=s, bits=bits, row_task=row_task, frozen_bits=frozen_bits,
                  frozen_units=frozen_units, unit_scale=unit_scale)
    if (_fusable(x, weight, logits, groups) and _pair(padding) == (0, 0) and _pair(dilation) == (1, 1)
            and x.shape[1] == weight.shape[1]
            and tuple(x.shape[2:]) == tuple(weight.shape[2:])):
        kk = weight.shape[2] * weight.shape[3]
        w2 = _matrix(weight, weight.shape[0])
        y = run("conv2d", x.reshape(x.shape[0], -1), w2, bias, transposed=False, kk=kk,
                **dict(kwargs, logits=_matrix(logits, w2.shape[0])))
        return y.view(x.shape[0], -1, 1, 1)
    return reference.conv2d(x, weight, bias, stride, padding, dilation, groups, **kwargs)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None, frozen_units=None,
                     unit_scale=None):
    """Masked ``F.conv_transpose2d``; see :mod:`dgm.ops.reference` for the mask arguments."""
    kwargs = dict(logits=logits, s=s, bits=bits, row_task=row_task, frozen_bits=frozen_bits,
                  frozen_units=frozen_units, unit_scale=unit_scale)
    if (_fusable(x, weight, logits, groups) and tuple(x.shape[2:]) == (1, 1) and _pair(padding) == (0, 0)
            and _pair(output_padding) == (0, 0) and _pair(dilation) == (1, 1) and x.shape[1] == weight.shape[0]):
        kh, kw = weight.shape[2:]
        w2 = _matrix(weight, weight.shape[0])
        y = run("conv_transpose2d", x.reshape(x.shape[0], -1), w2, bias, transposed=True, kk=kh * kw,
                **dict(kwargs, logits=_matrix(logits, w2.shape[0])))
        return y.view(x.shape[0], weight.shape[1], kh, kw)
    return reference.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation, **kwargs)
