"""``WeightMask``: DGMw's policy, a learned mask over every weight (and bias) of the layer.

While task ``t`` trains, ``W_eff = freeze(W) * sigmoid(s * M_t)``; consolidation keeps ``M_t > 0``
as packed bits (:mod:`dgm.bits`) and ORs them into the reserved union, frozen from then on.

The reserved union is kept packed at the storage's capacity shape, not at the active shape. Bits
run along the flattened non-leading dimensions, and an entry's column in its row does not depend
on the row's length (the non-leading dimensions other than dimension 1 never grow), so the packing
of an active shape is the leading corner of the capacity's: ``bits[:rows, :packed_cols(cols)]``.
The spare bits of that corner's last byte belong to inactive entries, which are never reserved, so
they are zero as :mod:`dgm.bits` requires. Growing within capacity changes no byte; growing beyond
it, or widening an old task's bits to the current shape, is a zero-padded copy of the bytes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import bits as _bits
from ..bits import packed_cols
from ..expansion import new_entries, padded
from .policy import MaskPolicy, usage_sum


def packed_shape(shape) -> tuple[int, int]:
    """Shape of the packed bits of a mask of ``shape``."""
    return shape[0], packed_cols(math.prod(shape[1:]))


class WeightMask(MaskPolicy):
    """DGMw: mask logits per weight (``mask_logits``, the storage's shape) and per bias entry
    (``bias_logits``); the reserved union in ``weight_reserved`` (packed, capacity shape) and
    ``bias_reserved``; task ``k``'s bits in ``mask_bits_k`` and ``bias_bits_k`` (its own shape)."""

    kind = "weight"
    _TASK_BUFFERS = ("mask_bits", "bias_bits")
    _LEGACY_NAMES = {"reserved_bits": "weight_reserved", "reserved_bias": "bias_reserved"}

    def __init__(self, capacity, out_dim: int, unit_dim: int, bias: bool, device=None, dtype=None):
        super().__init__(out_dim, unit_dim)
        factory = {"device": device, "dtype": dtype}
        self.mask_logits = nn.Parameter(torch.empty(tuple(capacity), **factory))
        if bias:
            self.bias_logits = nn.Parameter(torch.empty(capacity[out_dim], **factory))
        else:
            self.register_parameter("bias_logits", None)
        self.register_buffer("weight_reserved", None)
        self.register_buffer("bias_reserved", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.logits():
            nn.init.zeros_(p)

    def logits(self) -> list[nn.Parameter]:
        return [p for p in (self.mask_logits, self.bias_logits) if p is not None]

    def _capacity_shapes(self, capacity):
        out = (capacity[self.out_dim],)
        return {"mask_logits": tuple(capacity), "bias_logits": out, "weight_reserved": packed_shape(capacity),
                "bias_reserved": out}

    # -- the reserved union at the active size --------------------------------------------------
    def reserved_bits(self, shape) -> torch.Tensor | None:
        """Packed reserved weights of active ``shape`` (a view; ``None`` before any consolidation)."""
        if self.weight_reserved is None:
            return None
        rows, cols = packed_shape(shape)
        return self.weight_reserved[:rows, :cols]

    def reserved_bias(self, out_units: int) -> torch.Tensor | None:
        return None if self.bias_reserved is None else self.bias_reserved[:out_units]

    def _reserved_weight(self, shape, packing) -> torch.Tensor | None:
        """The reserved weights as a bool tensor of ``shape``, unpacked once per change of the
        reserved bits rather than at every step."""
        if self.weight_reserved is None:
            return None
        return self._cached("reserved", lambda: packing.unpack(self.reserved_bits(shape), shape))

    def changed(self) -> None:
        """Derived masks dropped, and the reserved bias packed now, eagerly: packed lazily at the
        first forward, a compiled layer would see a new cache entry and compile a second graph."""
        super().changed()
        self._reserved_bias_bits(0)

    def _reserved_bias_bits(self, out_units: int) -> torch.Tensor | None:
        """The reserved bias entries of the active units packed (``[out, 1]``, the op's
        ``frozen_bias_bits``): the capacity's bits are packed once per change of the reservations,
        not at every step, and a 1-D mask packs one byte per unit, so the active ones are its rows."""
        if self.bias_reserved is None:
            return None
        return self._cached("reserved_bias_bits", lambda: _bits.pack(self.bias_reserved))[:out_units]

    # -- forward: the op masks and freezes both weight and bias ---------------------------------
    def forward_current(self, op, x, weight, bias, s):
        rows, cols = weight.shape[:2]
        n = None if bias is None else bias.shape[0]
        bias_masks = {} if bias is None else {"bias_logits": self.bias_logits[:n],
                                              "frozen_bias_bits": self._reserved_bias_bits(n)}
        return op(x, weight, bias, logits=self.mask_logits[:rows, :cols], s=s,
                  frozen_bits=self.reserved_bits(weight.shape), **bias_masks)

    def forward_task(self, op, x, task, weight, bias, packing):
        bias_bits = None if bias is None else getattr(self, f"bias_bits_{task}")
        return op(x, weight, bias, bits=self.task_bits(task), bias_bits=bias_bits)

    def forward_rows(self, op, x, row_task, weight, bias, shapes, packing):
        weight_bits, bias_bits = self._rows(weight.shape, shapes)
        return op(x, weight, bias, bits=weight_bits, bias_bits=bias_bits, row_task=row_task)

    def _rows(self, shape, shapes):
        """Every consolidated task's packed bits at ``shape`` (zero outside the task's entries):
        weight bits ``[tasks, ...]`` and bias bits ``[tasks, out, 1]`` (``None`` without a bias)."""
        def build():
            tasks = range(len(shapes))
            weight_bits = torch.stack([padded(self.task_bits(k), packed_shape(shape)) for k in tasks])
            if self.bias_logits is None:
                return weight_bits, None
            out = (shape[self.out_dim], 1)
            return weight_bits, torch.stack([padded(getattr(self, f"bias_bits_{k}"), out) for k in tasks])
        return self._cached("rows", build)

    # -- task lifecycle -----------------------------------------------------------------------
    def usage(self, shape, s, packing):
        rows, cols = shape[:2]
        out_units = shape[self.out_dim]
        parts = [(torch.sigmoid(s * self.mask_logits[:rows, :cols]), self._reserved_weight(shape, packing))]
        if self.bias_logits is not None:
            parts.append((torch.sigmoid(s * self.bias_logits[:out_units]), self.reserved_bias(out_units)))
        return usage_sum(parts)

    def entries(self, shape) -> int:
        return math.prod(shape) + (0 if self.bias_logits is None else shape[self.out_dim])

    def reserved_count(self, packing) -> int:
        n = 0 if self.weight_reserved is None else packing.popcount(self.weight_reserved)
        return n + (0 if self.bias_reserved is None else int(self.bias_reserved.sum()))

    @torch.no_grad()
    def consolidate(self, task, shape, packing) -> None:
        rows, cols = shape[:2]
        bits = packing.pack(self.mask_logits[:rows, :cols] > 0)
        self.register_buffer(f"mask_bits_{task}", bits)
        if self.weight_reserved is None:
            self.weight_reserved = torch.zeros(packed_shape(self.mask_logits.shape), dtype=torch.uint8,
                                               device=bits.device)
        self.reserved_bits(shape).bitwise_or_(bits)
        self.mask_logits.zero_()
        if self.bias_logits is not None:
            self._consolidate_units(task, self.bias_logits, "bias_bits", "bias_reserved", shape[self.out_dim], packing)

    def _zero_new_logits(self, old, new) -> None:
        for block in new_entries(old, new):
            self.mask_logits[block].zero_()
        if self.bias_logits is not None:
            self.bias_logits[old[self.out_dim]:new[self.out_dim]].zero_()

    def reserved_masks(self, shape, capacity, packing):
        device = self.mask_logits.device
        weight = (torch.zeros(capacity, dtype=torch.bool, device=device) if self.weight_reserved is None
                  else packing.unpack(self.weight_reserved, capacity))
        masks = {"weight": weight}
        if self.bias_logits is not None:
            masks["bias"] = (torch.zeros(self.bias_logits.shape, dtype=torch.bool, device=device)
                             if self.bias_reserved is None else self.bias_reserved.clone())
        return masks

    def extra_repr(self) -> str:
        return f"capacity={tuple(self.mask_logits.shape)}, bias={self.bias_logits is not None}"
