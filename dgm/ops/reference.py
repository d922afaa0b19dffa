"""Pure-PyTorch reference of every masked op: the definition the fused backends are tested against.

Each op computes ``y = op(x, W_eff) + b_eff`` and then scales the output units by ``unit_scale``::

    linear(x, weight, bias=None, *, logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None,
           frozen_units=None, unit_scale=None, bias_logits=None, bias_bits=None, frozen_bias_bits=None)
    conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, <the same keywords>)
    conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     *, <the same keywords>)

* ``W_eff = freeze(W) * m`` where the weight mask ``m`` is ``sigmoid(s * logits)`` (DGMw while a
  task trains; ``s`` a number or a 0-d tensor, which the fused backends read from device memory),
  ``unpack(bits)`` (DGMw for a consolidated task; with ``row_task`` each batch row uses its own
  task's bits, ``bits`` stacked ``[tasks, ...]``), or ``1`` (no weight mask, DGMa).
* ``freeze(W)`` detaches the reserved entries so their gradient is exactly zero: the packed
  ``frozen_bits`` for DGMw, or for DGMa (HAT) the entries ``(i, j)`` whose output unit ``i`` and
  input unit ``j`` are both reserved, ``1 - min(a_i, a_j)`` with binary ``a``; ``frozen_units`` is
  ``(reserved_out, reserved_in)`` and ``reserved_in=None`` counts every input as reserved.
* ``b_eff = freeze(bias) * m_b``, the same rule on the bias: ``m_b`` is ``sigmoid(s *
  bias_logits)``, ``unpack(bias_bits)`` (with ``row_task``, stacked ``[tasks, out, 1]``, each row
  its task's), or ``1``; ``freeze`` detaches the bias entries of the packed ``frozen_bias_bits``
  (DGMw) or of the reserved output units ``frozen_units[0]`` (DGMa). ``None`` for any of them is
  no mask, no freeze.
* ``unit_scale`` is the DGMa activation mask, shape ``[out]`` or per row ``[batch, out]`` (units are
  the last dimension of a linear output, dimension 1 of a conv output).

Packed bits are :mod:`dgm.bits` of a bool mask of the masked tensor's shape: ``[out, ceil(rest /
8)]`` for a weight of ``out`` rows, ``[out, 1]`` (one byte per unit) for a bias of ``[out]``.
Weights are passed as they are stored (``W`` of ``nn.Linear`` / ``nn.Conv2d`` / ``nn.ConvTranspose2d``
layout), possibly as strided views of a larger storage (see :mod:`dgm.expansion`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import bits as _bits

# The mask keywords of every op, at their defaults (no mask, no freeze, no scale).
NO_MASKS = {"logits": None, "s": 1.0, "bits": None, "row_task": None, "frozen_bits": None, "frozen_units": None,
            "unit_scale": None, "bias_logits": None, "bias_bits": None, "frozen_bias_bits": None}


def sharpness_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ``s`` is kept in for weights of ``dtype``: float64 for float64, else float32 (half
    precision would overflow at ``s_max``)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sharpness_tensor(s: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``s`` as the 0-d tensor the fused backends read for weights ``like``: on their device, in
    :func:`sharpness_dtype` (a layer's own ``s`` is one already: no op then)."""
    dtype = sharpness_dtype(like.dtype)
    if isinstance(s, torch.Tensor):
        return s.to(device=like.device, dtype=dtype)
    return torch.full((), s, dtype=dtype, device=like.device)


def soft_mask(logits: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
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
    return _freeze_and_mask(weight, frozen_weight_mask(weight, frozen_bits, frozen_units, out_dim), logits, s, bits)


def effective_bias(bias, *, bias_logits=None, s=1.0, bias_bits=None, frozen_bias_bits=None, frozen_units=None):
    """``freeze(b) * m_b`` for one task (``bias_bits`` of one task, not per row); ``None`` without a bias."""
    if bias is None:
        if bias_logits is not None or bias_bits is not None or frozen_bias_bits is not None:
            raise ValueError("bias_logits, bias_bits and frozen_bias_bits need a bias")
        return None
    frozen = None
    if frozen_units is not None:  # a grouped conv-transpose's weight holds one group's output units
        frozen = frozen_units[0].repeat(bias.shape[0] // frozen_units[0].shape[0])
    if frozen_bias_bits is not None:
        frozen = _bits.unpack(frozen_bias_bits, bias.shape)
    return _freeze_and_mask(bias, frozen, bias_logits, s, bias_bits)


def _freeze_and_mask(t, frozen, logits, s, bits):
    """``freeze(t) * m``: the ``frozen`` entries detached, ``m`` the soft mask, the unpacked bits or 1."""
    t = t if frozen is None else torch.where(frozen, t.detach(), t)
    if logits is not None:
        return t * soft_mask(logits, s)
    if bits is not None:
        return t * _bits.unpack(bits, t.shape).to(t.dtype)
    return t


def scale_units(y: torch.Tensor, unit_scale, unit_dim: int):
    """``y`` times the unit mask: units on ``unit_dim`` (last for linear, 1 for conv); a per-row
    mask ``[batch, out]`` pairs with ``y``'s first dimension."""
    if unit_scale is None:
        return y
    shape = [1] * y.dim()
    shape[unit_dim] = y.shape[unit_dim]
    if unit_scale.dim() == 2:
        shape[0] = unit_scale.shape[0]
    return y * unit_scale.reshape(shape)


def stacked_rows(op, x, weights, biases, index, out_dim: int, unit_dim: int = 1, groups: int = 1):
    """``op(x, w, b)`` with row ``r`` of ``x`` under ``weights[index[r]]`` and ``biases[index[r]]``:
    one product over all the weights stacked along the output units, each row then keeping the
    outputs of its own. The shapes and ops are the same whatever ``index`` holds (no host read,
    what a replayed step needs), at ``weights.shape[0]`` products' worth of arithmetic.

    ``weights`` ``[T, *w]`` (output units on ``w``'s dimension ``out_dim``, in ``groups`` groups as
    the op takes them), ``biases`` ``[T, out]`` or ``None``; the op's units are on ``unit_dim`` of
    its output. Replay (every consolidated task's masked weight) and the generator's per-class
    heads (every class's head) both run this way.
    """
    tasks, out = weights.shape[0], weights.shape[1 + out_dim] * (groups if out_dim == 1 else 1)
    per_group = out // groups
    if out_dim == 0:  # [T, out, ...] -> [groups * T * per_group, ...]: each group's units together
        w = weights.reshape(tasks, groups, per_group, *weights.shape[2:]).transpose(0, 1)
        w = w.reshape(groups * tasks * per_group, *weights.shape[2:])
    else:  # [T, in, per_group, ...] -> [in, T * per_group, ...]: a group's outputs follow its inputs
        w = weights.transpose(0, 1).reshape(weights.shape[1], tasks * per_group, *weights.shape[3:])
    b = None if biases is None else biases.reshape(tasks, groups, per_group).transpose(0, 1).reshape(-1)
    y = op(x, w, b).movedim(unit_dim, 1)
    y = y.reshape(y.shape[0], groups, tasks, per_group, *y.shape[2:])
    pick = index.reshape((-1,) + (1,) * (y.dim() - 1)).expand(y.shape[0], groups, 1, *y.shape[3:])
    return y.gather(2, pick).reshape(y.shape[0], out, *y.shape[4:]).movedim(1, unit_dim)


def task_rows(op, x, weight, bias, row_task, bits, bias_bits, *, frozen_bits=None, frozen_units=None,
              frozen_bias_bits=None, out_dim: int, unit_dim: int = 1, groups: int = 1):
    """Replay: row ``r`` of ``x`` under consolidated task ``row_task[r]``'s weight bits ``bits[t]``
    (and bias bits), by :func:`stacked_rows` over every task's masked weight. Every backend that
    replays through a plain product shares this."""
    w = effective_weight(weight, frozen_bits=frozen_bits, frozen_units=frozen_units, out_dim=out_dim)
    weights = w * _task_masks(bits, w.shape).to(w.dtype)
    b = effective_bias(bias, frozen_bias_bits=frozen_bias_bits, frozen_units=frozen_units)
    biases = None
    if b is not None:
        biases = b.expand(bits.shape[0], -1) if bias_bits is None else b * _task_masks(bias_bits, b.shape).to(b.dtype)
    return stacked_rows(op, x, weights, biases, row_task, out_dim, unit_dim, groups)


def _task_masks(bits: torch.Tensor, shape) -> torch.Tensor:
    """Per-task packed bits ``[T, rows, bytes]`` unpacked to bool ``[T, *shape]``, in one pass."""
    tasks = bits.shape[0]
    flat = _bits.unpack(bits.reshape(tasks * bits.shape[1], bits.shape[2]), (tasks * shape[0], *shape[1:]))
    return flat.reshape(tasks, *shape)


def _masked_op(op, x, weight, bias, *, logits, s, bits, row_task, frozen_bits, frozen_units, unit_scale,
               bias_logits, bias_bits, frozen_bias_bits, out_dim, unit_dim=1, groups=1):
    """The reference formula of the module docstring around the plain ``op(x, w, b)``."""
    if row_task is not None:
        y = task_rows(op, x, weight, bias, row_task, bits, bias_bits, frozen_bits=frozen_bits,
                      frozen_units=frozen_units, frozen_bias_bits=frozen_bias_bits, out_dim=out_dim,
                      unit_dim=unit_dim, groups=groups)
    else:
        w = effective_weight(weight, logits=logits, s=s, bits=bits, frozen_bits=frozen_bits,
                             frozen_units=frozen_units, out_dim=out_dim)
        b = effective_bias(bias, bias_logits=bias_logits, s=s, bias_bits=bias_bits,
                           frozen_bias_bits=frozen_bias_bits, frozen_units=frozen_units)
        y = op(x, w, b)
    return scale_units(y, unit_scale, unit_dim)


def linear(x, weight, bias=None, *, logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None,
           frozen_units=None, unit_scale=None, bias_logits=None, bias_bits=None, frozen_bias_bits=None):
    """Masked ``F.linear``; see the module docstring for the mask arguments."""
    return _masked_op(F.linear, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                      frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale,
                      bias_logits=bias_logits, bias_bits=bias_bits, frozen_bias_bits=frozen_bias_bits, out_dim=0,
                      unit_dim=-1)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, logits=None, s=1.0,
           bits=None, row_task=None, frozen_bits=None, frozen_units=None, unit_scale=None, bias_logits=None,
           bias_bits=None, frozen_bias_bits=None):
    """Masked ``F.conv2d``; see the module docstring for the mask arguments."""
    def op(inp, w, b):
        return F.conv2d(inp, w, b, stride, padding, dilation, groups)

    return _masked_op(op, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                      frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale,
                      bias_logits=bias_logits, bias_bits=bias_bits, frozen_bias_bits=frozen_bias_bits, out_dim=0,
                      groups=groups)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None, frozen_units=None,
                     unit_scale=None, bias_logits=None, bias_bits=None, frozen_bias_bits=None):
    """Masked ``F.conv_transpose2d``; see the module docstring for the mask arguments."""
    def op(inp, w, b):
        return F.conv_transpose2d(inp, w, b, stride, padding, output_padding, groups, dilation)

    return _masked_op(op, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                      frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale,
                      bias_logits=bias_logits, bias_bits=bias_bits, frozen_bias_bits=frozen_bias_bits, out_dim=1,
                      groups=groups)
