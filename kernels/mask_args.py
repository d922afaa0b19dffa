"""Validation of the mask arguments shared by the masked linear and conv custom ops.

Both ops address their mask through the same 2-D weight matrix (``rows = weight.shape[0]``,
``cols`` the rest, bits packed along ``cols``; see :mod:`dgm.bits`), so one set of checks serves
both: each bad argument gets an error naming it and the expected shape, dtype or device, before
any kernel runs. :func:`check_masks` also turns ``row_task`` into the replay order the kernels read.
"""

import math
from typing import NamedTuple

import torch
from torch import Tensor

FLOATS = (torch.float16, torch.bfloat16, torch.float32)


class MaskArgs(NamedTuple):
    """What the custom ops take besides the user's arguments."""
    perm: Tensor | None
    sorted_task: Tensor | None
    task_offsets: Tensor | None
    frozen_out: Tensor | None
    frozen_in: Tensor | None
    save_pre: bool


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


def check_masks(op: str, x: Tensor, weight: Tensor, out_units: int, in_units: int, *, logits, bits, row_task,
                frozen_bits, frozen_units, bias, unit_scale) -> MaskArgs:
    """Check the mask arguments of ``op`` against ``weight`` (whose shape ``logits`` must have)
    and its ``out_units``/``in_units``, for the batch ``x`` (rows ``x.shape[0]``)."""
    rows = weight.shape[0]
    packed = (rows, (math.prod(weight.shape[1:]) + 7) // 8)
    batch, dev = x.shape[0], x.device
    if logits is not None and bits is not None:
        raise ValueError(f"{op}: give at most one weight mask, logits or bits, not both")
    if frozen_bits is not None and frozen_units is not None:
        raise ValueError(f"{op}: give at most one of frozen_bits and frozen_units")
    _check(f"{op}: logits", logits, weight.shape, FLOATS, dev)
    perm = sorted_task = offsets = None
    if row_task is not None:
        if bits is None or bits.dim() != 3:
            raise ValueError(f"{op}: row_task needs bits stacked per task, shape (tasks, {packed[0]}, {packed[1]})")
        _check(f"{op}: bits", bits, (bits.shape[0],) + packed, (torch.uint8,), dev)
        _check(f"{op}: row_task", row_task, (batch,), (torch.int64, torch.int32), dev)
        perm, sorted_task, offsets = replay_order(row_task, bits.shape[0])
    else:
        _check(f"{op}: bits", bits, packed, (torch.uint8,), dev)
    _check(f"{op}: frozen_bits", frozen_bits, packed, (torch.uint8,), dev)
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
    return MaskArgs(perm, sorted_task, offsets, frozen_out, frozen_in, save_pre)
