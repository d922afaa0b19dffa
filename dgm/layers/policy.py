"""The mask policy: what one DGM method keeps in a masked layer, and how it masks the layer's op.

A :class:`~dgm.layers.masked.MaskedLayer` stores the weights and grows them; its policy (the child
module ``layer.policy``) holds what depends on the method: the mask parameters of the task being
learned, the binary mask of every consolidated task, the reserved union, and the rules that turn
them into the op's mask arguments. :class:`~dgm.layers.weight_mask.WeightMask` is DGMw (a mask per
weight), :class:`~dgm.layers.unit_mask.UnitMask` DGMa (HAT, a mask per output unit).

A policy never looks at its layer: each method is told the sizes it works on, as an active weight
shape in the layer's storage layout (``shape``: dimension ``out_dim`` indexes output units, the
other of dimensions 0 and 1 input units), or as the weight and bias views the op is to use.

Its tensors have the layer's storage capacity, like the weight, so that growing within capacity
touches only the new entries. Entries outside the active region are never reserved (consolidation
reserves active entries only), so growth finds them free without clearing them.
"""

from __future__ import annotations

import abc
from typing import Callable, ClassVar

import torch
from torch import nn

from ..expansion import padded, regrow_parameter

Op = Callable[..., torch.Tensor]
"""``op(x, weight, bias, **masks)``: the layer's op (:mod:`dgm.ops`) with its geometry bound."""


def per_row(t: torch.Tensor, like: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Per-row unit values ``t[batch, units]`` shaped to broadcast against ``like``, whose units
    are on ``unit_dim``."""
    shape = [1] * like.dim()
    shape[0], shape[unit_dim] = t.shape
    return t.reshape(shape)


def usage_sum(parts) -> torch.Tensor:
    """``sum(m * (1 - r))`` over ``(soft mask, reserved or None)`` pairs."""
    return sum((m if r is None else m.masked_fill(r, 0)).sum() for m, r in parts)


class MaskPolicy(nn.Module, metaclass=abc.ABCMeta):
    """Base of the mask policies; ``kind`` is the layer's ``mask=`` argument.

    ``out_dim``: the weight dimension that indexes output units; ``unit_dim``: the dimension of
    units in the op's input and output (-1 for linear, 1 for conv). ``packing`` arguments are the
    bit functions of the layer's backend and device (:func:`dgm.ops.bit_ops`).
    """

    kind: ClassVar[str]
    _TASK_BUFFERS: ClassVar[tuple[str, ...]]  # per-task buffers, named ``<prefix>_<task>``
    _LEGACY_NAMES: ClassVar[dict[str, str]]   # a version-1 layer's key -> this policy's name

    # DGMa inside a block "layer -> norm -> activation": the owner applies the unit mask after the
    # activation, so units outside the mask output exactly zero (HAT's assumption). Policies
    # without unit masks ignore it.
    defer_unit_mask = False

    def __init__(self, out_dim: int, unit_dim: int):
        super().__init__()
        self.out_dim, self.unit_dim = out_dim, unit_dim
        self._cache: dict = {}  # masks derived from the buffers, dropped when they change

    def _units(self, shape) -> tuple[int, int]:
        """``(out_units, in_units)`` of an active weight shape."""
        return shape[self.out_dim], shape[1 - self.out_dim]

    @abc.abstractmethod
    def _capacity_shapes(self, capacity) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every capacity-sized tensor of the policy, for weight storage ``capacity``."""

    # -- forward ------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward_current(self, op: Op, x, weight, bias, s: float) -> torch.Tensor:
        """``op`` under the soft mask of the task being learned at sharpness ``s``, reserved entries
        frozen; ``weight`` and ``bias`` are the active views."""

    @abc.abstractmethod
    def forward_task(self, op: Op, x, task: int, weight, bias, packing) -> torch.Tensor:
        """``op`` under consolidated ``task``'s binary mask; ``weight`` and ``bias`` are the
        (detached) views of its units."""

    @abc.abstractmethod
    def forward_rows(self, op: Op, x, row_task, weight, bias, shapes, packing) -> torch.Tensor:
        """Row ``r`` under consolidated task ``row_task[r]``'s mask, all rows at the current width
        (``weight``, ``bias``: the detached active views; ``shapes[k]``: task ``k``'s weight shape)."""

    def unit_mask(self, task, s: float, shape, shapes, packing) -> torch.Tensor:
        """DGMa only: see :meth:`~dgm.layers.masked.MaskedLayer.unit_mask`."""
        raise ValueError("unit_mask applies to mask='activation' layers only")

    # -- task lifecycle -----------------------------------------------------------------------
    @abc.abstractmethod
    def logits(self) -> list[nn.Parameter]:
        """The mask parameters of the task being learned."""

    @abc.abstractmethod
    def reset_parameters(self) -> None:
        """Zero logits: every mask entry at 0.5, undecided."""

    @abc.abstractmethod
    def usage(self, shape, s: float, packing) -> torch.Tensor:
        """``sum(m_t * (1 - m_<t))`` of the soft mask at ``shape`` (the regulariser's numerator)."""

    @abc.abstractmethod
    def entries(self, shape) -> int:
        """Number of mask entries at ``shape``."""

    @abc.abstractmethod
    def reserved_count(self, packing) -> int:
        """Number of reserved mask entries."""

    @abc.abstractmethod
    def consolidate(self, task: int, shape, packing) -> None:
        """Store the mask at ``shape``, binarised (``logits > 0``), as ``task``'s bits; reserve it;
        zero the logits."""

    def _consolidate_units(self, task: int, logits: nn.Parameter, bits: str, reserved: str, n: int, packing) -> None:
        """Consolidate a mask of one entry per unit (DGMa's units, DGMw's bias) whose first ``n``
        entries are active: its bits to buffer ``<bits>_<task>``, OR'd into the capacity-long
        buffer ``reserved``; the logits zeroed."""
        u = logits[:n] > 0
        self.register_buffer(f"{bits}_{task}", packing.pack(u))
        if getattr(self, reserved) is None:
            setattr(self, reserved, torch.zeros(logits.shape, dtype=torch.bool, device=u.device))
        getattr(self, reserved)[:n].bitwise_or_(u)
        logits.zero_()

    @abc.abstractmethod
    def reserved_masks(self, shape, capacity, packing) -> dict[str, torch.Tensor]:
        """Layer parameter name -> bool mask (storage shape ``capacity``) of the frozen entries."""

    @torch.no_grad()
    def grow(self, old, new, capacity, optimizer) -> None:
        """The layer grew from active shape ``old`` to ``new``, its storage is now ``capacity``:
        regrow what capacity outgrew (with ``optimizer``'s state), zero the new logits."""
        for name, shape in self._capacity_shapes(capacity).items():
            t = getattr(self, name)
            if t is None or t.shape == shape:
                continue
            if name in self._parameters:
                regrow_parameter(self, name, shape, optimizer)
            else:
                setattr(self, name, padded(t, shape))
        self._zero_new_logits(old, new)

    @abc.abstractmethod
    def _zero_new_logits(self, old, new) -> None:
        """Zero the logits of the entries in ``new`` but not in ``old`` (and only those)."""

    def task_bits(self, task: int) -> torch.Tensor:
        return getattr(self, f"{self._TASK_BUFFERS[0]}_{task}")

    def set_input_reserved(self, reserved_in, in_units: int, in_capacity: int) -> None:
        """DGMa only: see :meth:`~dgm.layers.masked.MaskedLayer.set_input_reserved`."""
        raise ValueError("set_input_reserved applies to mask='activation' layers only")

    def changed(self) -> None:
        """The buffers or sizes changed: drop the masks derived from them."""
        self._cache.clear()

    def _cached(self, key: str, build: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _apply(self, fn, *args, **kwargs):
        """``nn.Module._apply`` is the one path of every move and cast (``to``, ``cuda``, ``float``,
        ...): the cached masks live on the old device and dtype, so they are rebuilt here."""
        module = super()._apply(fn, *args, **kwargs)
        self.changed()
        return module

    # -- state --------------------------------------------------------------------------------
    def _is_buffer_name(self, name: str) -> bool:
        prefix, _, task = name.rpartition("_")
        return name in self._buffers or (prefix in self._TASK_BUFFERS and task.isdigit())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A policy that has consolidated or grown has other shapes and more buffers than a new one:
        # take them from the state dict before loading the values.
        device = self.logits()[0].device
        for key, incoming in state_dict.items():
            name = key[len(prefix):]
            if not key.startswith(prefix) or not isinstance(incoming, torch.Tensor):
                continue
            param = self._parameters.get(name)
            if param is not None and incoming.shape != param.shape:
                setattr(self, name, nn.Parameter(param.new_empty(incoming.shape)))
            elif param is None and self._is_buffer_name(name):
                self.register_buffer(name, torch.empty(incoming.shape, dtype=incoming.dtype, device=device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def upgrade_state(self, state_dict: dict, layer_prefix: str, prefix: str, capacity) -> None:
        """Move a version-1 layer's entries of this policy (then the layer's own tensors, the reserved
        ones at the active size) in place to their names under ``prefix``, at ``capacity``."""
        shapes = self._capacity_shapes(capacity)
        for key in [k for k in state_dict if k.startswith(layer_prefix) and "." not in k[len(layer_prefix):]]:
            name = self._LEGACY_NAMES.get(key[len(layer_prefix):], key[len(layer_prefix):])
            if name not in self._parameters and not self._is_buffer_name(name):
                continue  # the layer's own
            value = state_dict.pop(key)
            if name in shapes and value.shape != shapes[name]:
                value = padded(value, shapes[name])
            state_dict[prefix + name] = value
