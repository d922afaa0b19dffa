"""Validation of the arguments shared by the masked linear and conv custom ops.

Both ops address their mask through the same 2-D weight matrix (``rows = weight.shape[0]``,
``cols`` the rest, bits packed along ``cols``; see :mod:`dgm.bits`), and a bias mask through the
same layout of a 1-D mask (``[out, 1]``, one byte per unit), so one set of checks serves both:
each bad argument gets an error naming it and the expected shape, dtype or device, before any
kernel runs. :func:`check_masks` also turns ``row_task`` into the replay order the kernels read.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

# The dtypes the kernels compute in.
FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def check_operands(op: str, x, weight, weight_dims: int) -> None:
    """Raise unless ``x`` and ``weight`` are tensors of one kernel dtype on one device, the weight
    of ``weight_dims`` dimensions."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: x and weight must be tensors")
    if weight.dim() != weight_dims:
        raise ValueError(f"{op}: weight must be {weight_dims}-D, got shape {tuple(weight.shape)}")
    if x.dtype != weight.dtype:
        raise TypeError(f"{op}: x ({x.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if x.dtype not in FLOATS:
        raise TypeError(f"{op}: the triton backend computes in {[str(d) for d in FLOATS]}, got {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"{op}: x is on {x.device} but weight is on {weight.device}")


class MaskArgs(NamedTuple):
    """The custom ops' arguments after ``(x, weight)``, in their schema order."""
    bias: Tensor | None
    logits: Tensor | None
    bias_logits: Tensor | None
    s: Tensor | None                # 0-d float32 (read by the kernels), with a soft mask
    bits: Tensor | None             # one task's, or [tasks, ...] with the replay order below
    bias_bits: Tensor | None
    perm: Tensor | None             # replay: batch rows sorted by task,
    sorted_task: Tensor | None      # their tasks,
    task_offsets: Tensor | None     # and where each task's rows start
    frozen_bits: Tensor | None
    frozen_bias_bits: Tensor | None
    frozen_out: Tensor | None       # HAT's reserved output units (frozen_units[0])
    frozen_in: Tensor | None        # and input units (None: every input)
    unit_scale: Tensor | None
    save_pre: bool                  # keep the pre-scale output for the unit_scale gradient


def sharpness(s, device) -> Tensor:
    """``s`` (a number or a tensor) as the 0-d float32 tensor on ``device`` the kernels read: a
    step's value stays in device memory (a layer's ``s`` is such a tensor already: no op then)."""
    if isinstance(s, Tensor):
        return s.to(device=device, dtype=torch.float32)
    return torch.full((), s, dtype=torch.float32, device=device)


def replay_order(row_task: Tensor, tasks: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(perm, sorted_task, task_offsets)``: the batch rows sorted by task, their tasks, and
    where each task's rows start (``tasks + 1`` entries). Torch ops only, no device sync."""
    sorted_task, perm = torch.sort(row_task, stable=True)
    sorted_task = sorted_task.to(torch.int32)
    bounds = torch.arange(tasks + 1, device=row_task.device, dtype=torch.int32)
    offsets = torch.searchsorted(sorted_task, bounds).to(torch.int32)
    return perm.to(torch.int32), sorted_task, offsets


def _check(name: str, t, shape: tuple, dtypes, device) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")


def check_masks(op: str, x: Tensor, weight: Tensor, out_units: int, in_units: int, *, bias, logits=None, s=1.0,
                bits=None, row_task=None, frozen_bits=None, frozen_units=None, unit_scale=None, bias_logits=None,
                bias_bits=None, frozen_bias_bits=None) -> MaskArgs:
    """Check the mask arguments of ``op`` against ``weight`` (whose shape ``logits`` must have)
    and its ``out_units``/``in_units``, for the batch ``x`` (rows ``x.shape[0]``)."""
    rows = weight.shape[0]
    packed = (rows, (math.prod(weight.shape[1:]) + 7) // 8)
    unit_bits = (out_units, 1)
    batch, dev = x.shape[0], x.device
    if logits is not None and bits is not None:
        raise ValueError(f"{op}: give at most one weight mask, logits or bits, not both")
    if bias_logits is not None and bias_bits is not None:
        raise ValueError(f"{op}: give at most one bias mask, bias_logits or bias_bits, not both")
    if frozen_bits is not None and frozen_units is not None:
        raise ValueError(f"{op}: give at most one of frozen_bits and frozen_units")
    if frozen_bias_bits is not None and frozen_units is not None:
        raise ValueError(f"{op}: give at most one of frozen_bias_bits and frozen_units (which freezes the bias "
                         f"of the reserved output units)")
    if bias is None and (bias_logits is not None or bias_bits is not None or frozen_bias_bits is not None):
        raise ValueError(f"{op}: bias_logits, bias_bits and frozen_bias_bits need a bias")
    _check(f"{op}: logits", logits, weight.shape, FLOATS, dev)
    _check(f"{op}: bias_logits", bias_logits, (out_units,), FLOATS, dev)
    perm = sorted_task = offsets = None
    if row_task is not None:
        if bits is None or bits.dim() != 3:
            raise ValueError(f"{op}: row_task needs bits stacked per task, shape (tasks, {packed[0]}, {packed[1]})")
        tasks = bits.shape[0]
        _check(f"{op}: bits", bits, (tasks,) + packed, (torch.uint8,), dev)
        _check(f"{op}: bias_bits", bias_bits, (tasks,) + unit_bits, (torch.uint8,), dev)
        _check(f"{op}: row_task", row_task, (batch,), (torch.int64, torch.int32), dev)
        perm, sorted_task, offsets = replay_order(row_task, tasks)
    else:
        _check(f"{op}: bits", bits, packed, (torch.uint8,), dev)
        _check(f"{op}: bias_bits", bias_bits, unit_bits, (torch.uint8,), dev)
    _check(f"{op}: frozen_bits", frozen_bits, packed, (torch.uint8,), dev)
    _check(f"{op}: frozen_bias_bits", frozen_bias_bits, unit_bits, (torch.uint8,), dev)
    frozen_out = frozen_in = None
    if frozen_units is not None:
        if not isinstance(frozen_units, (tuple, list)) or len(frozen_units) != 2 or frozen_units[0] is None:
            raise TypeError(f"{op}: frozen_units must be a pair (reserved_out bool tensor, reserved_in or None)")
        frozen_out, frozen_in = frozen_units
        _check(f"{op}: frozen_units[0]", frozen_out, (out_units,), (torch.bool,), dev)
        _check(f"{op}: frozen_units[1]", frozen_in, (in_units,), (torch.bool,), dev)
    _check(f"{op}: bias", bias, (out_units,), FLOATS, dev)
    if unit_scale is not None:
        shape = (out_units,) if unit_scale.dim() == 1 else (batch, out_units)
        _check(f"{op}: unit_scale", unit_scale, shape, FLOATS, dev)
    save_pre = unit_scale is not None and unit_scale.requires_grad and torch.is_grad_enabled()
    s = sharpness(s, dev) if logits is not None or bias_logits is not None else None
    return MaskArgs(bias, logits, bias_logits, s, bits, bias_bits, perm, sorted_task, offsets, frozen_bits,
                    frozen_bias_bits, frozen_out, frozen_in, unit_scale, save_pre)
