"""What every DGM layer shares: per-task masks, the reserved union, and growth in place.

A masked layer learns one task at a time (``self.task``). While it trains, its mask is soft,
``sigmoid(s * logits)``: over weights (``mask="weight"``, DGMw) or over output units
(``mask="activation"``, DGMa / HAT). :meth:`MaskedLayer.consolidate` binarises the mask
(``logits > 0``, the limit ``s -> inf``), stores it as packed bits (:mod:`dgm.bits`), adds it to
the *reserved* union and starts the next task. Reserved entries are frozen: the op detaches them
so their gradient is exactly zero, and :class:`dgm.optim.ReservedGuard` keeps any optimiser
from moving them or their state.

Parameters are stored with spare capacity (:mod:`dgm.expansion`): ``weight`` is the storage and
:meth:`MaskedLayer.active_weight` the view of the units in use, so growing the layer rarely
reallocates. Task ``k`` always runs on the units it had when it was consolidated, which keeps
its output bit-identical however much the layer grows later.
"""

from __future__ import annotations

import abc
import math
from typing import Callable

import torch
from torch import nn

from .. import ops
from ..expansion import grown_capacity, regrow_parameter

MASK_KINDS = ("weight", "activation")
_EXTRA = ("task", "in_units", "out_units", "s")


def _frozen(t: torch.Tensor, reserved: torch.Tensor | None) -> torch.Tensor:
    """``t`` with its reserved entries detached (zero gradient there)."""
    return t if reserved is None else torch.where(reserved, t.detach(), t)


class MaskedLayer(nn.Module, metaclass=abc.ABCMeta):
    """Base of :class:`~dgm.MaskedLinear`, :class:`~dgm.MaskedConv2d`, :class:`~dgm.MaskedConvTranspose2d`.

    Subclasses set ``_OP`` (the op's name in :mod:`dgm.ops`) and ``_OUT_DIM`` (the weight
    dimension that indexes output units) and implement :meth:`_weight_shape` and :meth:`_op_args`.
    """

    _OP: str
    _OUT_DIM: int

    def __init__(self, in_units: int, out_units: int, bias: bool, mask: str, backend: str, s_max: float,
                 weight_init: Callable[[torch.Tensor], None] | None, device=None, dtype=None):
        super().__init__()
        if mask not in MASK_KINDS:
            raise ValueError(f"mask must be one of {MASK_KINDS}, got {mask!r}")
        if in_units <= 0 or out_units <= 0:
            raise ValueError(f"in and out sizes must be positive, got in={in_units}, out={out_units}")
        if s_max < 1:
            raise ValueError(f"s_max must be >= 1, got {s_max}")
        self.mask = mask
        self.backend = ops.check_backend(backend)
        self.s_max = float(s_max)
        self.s = 1.0 / self.s_max
        self.weight_init = weight_init
        # DGMa inside a block "layer -> norm -> activation": the owner applies unit_mask() after
        # the activation, so units outside the mask output exactly zero (HAT's assumption).
        self.defer_unit_mask = False
        self.task = 0
        self.in_units, self.out_units = in_units, out_units
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self._weight_shape(out_units, in_units), **factory))
        self.bias = nn.Parameter(torch.empty(out_units, **factory)) if bias else None
        if mask == "weight":
            self.mask_logits = nn.Parameter(torch.zeros_like(self.weight))
            self.bias_logits = nn.Parameter(torch.zeros(out_units, **factory)) if bias else None
        else:
            self.unit_logits = nn.Parameter(torch.zeros(out_units, **factory))
        self.register_buffer("task_sizes", torch.zeros(0, 2, dtype=torch.long, device=device))
        for name in ("reserved_bits", "reserved_bias", "reserved_units", "reserved_in_units"):
            self.register_buffer(name, None)
        self._free = 0
        self._cache: dict = {}  # masks derived from the buffers, dropped when they change
        self.version = 0
        self.reset_parameters()
        self._update_free()

    # -- shapes -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _weight_shape(self, out_units: int, in_units: int) -> tuple[int, ...]:
        """Shape of the weight of ``out_units`` x ``in_units`` (the ``torch.nn`` layout)."""

    @abc.abstractmethod
    def _op_args(self) -> tuple:
        """The op's positional layer arguments after ``(x, weight, bias)`` (stride, padding, ...)."""

    def _view(self, t: torch.Tensor, out_units: int, in_units: int) -> torch.Tensor:
        """The corner of weight-shaped storage ``t`` that ``(out_units, in_units)`` use."""
        shape = self._weight_shape(out_units, in_units)
        return t[: shape[0], : shape[1]]

    def sizes(self, task: int | None = None) -> tuple[int, int]:
        """``(out_units, in_units)`` used by ``task`` (default: the task being learned)."""
        if task is None or task == self.task:
            return self.out_units, self.in_units
        self._check_task(task)
        out_units, in_units = self.task_sizes[task].tolist()
        return out_units, in_units

    def active_weight(self, task: int | None = None) -> torch.Tensor:
        """View of the weight that ``task`` uses (default: the task being learned)."""
        return self._view(self.weight, *self.sizes(task))

    def _check_task(self, task) -> None:
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task <= self.task:
            raise ValueError(f"task must be an int in [0, {self.task}] (the consolidated tasks and the "
                             f"current one), got {task!r}")

    # -- parameters ---------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Initialise the active weight and bias as the ``torch.nn`` counterpart does."""
        with torch.no_grad():
            self._init_weight_(self.active_weight())
            if self.bias is not None:
                self._init_bias_(self.bias[: self.out_units])

    def _fan_in(self) -> int:
        return nn.init._calculate_fan_in_and_fan_out(self.active_weight())[0]

    def _init_weight_(self, w: torch.Tensor) -> None:
        if self.weight_init is not None:
            self.weight_init(w)
        else:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def _init_bias_(self, b: torch.Tensor) -> None:
        bound = 1 / math.sqrt(self._fan_in())
        nn.init.uniform_(b, -bound, bound)

    def _bit_ops(self):
        """Packing functions for this layer's backend and device (:func:`dgm.ops.bit_ops`)."""
        return ops.bit_ops(self.backend, self.weight.device)

    def task_bits(self, task: int) -> torch.Tensor:
        """Packed binary mask of consolidated ``task``: its weight bits (DGMw) or unit bits (DGMa)."""
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.task:
            raise ValueError(f"task {task!r} was never consolidated: stored masks are for tasks "
                             f"0..{self.task - 1}")
        return getattr(self, f"mask_bits_{task}")

    def _task_bias_bits(self, task: int) -> torch.Tensor:
        return getattr(self, f"bias_bits_{task}")

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, task: int | torch.Tensor | None = None) -> torch.Tensor:
        """Run under the mask of ``task``: ``None`` (or the current id) for the task being learned,
        with the soft mask at sharpness ``self.s``; an earlier task id for its binary mask, on the
        units it had; or a per-row tensor of earlier task ids (replay in one call, all rows at the
        current width, each row's units outside its task masked to zero)."""
        self._check_input(x)
        if isinstance(task, torch.Tensor):
            return self._forward_rows(x, task)
        if task is None or task == self.task:
            return self._forward_current(x)
        self._check_task(task)
        return self._forward_consolidated(x, task)

    def _check_input(self, x) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: input must be a tensor, got {type(x).__name__}")
        if x.device != self.weight.device:
            raise ValueError(f"{name}: input is on {x.device} but the layer is on {self.weight.device}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"{name}: input dtype {x.dtype} does not match the layer's {self.weight.dtype}")

    def _check_width(self, x: torch.Tensor, in_units: int) -> None:
        dim = -1 if self._OP == "linear" else 1
        if x.dim() < 2 or x.shape[dim] != in_units:
            raise ValueError(f"{type(self).__name__}: expected input with {in_units} features in dim {dim}, "
                             f"got shape {tuple(x.shape)}")

    def _call_op(self, x, weight, bias, **masks):
        return getattr(ops, self._OP)(x, weight, bias, *self._op_args(), backend=self.backend, **masks)

    def _forward_current(self, x):
        self._check_width(x, self.in_units)
        out_units = self.out_units
        weight = self.active_weight()
        bias = None if self.bias is None else self.bias[:out_units]
        if self.mask == "weight":
            logits = self._view(self.mask_logits, out_units, self.in_units)
            if bias is not None:
                bias = _frozen(bias, self.reserved_bias) * torch.sigmoid(self.s * self.bias_logits[:out_units])
            return self._call_op(x, weight, bias, logits=logits, s=self.s, frozen_bits=self.reserved_bits)
        frozen = None
        if self.reserved_units is not None:
            frozen = (self.reserved_units, self.reserved_in_units)
            bias = None if bias is None else _frozen(bias, self.reserved_units)
        return self._call_op(x, weight, bias, unit_scale=self._own_unit_mask(None), frozen_units=frozen)

    def _forward_consolidated(self, x, task: int):
        out_units, in_units = self.sizes(task)
        self._check_width(x, in_units)
        # Everything an earlier task uses is reserved: its forward never trains the layer.
        weight = self._view(self.weight, out_units, in_units).detach()
        bias = None if self.bias is None else self.bias[:out_units].detach()
        if self.mask == "weight":
            if bias is not None:
                bias = bias * self._bit_ops().unpack(self._task_bias_bits(task), (out_units,)).to(bias.dtype)
            return self._call_op(x, weight, bias, bits=self.task_bits(task))
        return self._call_op(x, weight, bias, unit_scale=self._own_unit_mask(task))

    def _forward_rows(self, x, row_task: torch.Tensor):
        if row_task.dim() != 1 or row_task.shape[0] != x.shape[0] or row_task.dtype != torch.long:
            raise ValueError(f"{type(self).__name__}: per-row task ids must be a long tensor of shape "
                             f"({x.shape[0]},), got {row_task.dtype} of shape {tuple(row_task.shape)}")
        if row_task.numel() and not 0 <= int(row_task.min()) <= int(row_task.max()) < self.task:
            raise ValueError(f"{type(self).__name__}: per-row task ids must name consolidated tasks "
                             f"0..{self.task - 1}")
        self._check_width(x, self.in_units)
        weight_bits, _, bias_masks, _ = self._row_masks()
        weight = self.active_weight().detach()
        bias = None if self.bias is None else self.bias[: self.out_units].detach()
        if self.mask == "weight":
            y = self._call_op(x, weight, None, bits=weight_bits, row_task=row_task)
            if bias is None:
                return y
            return y + _per_row((bias * bias_masks)[row_task], y, self._OP == "linear")
        # A task's units cover only the inputs it had: zero the newer ones for its rows (DGMw does
        # this through its bits).
        in_masks = _per_row(self._row_masks()[3][row_task], x, self._OP == "linear")
        return self._call_op(x * in_masks, weight, bias, unit_scale=self._own_unit_mask(row_task))

    def unit_mask(self, task: int | torch.Tensor | None = None) -> torch.Tensor:
        """DGMa mask over output units for ``task``: soft ``sigmoid(s * e)`` ``[out]`` for the task
        being learned, binary ``[out_k]`` for a consolidated task, ``[batch, out]`` for per-row ids."""
        if self.mask != "activation":
            raise ValueError("unit_mask applies to mask='activation' layers only")
        if isinstance(task, torch.Tensor):
            return self._row_masks()[1][task]
        if task is None or task == self.task:
            return torch.sigmoid(self.s * self.unit_logits[: self.out_units])
        self._check_task(task)
        return self._bit_ops().unpack(self.task_bits(task), (self.sizes(task)[0],)).to(self.weight.dtype)

    def _own_unit_mask(self, task):
        """The unit mask this layer applies itself: none when its owner applies it later (after a
        norm, which would otherwise undo it: ``defer_unit_mask``)."""
        return None if self.defer_unit_mask else self.unit_mask(task)

    def _row_masks(self):
        """Every consolidated task's masks at the current width (zero outside a task's units):
        weight bits, unit masks, bias masks, input-unit masks (DGMa)."""
        if "rows" not in self._cache:
            shape = self.active_weight().shape
            weight_bits, units, biases, inputs = [], [], [], []
            for task in range(self.task):
                out_units, in_units = self.sizes(task)
                if self.mask == "weight":
                    m = self._bit_ops().unpack(self.task_bits(task), self._weight_shape(out_units, in_units))
                    weight_bits.append(self._bit_ops().pack(_pad_to(m, shape)))
                    if self.bias is not None:
                        b = self._bit_ops().unpack(self._task_bias_bits(task), (out_units,))
                        biases.append(_pad_to(b, (self.out_units,)))
                else:
                    u = self._bit_ops().unpack(self.task_bits(task), (out_units,))
                    units.append(_pad_to(u, (self.out_units,)))
                    inputs.append(torch.arange(self.in_units, device=u.device) < in_units)
            dtype = self.weight.dtype
            self._cache["rows"] = (
                torch.stack(weight_bits) if weight_bits else None,
                torch.stack(units).to(dtype) if units else None,
                torch.stack(biases).to(dtype) if biases else None,
                torch.stack(inputs).to(dtype) if inputs else None,
            )
        return self._cache["rows"]

    # -- task lifecycle -----------------------------------------------------------------------
    def mask_usage(self) -> tuple[torch.Tensor, int]:
        """``(sum(m_t * (1 - m_<t)), sum(1 - m_<t))`` of the current soft mask, for the regulariser."""
        if self.mask == "weight":
            m = torch.sigmoid(self.s * self._view(self.mask_logits, self.out_units, self.in_units))
            parts = [(m, self._reserved_weight())]
            if self.bias is not None:
                parts.append((torch.sigmoid(self.s * self.bias_logits[: self.out_units]), self.reserved_bias))
        else:
            parts = [(torch.sigmoid(self.s * self.unit_logits[: self.out_units]), self.reserved_units)]
        num = sum((m if r is None else m.masked_fill(r, 0)).sum() for m, r in parts)
        return num, self._free

    def _reserved_weight(self) -> torch.Tensor | None:
        """The reserved weights as a bool tensor of the active shape, unpacked once per change of
        the reserved bits rather than at every step."""
        if self.reserved_bits is None:
            return None
        if "reserved" not in self._cache:
            self._cache["reserved"] = self._bit_ops().unpack(self.reserved_bits, self.active_weight().shape)
        return self._cache["reserved"]

    def logits(self) -> list[nn.Parameter]:
        """The mask parameters of the task being learned (for HAT's gradient compensation)."""
        if self.mask == "weight":
            return [p for p in (self.mask_logits, self.bias_logits) if p is not None]
        return [self.unit_logits]

    def reserved_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask (storage shape) of the entries an optimiser must not move."""
        weight = torch.zeros(self.weight.shape, dtype=torch.bool, device=self.weight.device)
        active = self._view(weight, self.out_units, self.in_units)
        masks = {"weight": weight}
        if self.mask == "weight":
            if self.reserved_bits is not None:
                active.copy_(self._reserved_weight())
            if self.bias is not None:
                masks["bias"] = _pad_to(_or_false(self.reserved_bias, self.out_units, weight.device), self.bias.shape)
        else:
            out_res = _or_false(self.reserved_units, self.out_units, weight.device)
            in_res = self.reserved_in_units
            frozen = ops.reference.frozen_weight_mask(active, frozen_units=(out_res, in_res),
                                                      out_dim=self._OUT_DIM)
            active.copy_(frozen)
            if self.bias is not None:
                masks["bias"] = _pad_to(out_res, self.bias.shape)
        return masks

    def set_input_reserved(self, reserved_in: torch.Tensor | None) -> None:
        """DGMa: the reserved output units of the layer feeding this one (``None``: the network input,
        always in use). HAT freezes weight ``(i, j)`` when units ``i`` and ``j`` are both reserved."""
        if self.mask != "activation":
            raise ValueError("set_input_reserved applies to mask='activation' layers only")
        if reserved_in is not None and reserved_in.shape != (self.in_units,):
            raise ValueError(f"reserved_in must have shape ({self.in_units},), got {tuple(reserved_in.shape)}")
        self.reserved_in_units = None if reserved_in is None else reserved_in.to(torch.bool).clone()
        self._changed()

    @torch.no_grad()
    def consolidate(self) -> None:
        """Binarise the current task's mask, store it as bits, reserve it and start the next task."""
        task = self.task
        sizes = torch.tensor([[self.out_units, self.in_units]], device=self.task_sizes.device)
        self.task_sizes = torch.cat([self.task_sizes, sizes])
        if self.mask == "weight":
            m = self._view(self.mask_logits, self.out_units, self.in_units) > 0
            self.register_buffer(f"mask_bits_{task}", self._bit_ops().pack(m))
            reserved = m if self.reserved_bits is None else m | self._bit_ops().unpack(self.reserved_bits, m.shape)
            self.reserved_bits = self._bit_ops().pack(reserved)
            self.mask_logits.zero_()
            if self.bias is not None:
                b = self.bias_logits[: self.out_units] > 0
                self.register_buffer(f"bias_bits_{task}", self._bit_ops().pack(b))
                self.reserved_bias = b if self.reserved_bias is None else b | self.reserved_bias
                self.bias_logits.zero_()
        else:
            u = self.unit_logits[: self.out_units] > 0
            self.register_buffer(f"mask_bits_{task}", self._bit_ops().pack(u))
            self.reserved_units = u if self.reserved_units is None else u | self.reserved_units
            self.unit_logits.zero_()
        self.task += 1
        self._changed()

    def reserved_count(self) -> int:
        """Number of reserved entries: weights (and biases) for DGMw, units for DGMa."""
        if self.mask == "weight":
            n = 0 if self.reserved_bits is None else self._bit_ops().popcount(self.reserved_bits)
            return n + (0 if self.reserved_bias is None else int(self.reserved_bias.sum()))
        return 0 if self.reserved_units is None else int(self.reserved_units.sum())

    def capacity(self) -> int:
        """Number of mask entries at the active size (weights and biases, or units)."""
        if self.mask == "weight":
            return self.active_weight().numel() + (0 if self.bias is None else self.out_units)
        return self.out_units

    def _update_free(self) -> None:
        self._free = self.capacity() - self.reserved_count()

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached masks follow moves and casts
        return super()._apply(fn, *args, **kwargs)

    def _changed(self) -> None:
        self.version += 1  # consumers of the reserved masks (ReservedGuard) refresh on change
        self._cache.clear()
        self._update_free()

    @torch.no_grad()
    def expand(self, out_extra: int = 0, in_extra: int = 0, optimizer: torch.optim.Optimizer | None = None):
        """Grow by ``out_extra`` output and ``in_extra`` input units, in place where capacity allows.

        New weights are initialised like :meth:`reset_parameters`, new mask logits are zero; old
        values (weights and the current task's logits) are untouched. If the storage must grow, it
        doubles (or more), and ``optimizer``'s state of the regrown parameters moves with them.
        """
        if out_extra < 0 or in_extra < 0:
            raise ValueError(f"expand: sizes must be non-negative, got out_extra={out_extra}, in_extra={in_extra}")
        if getattr(self, "groups", 1) != 1 and (out_extra or in_extra):
            raise ValueError("expand: grouped convolutions cannot grow")
        if not (out_extra or in_extra):
            return
        old_shape = self.active_weight().shape
        old_out = self.out_units
        new_out, new_in = self.out_units + out_extra, self.in_units + in_extra
        cap = grown_capacity(self.weight.shape, self._weight_shape(new_out, new_in))
        if cap != tuple(self.weight.shape):
            for name in ("weight", "mask_logits"):
                if getattr(self, name, None) is not None:
                    regrow_parameter(self, name, cap, optimizer)
            for name in ("bias", "bias_logits", "unit_logits"):
                if getattr(self, name, None) is not None:
                    regrow_parameter(self, name, (cap[self._OUT_DIM],), optimizer)
        self.out_units, self.in_units = new_out, new_in
        # Fresh values for the new entries only: draw a whole new-size tensor, keep the old corner.
        active = self.active_weight()
        fresh = torch.empty_like(active)
        self._init_weight_(fresh)
        fresh[: old_shape[0], : old_shape[1]] = active[: old_shape[0], : old_shape[1]]
        active.copy_(fresh)
        if self.bias is not None:
            self._init_bias_(self.bias[old_out:new_out])
        if self.mask == "weight":
            logits = self._view(self.mask_logits, new_out, new_in)
            kept = logits[: old_shape[0], : old_shape[1]].clone()
            logits.zero_()
            logits[: old_shape[0], : old_shape[1]] = kept
        for name in ("bias_logits", "unit_logits"):
            p = getattr(self, name, None)
            if p is not None:
                p[old_out:new_out] = 0
        if self.reserved_bits is not None:
            packing = self._bit_ops()
            self.reserved_bits = packing.pack(_pad_to(packing.unpack(self.reserved_bits, old_shape), active.shape))
        for name in ("reserved_bias", "reserved_units"):
            r = getattr(self, name)
            if r is not None:
                setattr(self, name, _pad_to(r, (new_out,)))
        if self.reserved_in_units is not None:
            self.reserved_in_units = _pad_to(self.reserved_in_units, (new_in,))
        self._changed()

    # -- state --------------------------------------------------------------------------------
    def get_extra_state(self):
        return {name: getattr(self, name) for name in _EXTRA}

    def set_extra_state(self, state) -> None:
        if not isinstance(state, dict) or set(state) != set(_EXTRA):
            raise ValueError(f"{type(self).__name__}: extra state must be a dict with keys {_EXTRA}")
        for name in _EXTRA:
            setattr(self, name, state[name])
        self._changed()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A layer that has consolidated or grown has other shapes and more buffers than a new one:
        # take them from the state dict before loading the values.
        for name, param in list(self._parameters.items()):
            incoming = state_dict.get(prefix + name)
            if param is not None and isinstance(incoming, torch.Tensor) and incoming.shape != param.shape:
                setattr(self, name, nn.Parameter(param.new_empty(incoming.shape)))
        sizes = state_dict.get(prefix + "task_sizes")
        tasks = sizes.shape[0] if isinstance(sizes, torch.Tensor) else 0
        names = [f"mask_bits_{k}" for k in range(tasks)]
        if self.mask == "weight" and self.bias is not None:
            names += [f"bias_bits_{k}" for k in range(tasks)]
        names += ["task_sizes", "reserved_bits", "reserved_bias", "reserved_units", "reserved_in_units"]
        for name in names:
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor):
                self.register_buffer(name, torch.empty(incoming.shape, dtype=incoming.dtype,
                                                       device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"mask={self.mask!r}, task={self.task}, active=(out={self.out_units}, in={self.in_units}), "
                f"s_max={self.s_max:g}, backend={self.backend!r}")


def _per_row(t: torch.Tensor, like: torch.Tensor, units_last: bool) -> torch.Tensor:
    """Per-row unit values ``t[batch, units]`` shaped to broadcast against ``like``: units on the
    last dimension (linear) or on dimension 1 (conv)."""
    ones = (1,) * (like.dim() - 2)
    shape = (t.shape[0],) + ones + (t.shape[1],) if units_last else (t.shape[0], t.shape[1]) + ones
    return t.reshape(shape)


def _pad_to(t: torch.Tensor, shape) -> torch.Tensor:
    """``t`` in the leading corner of a zero (False) tensor of ``shape``."""
    out = t.new_zeros(tuple(shape))
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def _or_false(t: torch.Tensor | None, n: int, device) -> torch.Tensor:
    return t if t is not None else torch.zeros(n, dtype=torch.bool, device=device)
