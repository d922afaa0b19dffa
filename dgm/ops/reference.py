"""Pure-PyTorch reference of every masked op: the definition the fused backends are tested against.

Each op computes ``y = op(x, W_eff) + bias`` and then scales the output units by ``unit_scale``:

* ``W_eff = freeze(W) * m`` where the weight mask ``m`` is ``sigmoid(s * logits)`` (DGMw while a
  task trains), ``unpack(bits)`` (DGMw for a consolidated task; with ``row_task`` each batch row
  uses its own task's bits), or ``1`` (no weight mask, DGMa).
* ``freeze(W)`` detaches the reserved entries so their gradient is exactly zero: the packed
  ``frozen_bits`` for DGMw, or for DGMa (HAT) the entries ``(i, j)`` whose output unit ``i`` and
  input unit ``j`` are both reserved, ``1 - min(a_i, a_j)`` with binary ``a``; ``frozen_units`` is
  ``(reserved_out, reserved_in)`` and ``reserved_in=None`` counts every input as reserved.
* ``unit_scale`` is the DGMa activation mask, shape ``[out]`` or per row ``[batch, out]`` (units are
  the last dimension of a linear output, dimension 1 of a conv output).

Weights are passed as they are stored (``W`` of ``nn.Linear`` / ``nn.Conv2d`` / ``nn.ConvTranspose2d``
layout), possibly as strided views of a larger storage (see :mod:`dgm.expansion`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import bits as _bits


def soft_mask(logits: torch.Tensor, s: float) -> torch.Tensor:
    """DGMw/DGMa soft mask ``sigmoid(s * logits)``."""
    return torch.sigmoid(s * logits)


def frozen_weight_mask(weight: torch.Tensor, frozen_bits=None, frozen_units=None, out_dim: int = 0):
    """Boolean mask of the reserved (frozen) entries of ``weight``, or ``None`` if nothing is frozen.

    ``out_dim`` is the weight dimension that indexes output units (0 for linear and conv,
    1 for conv-transpose); the other of dims 0/1 indexes input units.
    """
    if frozen_bits is not None:
        return _bits.unpack(frozen_bits, weight.shape)
    if frozen_units is not None:
        out_res, in_res = frozen_units
        shape = [1] * weight.dim()
        shape[out_dim] = -1
        mask = out_res.view(shape)
        if in_res is not None:
            in_shape = [1] * weight.dim()
            in_shape[1 - out_dim] = -1
            mask = mask & in_res.view(in_shape)
        return mask.expand(weight.shape)
    return None


def effective_weight(weight, *, logits=None, s=1.0, bits=None, frozen_bits=None, frozen_units=None,
                     out_dim=0):
    """``freeze(W) * m`` for one task (``bits`` of one task, not per row)."""
    frozen = frozen_weight_mask(weight, frozen_bits, frozen_units, out_dim)
    w = weight if frozen is None else torch.where(frozen, weight.detach(), weight)
    if logits is not None:
        w = w * soft_mask(logits, s)
    elif bits is not None:
        w = w * _bits.unpack(bits, weight.shape).to(weight.dtype)
    return w


def _scale_units(y: torch.Tensor, unit_scale, unit_dim: int):
    """``y`` times the unit mask: units on ``unit_dim`` (last for linear, 1 for conv); a per-row
    mask ``[batch, out]`` pairs with ``y``'s first dimension."""
    if unit_scale is None:
        return y
    shape = [1] * y.dim()
    shape[unit_dim] = y.shape[unit_dim]
    if unit_scale.dim() == 2:
        shape[0] = unit_scale.shape[0]
    return y * unit_scale.reshape(shape)


def _apply(op, x, weight, bias, *, logits, s, bits, row_task, frozen_bits, frozen_units, unit_scale, out_dim,
           unit_dim=1):
    if row_task is None or row_task.numel() == 0:
        if row_task is not None:  # an empty batch: any task's mask gives the same empty output
            bits = bits[0]
        w = effective_weight(weight, logits=logits, s=s, bits=bits, frozen_bits=frozen_bits,
                             frozen_units=frozen_units, out_dim=out_dim)
        return _scale_units(op(x, w, bias), unit_scale, unit_dim)
    # Replay: rows grouped by task, each group with its own task's bits.
    y = None
    for task in torch.unique(row_task).tolist():
        rows = (row_task == task).nonzero(as_tuple=True)[0]
        w = effective_weight(weight, bits=bits[task], frozen_bits=frozen_bits, frozen_units=frozen_units,
                             out_dim=out_dim)
        part = op(x.index_select(0, rows), w, bias)
        if y is None:
            y = part.new_zeros((x.shape[0],) + part.shape[1:])
        y = y.index_copy(0, rows, part)
    return _scale_units(y, unit_scale, unit_dim)


def linear(x, weight, bias=None, *, logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None,
           frozen_units=None, unit_scale=None):
    """Masked ``F.linear``; see the module docstring for the mask arguments."""
    return _apply(F.linear, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                  frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale, out_dim=0,
                  unit_dim=-1)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, logits=None, s=1.0,
           bits=None, row_task=None, frozen_bits=None, frozen_units=None, unit_scale=None):
    """Masked ``F.conv2d``; see the module docstring for the mask arguments."""
    def op(inp, w, b):
        return F.conv2d(inp, w, b, stride, padding, dilation, groups)

    return _apply(op, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                  frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale, out_dim=0)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None, frozen_units=None,
                     unit_scale=None):
    """Masked ``F.conv_transpose2d``; see the module docstring for the mask arguments."""
    def op(inp, w, b):
        return F.conv_transpose2d(inp, w, b, stride, padding, output_padding, groups, dilation)

    return _apply(op, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                  frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale, out_dim=1)
