"""Dynamic expansion: how much a generator layer grows after a task, and growing it in place.

The rule (the paper's "dynamic network expansion"; its details settled by the official code): after task
``t`` each layer grows by as much free capacity as task ``t`` newly reserved, so the free
capacity a new task finds never shrinks.

* DGMa (unit masks): layer ``l`` grows by ``delta_l = |r_l^{<=t}| - |r_l^{<t}|`` output units,
  the units newly reserved by task ``t``; the next layer's input grows with it.
* DGMw (weight masks): layer ``l`` has ``n_l`` newly reserved weights. Its input already grew by
  the previous layer's new outputs ``d_{l-1}``, which added ``d_{l-1} * out_l * k_l`` free weights
  (``k_l`` = kernel area); it adds ``d_l = max(0, ceil((n_l - d_{l-1} * out_l * k_l) /
  (in_l' * k_l)))`` output units, ``in_l' = in_l + d_{l-1}``, each bringing ``in_l' * k_l`` weights.

Storage grows geometrically (:func:`grown_capacity`), so most expansions only widen a view.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def weight_growth(new_reserved: list[int], in_units: list[int], out_units: list[int],
                  kernel_areas: list[int]) -> list[int]:
    """Output units to add per layer (DGMw rule above) for a chain of layers.

    ``in_units[0]`` is the network input, which never grows.
    """
    if not (len(new_reserved) == len(in_units) == len(out_units) == len(kernel_areas)):
        raise ValueError("weight_growth: all per-layer lists must have the same length")
    growth, prev = [], 0
    for n, fan_in, fan_out, k in zip(new_reserved, in_units, out_units, kernel_areas):
        prev = layer_growth(n, fan_in, fan_out, k, prev)
        growth.append(prev)
    return growth


def layer_growth(new_reserved: int, in_units: int, out_units: int, kernel_area: int, in_growth: int) -> int:
    """Output units one layer adds (DGMw rule above) once its input grew by ``in_growth`` units."""
    gained = in_growth * out_units * kernel_area
    return max(0, math.ceil((new_reserved - gained) / ((in_units + in_growth) * kernel_area)))


def grown_capacity(capacity: tuple[int, ...], needed: tuple[int, ...]) -> tuple[int, ...]:
    """Storage shape that holds ``needed``: each dimension that is too small at least doubles."""
    return tuple(c if n <= c else max(n, 2 * c) for c, n in zip(capacity, needed))


def new_entries(old: tuple[int, ...], new: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """Indices of the entries of the leading corner ``new`` that the corner ``old`` lacks (only
    dimensions 0 and 1 grow): the old rows' new columns, then the new rows; empty blocks left out."""
    (old_rows, old_cols), (rows, cols) = old[:2], new[:2]
    blocks = ((slice(0, old_rows), slice(old_cols, cols)), (slice(old_rows, rows), slice(0, cols)))
    return [block for block, grows in zip(blocks, (cols > old_cols, rows > old_rows)) if grows]


def padded(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` in the leading corner of a zero (``False``) tensor of ``shape``: storage regrown, with
    every old entry at its old index."""
    out = t.new_zeros(shape)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


@torch.no_grad()
def regrow_parameter(module: nn.Module, name: str, shape: tuple[int, ...],
                     optimizer: torch.optim.Optimizer | None = None) -> nn.Parameter:
    """Replace ``module.<name>`` by a larger zero-padded copy; move ``optimizer``'s state with it.

    Old values and their optimiser state (moments, step counts) keep their positions exactly.
    """
    old = getattr(module, name)
    new = nn.Parameter(padded(old.detach(), tuple(shape)), requires_grad=old.requires_grad)
    setattr(module, name, new)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        if old in optimizer.state:
            state = optimizer.state.pop(old)
            optimizer.state[new] = {k: padded(v, tuple(shape)) if torch.is_tensor(v) and v.shape == old.shape
                                    else v for k, v in state.items()}
    return new
