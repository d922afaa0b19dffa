"""``UnitMask``: DGMa's policy (HAT), a learned mask over the layer's output units.

While task ``t`` trains, ``y = sigmoid(s * e_t) * layer(x)``; consolidation keeps ``e_t > 0`` as
packed bits and ORs them into the reserved units. HAT freezes weight ``(i, j)`` when output unit
``i`` and input unit ``j`` are both reserved (the inputs' reservation comes from the layer before,
:meth:`UnitMask.set_input_reserved`; with none set, the input is the network's and every input
counts as reserved), and the bias of every reserved unit.
"""

from __future__ import annotations

import torch
from torch import nn

from ..expansion import padded
from ..ops import reference
from .policy import MaskPolicy, per_row, usage_sum


class UnitMask(MaskPolicy):
    """DGMa: a logit per output unit (``unit_logits``, the storage's capacity); the reserved output
    units in ``out_reserved`` and the reserved inputs in ``in_reserved`` (capacity length); task
    ``k``'s units in ``mask_bits_k``."""

    kind = "activation"
    _TASK_BUFFERS = ("mask_bits",)
    _LEGACY_NAMES = {"reserved_units": "out_reserved", "reserved_in_units": "in_reserved"}

    def __init__(self, capacity, out_dim: int, unit_dim: int, bias: bool, device=None, dtype=None):
        super().__init__(out_dim, unit_dim)
        self.has_bias = bias
        self.unit_logits = nn.Parameter(torch.empty(capacity[out_dim], device=device, dtype=dtype))
        self.register_buffer("out_reserved", None)
        self.register_buffer("in_reserved", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.unit_logits)

    def logits(self) -> list[nn.Parameter]:
        return [self.unit_logits]

    def _capacity_shapes(self, capacity):
        out = (capacity[self.out_dim],)
        return {"unit_logits": out, "out_reserved": out, "in_reserved": (capacity[1 - self.out_dim],)}

    # -- the reservations at the active size ----------------------------------------------------
    def reserved_units(self, out_units: int) -> torch.Tensor | None:
        return None if self.out_reserved is None else self.out_reserved[:out_units]

    def reserved_in_units(self, in_units: int) -> torch.Tensor | None:
        return None if self.in_reserved is None else self.in_reserved[:in_units]

    def set_input_reserved(self, reserved_in, in_units, in_capacity) -> None:
        if reserved_in is not None and not (isinstance(reserved_in, torch.Tensor) and reserved_in.dtype == torch.bool
                                            and reserved_in.shape == (in_units,)):
            got = (f"{reserved_in.dtype} of shape {tuple(reserved_in.shape)}" if isinstance(reserved_in, torch.Tensor)
                   else type(reserved_in).__name__)
            raise ValueError(f"reserved_in must be None or a bool tensor of shape ({in_units},), got {got}")
        self.in_reserved = (None if reserved_in is None
                            else padded(reserved_in.to(self.unit_logits.device), (in_capacity,)))

    # -- unit masks ---------------------------------------------------------------------------
    def _soft(self, out_units: int, s: float) -> torch.Tensor:
        return torch.sigmoid(s * self.unit_logits[:out_units])

    def _task_units(self, task: int, out_units: int, packing) -> torch.Tensor:
        return packing.unpack(self.task_bits(task), (out_units,)).to(self.unit_logits.dtype)

    def unit_mask(self, task, s, shape, shapes, packing):
        """Soft ``[out]`` for ``task=None`` (the task being learned), binary ``[out_k]`` for a
        consolidated task, ``[batch, out]`` for per-row ids (``shape``: the current weight shape)."""
        if isinstance(task, torch.Tensor):
            return self._rows(shape, shapes, packing)[0][task]
        if task is None:
            return self._soft(shape[self.out_dim], s)
        return self._task_units(task, shapes[task][self.out_dim], packing)

    def _rows(self, shape, shapes, packing):
        """Every consolidated task's unit masks at ``shape`` (zero outside its units) ``[tasks, out]``
        and input masks ``[tasks, in]`` (one on the inputs the task had)."""
        def build():
            out_units, in_units = self._units(shape)
            units, inputs = [], []
            for task, task_shape in enumerate(shapes):
                task_out, task_in = self._units(task_shape)
                u = packing.unpack(self.task_bits(task), (task_out,))
                units.append(padded(u, (out_units,)))
                inputs.append(torch.arange(in_units, device=u.device) < task_in)
            dtype = self.unit_logits.dtype
            return (torch.stack(units).to(dtype) if units else None,
                    torch.stack(inputs).to(dtype) if inputs else None)
        return self._cached("rows", build)

    # -- forward ------------------------------------------------------------------------------
    def forward_current(self, op, x, weight, bias, s):
        out_units, in_units = self._units(weight.shape)
        reserved = self.reserved_units(out_units)
        frozen = None if reserved is None else (reserved, self.reserved_in_units(in_units))
        scale = None if self.defer_unit_mask else self._soft(out_units, s)
        return op(x, weight, bias, unit_scale=scale, frozen_units=frozen)

    def forward_task(self, op, x, task, weight, bias, packing):
        scale = None if self.defer_unit_mask else self._task_units(task, weight.shape[self.out_dim], packing)
        return op(x, weight, bias, unit_scale=scale)

    def forward_rows(self, op, x, row_task, weight, bias, shapes, packing):
        units, inputs = self._rows(weight.shape, shapes, packing)
        # A task's units cover only the inputs it had: zero the newer ones for its rows (DGMw does
        # this through its bits).
        x = x * per_row(inputs[row_task], x, self.unit_dim)
        return op(x, weight, bias, unit_scale=None if self.defer_unit_mask else units[row_task])

    # -- task lifecycle -----------------------------------------------------------------------
    def usage(self, shape, s, packing):
        out_units = shape[self.out_dim]
        return usage_sum([(self._soft(out_units, s), self.reserved_units(out_units))])

    def entries(self, shape) -> int:
        return shape[self.out_dim]

    def reserved_count(self, packing) -> int:
        return 0 if self.out_reserved is None else int(self.out_reserved.sum())

    @torch.no_grad()
    def consolidate(self, task, shape, packing) -> None:
        self._consolidate_units(task, self.unit_logits, "mask_bits", "out_reserved", shape[self.out_dim], packing)

    def _zero_new_logits(self, old, new) -> None:
        self.unit_logits[old[self.out_dim]:new[self.out_dim]].zero_()

    def reserved_masks(self, shape, capacity, packing):
        device = self.unit_logits.device
        reserved = (torch.zeros(self.unit_logits.shape, dtype=torch.bool, device=device) if self.out_reserved is None
                    else self.out_reserved)
        out_units, in_units = self._units(shape)
        weight = torch.zeros(capacity, dtype=torch.bool, device=device)
        active = weight[:shape[0], :shape[1]]
        active.copy_(reference.frozen_weight_mask(active, frozen_units=(reserved[:out_units], self.reserved_in_units(in_units)),
                                                  out_dim=self.out_dim))
        masks = {"weight": weight}
        if self.has_bias:
            masks["bias"] = reserved.clone()
        return masks

    def extra_repr(self) -> str:
        return f"capacity={self.unit_logits.shape[0]}, bias={self.has_bias}"
