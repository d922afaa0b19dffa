"""``MaskedLayer``: a DGM layer's weights, their storage and growth; its mask policy does the rest.

A masked layer learns one task at a time (``self.task``). What the method does with masks is its
*mask policy* (``self.policy``, :mod:`dgm.layers.policy`): :class:`~dgm.layers.weight_mask.WeightMask`
for ``mask="weight"`` (DGMw), :class:`~dgm.layers.unit_mask.UnitMask` for ``mask="activation"``
(DGMa / HAT). While a task trains its mask is soft, ``sigmoid(s * logits)``;
:meth:`MaskedLayer.consolidate` binarises it (``logits > 0``, the limit ``s -> inf``), stores it as
packed bits (:mod:`dgm.bits`), adds it to the *reserved* union and starts the next task. Reserved
entries are frozen: the op detaches them so their gradient is exactly zero, and
:class:`dgm.optim.ReservedGuard` keeps any optimiser from moving them or their state.

Parameters are stored with spare capacity (:mod:`dgm.expansion`): ``weight`` is the storage and
:meth:`MaskedLayer.active_weight` the view of the units in use, so growing the layer rarely
reallocates, and growing within capacity writes the new entries only (the policy's tensors have
the same capacity). Task ``k`` always runs on the units it had when it was consolidated, which
keeps its output bit-identical however much the layer grows later.
"""

from __future__ import annotations

import abc
import contextlib
import math
import numbers
from typing import Callable

import torch
from torch import nn

from .. import ops
from ..expansion import grown_capacity, new_entries, regrow_parameter
from .policy import MaskPolicy
from .unit_mask import UnitMask
from .weight_mask import WeightMask

MASK_POLICIES: dict[str, type[MaskPolicy]] = {"weight": WeightMask, "activation": UnitMask}
MASK_KINDS = tuple(MASK_POLICIES)
DEFAULT_S_MAX = 400.0
KAIMING_A = math.sqrt(5)  # torch.nn's initialisation of linear and conv weights: kaiming_uniform_(a=sqrt(5))
_EXTRA = ("task", "in_units", "out_units", "s")


def _fan_in(shape) -> int:
    """torch.nn's fan-in of a weight of ``shape``: dimension 1 times the kernel area."""
    return math.prod(shape[1:])


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(where: str, name: str, value, positive: bool = False) -> None:
    """Raise unless ``value`` is a non-negative (or ``positive``) int, not a bool: a ``TypeError`` or
    ``ValueError`` naming ``name`` and what was expected."""
    expected = "a positive int" if positive else "a non-negative int"
    if not _is_int(value):
        raise TypeError(f"{where}: {name} must be {expected}, got {value!r}")
    if value < int(positive):
        raise ValueError(f"{where}: {name} must be {expected}, got {value}")


def check_sharpness(value) -> None:
    """Raise unless ``value`` is a finite positive real number (the sharpness ``s``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"s must be a finite positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"s must be a finite positive number, got {value!r}")


@contextlib.contextmanager
def resizing(module: nn.Module):
    """Within the block, ``module.load_state_dict`` gives the masked layers in ``module`` the sizes
    of the state dict (:meth:`MaskedLayer.load_state_dict` with ``resize=True``, for a whole model)."""
    saved = [(m, m._resize_on_load) for m in module.modules() if isinstance(m, MaskedLayer)]
    for layer, _ in saved:
        layer._resize_on_load = True
    try:
        yield module
    finally:
        for layer, before in saved:  # blocks may nest (a generator's load inside a model's)
            layer._resize_on_load = before


def _refresh_after_load(layer: MaskedLayer, incompatible_keys) -> None:
    """Load post-hook: the policy loads after the layer, so the counts are re-read here."""
    layer._changed()


class MaskedLayer(nn.Module, metaclass=abc.ABCMeta):
    """Base of :class:`~dgm.MaskedLinear`, :class:`~dgm.MaskedConv2d`, :class:`~dgm.MaskedConvTranspose2d`.

    Subclasses set ``_OP`` (the op's name in :mod:`dgm.ops`), ``_OUT_DIM`` (the weight dimension
    that indexes output units) and ``_UNIT_DIM`` (the dimension of units in the op's input and
    output) and implement :meth:`_weight_shape` and :meth:`_op_args`.
    """

    _OP: str
    _OUT_DIM: int
    _UNIT_DIM: int
    _INPUT_DIMS: tuple[int, int | None]  # dims of an unbatched input, of a batched one (None: any more)
    _resize_on_load = False  # set by resizing()
    # State dict version 2: the policy's tensors under ``policy.``, reserved ones at the capacity.
    # Version 1 had them as the layer's own, reserved ones at the active size; they still load.
    _version = 2

    def __init__(self, in_units: int, out_units: int, bias: bool, mask: str, backend: str, s_max: float,
                 weight_init: Callable[[torch.Tensor], None] | None, device=None, dtype=None):
        super().__init__()
        if mask not in MASK_KINDS:
            raise ValueError(f"mask must be one of {MASK_KINDS}, got {mask!r}")
        if not (_is_int(in_units) and _is_int(out_units)) or in_units <= 0 or out_units <= 0:
            raise ValueError(f"in and out sizes must be positive ints, got in={in_units!r}, out={out_units!r}")
        if isinstance(s_max, bool) or not isinstance(s_max, numbers.Real) or not (math.isfinite(s_max) and s_max >= 1):
            raise ValueError(f"s_max must be a finite number >= 1, got {s_max!r}")
        self.backend = ops.check_backend(backend)
        self.s_max = float(s_max)
        # weight_init(w) fills w in place: the whole active weight at construction, the blocks of
        # new entries at growth, so it must draw each entry on its own (as DCGAN's N(0, 0.02)).
        self.weight_init = weight_init
        self.task = 0
        self.in_units, self.out_units = in_units, out_units
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self._weight_shape(out_units, in_units), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_units, **factory))
        else:
            self.register_parameter("bias", None)
        # The sharpness in device memory (set_sharpness writes it in place): every op reads this
        # one tensor, so a step's s never passes through the host and a captured step, or a
        # compiled layer, reads each step's value.
        self.register_buffer("s", torch.full((), 1.0 / self.s_max, device=device,
                                             dtype=ops.reference.sharpness_dtype(self.weight.dtype)),
                             persistent=False)
        self.register_buffer("task_sizes", torch.zeros(0, 2, dtype=torch.long, device=device))
        self.policy = MASK_POLICIES[mask](self.weight.shape, self._OUT_DIM, self._UNIT_DIM, bias, **factory)
        self.version = 0  # counts changes of sizes and reserved masks (ReservedGuard refreshes on it)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.reset_parameters()
        self._recount()

    def set_sharpness(self, s: float | torch.Tensor) -> None:
        """Set ``s`` of the soft mask ``sigmoid(s * logits)`` in place: from a finite positive
        number, or from a 0-d tensor on the layer's device (no host value, so not checked here:
        what a training step uses)."""
        if isinstance(s, torch.Tensor):
            self.s.copy_(s)
        else:
            check_sharpness(s)
            self.s.fill_(s)

    @property
    def mask(self) -> str:
        """``"weight"`` (DGMw) or ``"activation"`` (DGMa)."""
        return self.policy.kind

    @property
    def defer_unit_mask(self) -> bool:
        """DGMa inside a block "layer -> norm -> activation": the owner applies :meth:`unit_mask`
        after the activation, so units outside the mask output exactly zero (HAT's assumption)."""
        return self.policy.defer_unit_mask

    @defer_unit_mask.setter
    def defer_unit_mask(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"defer_unit_mask must be a bool, got {value!r}")
        self.policy.defer_unit_mask = value

    # -- shapes -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _weight_shape(self, out_units: int, in_units: int) -> tuple[int, ...]:
        """Shape of the weight of ``out_units`` x ``in_units`` (the ``torch.nn`` layout)."""

    @abc.abstractmethod
    def _op_args(self) -> tuple:
        """The op's positional layer arguments after ``(x, weight, bias)`` (stride, padding, ...)."""

    def _active_shape(self) -> tuple[int, ...]:
        return self._weight_shape(self.out_units, self.in_units)

    def sizes(self, task: int | None = None) -> tuple[int, int]:
        """``(out_units, in_units)`` used by ``task`` (default: the task being learned)."""
        if task is not None:
            self._check_task(task)
        if task is None or task == self.task:
            return self.out_units, self.in_units
        return self._sizes[task]

    def active_weight(self, task: int | None = None) -> torch.Tensor:
        """View of the weight that ``task`` uses (default: the task being learned)."""
        shape = self._weight_shape(*self.sizes(task))
        return self.weight[: shape[0], : shape[1]]

    def _active_bias(self, out_units: int) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[:out_units]

    def _check_task(self, task) -> None:
        if not _is_int(task):
            raise TypeError(f"{type(self).__name__}: task must be None (the task being learned), an int or, for "
                            f"forward and unit_mask, a 1-D integer tensor of per-row ids; got {task!r}")
        if not 0 <= task <= self.task:
            raise ValueError(f"{type(self).__name__}: task must be an int in [0, {self.task}] (the consolidated "
                             f"tasks and the current one), got {task!r}")

    def _consolidated(self) -> str:
        return (f"consolidated tasks are 0..{self.task - 1}" if self.task
                else "no task has been consolidated yet")

    def _check_row_ids(self, row_task: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Per-row task ids checked (a 1-D integer tensor, of ``batch`` rows if given, naming
        consolidated tasks), as a long tensor."""
        name = type(self).__name__
        dtype = row_task.dtype
        integer = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
        if not integer or row_task.dim() != 1 or (batch is not None and row_task.shape[0] != batch):
            rows = f"({batch},)" if batch is not None else "(batch,)"
            raise ValueError(f"{name}: per-row task ids must be an integer tensor of shape {rows}, got {dtype} "
                             f"of shape {tuple(row_task.shape)}")
        if row_task.device != self.weight.device:
            raise ValueError(f"{name}: per-row task ids are on {row_task.device} but the layer is on "
                             f"{self.weight.device}")
        if not self.task:
            raise ValueError(f"{name}: per-row task ids must name consolidated tasks: {self._consolidated()}")
        # The range is checked on the device (replay never reads the ids back to the host): a
        # RuntimeError on the CPU, a device-side assertion on a GPU.
        torch._assert_async(((row_task >= 0) & (row_task < self.task)).all(),
                            f"{name}: per-row task ids must name consolidated tasks: {self._consolidated()}")
        return row_task.long()

    # -- parameters ---------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Initialise the active weight and bias as the ``torch.nn`` counterpart does."""
        shape = self._active_shape()
        with torch.no_grad():
            self._init_weight_(self.weight[: shape[0], : shape[1]], shape)
            if self.bias is not None:
                self._init_bias_(self.bias[: self.out_units], shape)

    def _init_weight_(self, w: torch.Tensor, shape) -> None:
        """Initialise ``w``, the whole active weight of ``shape`` or a block of its new entries:
        ``weight_init`` (on a contiguous copy: PyTorch's fast random fills need one), or
        ``kaiming_uniform_(a=sqrt(5))`` at the whole weight's fan-in."""
        if self.weight_init is not None:
            block = torch.empty_like(w, memory_format=torch.contiguous_format)
            self.weight_init(block)
            w.copy_(block)
            return
        gain = nn.init.calculate_gain("leaky_relu", KAIMING_A)
        bound = math.sqrt(3.0) * (gain / math.sqrt(_fan_in(shape)))  # as nn.init.kaiming_uniform_
        w.uniform_(-bound, bound)

    def _init_bias_(self, b: torch.Tensor, shape) -> None:
        bound = 1 / math.sqrt(_fan_in(shape))
        nn.init.uniform_(b, -bound, bound)

    def _bit_ops(self):
        """Packing functions for this layer's backend and device (:func:`dgm.ops.bit_ops`)."""
        return ops.bit_ops(self.backend, self.weight.device)

    def task_bits(self, task: int) -> torch.Tensor:
        """Packed binary mask of consolidated ``task``: its weight bits (DGMw) or unit bits (DGMa)."""
        if not _is_int(task):
            raise TypeError(f"{type(self).__name__}.task_bits: task must be an int, got {task!r}")
        if not 0 <= task < self.task:
            raise ValueError(f"{type(self).__name__}.task_bits: task {task} was never consolidated: "
                             f"{self._consolidated()}")
        return self.policy.task_bits(task)

    def logits(self) -> list[nn.Parameter]:
        """The mask parameters of the task being learned (for HAT's gradient compensation)."""
        return self.policy.logits()

    # -- the policy's tensors under the layer's former attribute names --------------------------
    @property
    def mask_logits(self) -> nn.Parameter:
        """DGMw: the weight mask logits of the task being learned (storage shape)."""
        return self.policy.mask_logits

    @property
    def bias_logits(self) -> nn.Parameter | None:
        """DGMw: the bias mask logits of the task being learned (storage length)."""
        return self.policy.bias_logits

    @property
    def unit_logits(self) -> nn.Parameter:
        """DGMa: the unit mask logits of the task being learned (storage length)."""
        return self.policy.unit_logits

    @property
    def reserved_bits(self) -> torch.Tensor | None:
        """DGMw: the reserved weights, packed at the active shape (a view)."""
        return self.policy.reserved_bits(self._active_shape())

    @property
    def reserved_bias(self) -> torch.Tensor | None:
        """DGMw: the reserved bias entries of the active units."""
        return self.policy.reserved_bias(self.out_units)

    @property
    def reserved_units(self) -> torch.Tensor | None:
        """DGMa: the reserved units among the active ones."""
        return self.policy.reserved_units(self.out_units)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, task: int | torch.Tensor | None = None) -> torch.Tensor:
        """Run under the mask of ``task``: ``None`` (or the current id) for the task being learned,
        with the soft mask at sharpness ``self.s``; an earlier task id for its binary mask, on the
        units it had; or a per-row tensor of earlier task ids (replay in one call, all rows at the
        current width, each row's units outside its task masked to zero). As in ``torch.nn``, an
        unbatched input (1-D for linear, 3-D for conv) is a batch of one."""
        self._check_input(x)
        if x.dim() == self._INPUT_DIMS[0]:
            if isinstance(task, torch.Tensor):
                raise ValueError(f"{type(self).__name__}: per-row task ids need a batched input, got shape "
                                 f"{tuple(x.shape)}")
            return self.forward(x.unsqueeze(0), task).squeeze(0)
        if isinstance(task, torch.Tensor):
            row_task = self._check_row_ids(task, x.shape[0])
            self._check_width(x, self.in_units)
            weight, bias = self._frozen_views(self.out_units)
            return self.policy.forward_rows(self._call_op, x, row_task, weight, bias, self._shapes, self._bit_ops())
        if task is not None:
            self._check_task(task)
        if task is None or task == self.task:
            self._check_width(x, self.in_units)
            return self.policy.forward_current(self._call_op, x, self.active_weight(),
                                               self._active_bias(self.out_units), self.s)
        out_units, in_units = self.sizes(task)
        self._check_width(x, in_units)
        weight, bias = self._frozen_views(out_units, task)
        return self.policy.forward_task(self._call_op, x, task, weight, bias, self._bit_ops())

    def _frozen_views(self, out_units: int, task: int | None = None):
        """Detached weight and bias views of ``task``: everything an earlier task uses is reserved,
        so running it never trains the layer."""
        bias = self._active_bias(out_units)
        return self.active_weight(task).detach(), None if bias is None else bias.detach()

    def _check_input(self, x) -> None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: input must be a tensor, got {type(x).__name__}")
        if x.device != self.weight.device:
            raise ValueError(f"{name}: input is on {x.device} but the layer is on {self.weight.device}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"{name}: input dtype {x.dtype} does not match the layer's {self.weight.dtype}")
        unbatched, batched = self._INPUT_DIMS
        if x.dim() < unbatched or (batched is not None and x.dim() > batched):
            most = f"{batched}-D" if batched is not None else f"{unbatched + 1}-D or more"
            raise ValueError(f"{name}: expected a {unbatched}-D (unbatched) or {most} (batched) input, got shape "
                             f"{tuple(x.shape)}")

    def _check_width(self, x: torch.Tensor, in_units: int) -> None:
        dim = self._UNIT_DIM
        if x.shape[dim] != in_units:
            raise ValueError(f"{type(self).__name__}: expected input with {in_units} features in dim {dim}, "
                             f"got shape {tuple(x.shape)}")

    def _call_op(self, x, weight, bias, **masks):
        return getattr(ops, self._OP)(x, weight, bias, *self._op_args(), backend=self.backend, **masks)

    def unit_mask(self, task: int | torch.Tensor | None = None) -> torch.Tensor:
        """DGMa mask over output units for ``task``: soft ``sigmoid(s * e)`` ``[out]`` for the task
        being learned, binary ``[out_k]`` for a consolidated task, ``[batch, out]`` for per-row ids."""
        if isinstance(task, torch.Tensor):
            task = self._check_row_ids(task)
        elif task is not None:
            self._check_task(task)
            task = None if task == self.task else task
        return self.policy.unit_mask(task, self.s, self._active_shape(), self._shapes, self._bit_ops())

    # -- task lifecycle -----------------------------------------------------------------------
    def mask_usage(self) -> tuple[torch.Tensor, int]:
        """``(sum(m_t * (1 - m_<t)), sum(1 - m_<t))`` of the current soft mask, for the regulariser."""
        return self.policy.usage(self._active_shape(), self.s, self._bit_ops()), self.capacity() - self._reserved

    def reserved_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask (storage shape) of the entries an optimiser must not move."""
        return self.policy.reserved_masks(self._active_shape(), tuple(self.weight.shape), self._bit_ops())

    def set_input_reserved(self, reserved_in: torch.Tensor | None) -> None:
        """DGMa: the reserved output units of the layer feeding this one (``None``: the network input,
        always in use). HAT freezes weight ``(i, j)`` when units ``i`` and ``j`` are both reserved."""
        self.policy.set_input_reserved(reserved_in, self.in_units, self.weight.shape[1 - self._OUT_DIM])
        self._changed(recount=False)

    @torch.no_grad()
    def consolidate(self) -> None:
        """Binarise the current task's mask, store it as bits, reserve it and start the next task.

        Refuses a task whose mask logits are all zero, as construction, growth and the previous
        ``consolidate()`` leave them: nothing was learned, and its mask would be empty."""
        if not any(bool(p.any()) for p in self.logits()):
            raise ValueError(f"{type(self).__name__}.consolidate: nothing was learned for task {self.task} (its "
                             f"mask logits are all zero): consolidating it would store an empty mask")
        sizes = torch.tensor([[self.out_units, self.in_units]], device=self.task_sizes.device)
        self.task_sizes = torch.cat([self.task_sizes, sizes])
        self.policy.consolidate(self.task, self._active_shape(), self._bit_ops())
        self.task += 1
        self._changed()

    def reserved_count(self) -> int:
        """Number of reserved entries: weights (and biases) for DGMw, units for DGMa."""
        return self._reserved

    def capacity(self) -> int:
        """Number of mask entries at the active size (weights and biases, or units)."""
        return self.policy.entries(self._active_shape())

    def _changed(self, recount: bool = True) -> None:
        """Sizes or reserved masks changed: a new ``version`` for the consumers of the reserved masks
        (ReservedGuard), and the masks derived from them are dropped. ``recount=False``: nothing
        new was reserved or consolidated (growth, input reservations)."""
        self.version += 1
        self.policy.changed()
        if recount:
            self._recount()

    def _recount(self) -> None:
        """Read the consolidated tasks' sizes to the host and count the reserved entries."""
        self._sizes = [(out_units, in_units) for out_units, in_units in self.task_sizes.tolist()]
        self._shapes = [self._weight_shape(*sizes) for sizes in self._sizes]
        self._reserved = self.policy.reserved_count(self._bit_ops())

    @torch.no_grad()
    def expand(self, out_extra: int = 0, in_extra: int = 0, optimizer: torch.optim.Optimizer | None = None):
        """Grow by ``out_extra`` output and ``in_extra`` input units, in place where capacity allows.

        Only the new entries are written: new weights are initialised like :meth:`reset_parameters`
        (at the grown weight's fan-in), new mask logits are zero; old values (weights, the current
        task's logits, the reserved masks) stay where they are. If the storage must grow, it doubles
        (or more), and ``optimizer``'s state of the regrown parameters moves with them.
        """
        where = f"{type(self).__name__}.expand"
        check_count(where, "out_extra", out_extra)
        check_count(where, "in_extra", in_extra)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{where}: optimizer must be a torch.optim.Optimizer or None, "
                            f"got {type(optimizer).__name__}")
        if getattr(self, "groups", 1) != 1 and (out_extra or in_extra):
            raise ValueError("expand: grouped convolutions cannot grow")
        if not (out_extra or in_extra):
            return
        old, old_out = self._active_shape(), self.out_units
        self.out_units, self.in_units = self.out_units + out_extra, self.in_units + in_extra
        new = self._active_shape()
        capacity = grown_capacity(self.weight.shape, new)
        if capacity != tuple(self.weight.shape):
            regrow_parameter(self, "weight", capacity, optimizer)
            if self.bias is not None:
                regrow_parameter(self, "bias", (capacity[self._OUT_DIM],), optimizer)
        for block in new_entries(old, new):
            self._init_weight_(self.weight[block], new)
        if self.bias is not None:
            self._init_bias_(self.bias[old_out:self.out_units], new)
        self.policy.grow(old, new, capacity, optimizer)
        self._changed(recount=False)

    def _apply(self, fn, *args, **kwargs):
        """Moves and casts (``to``, ``half``, ...) move ``s`` and keep it in the dtype the ops read
        for the weight's (:func:`dgm.ops.reference.sharpness_dtype`: ``s`` up to ``s_max`` overflows
        half precision)."""
        super()._apply(fn, *args, **kwargs)
        self.s = self.s.to(ops.reference.sharpness_dtype(self.weight.dtype))
        return self

    # -- state --------------------------------------------------------------------------------
    def get_extra_state(self):
        return {name: float(self.s) if name == "s" else getattr(self, name) for name in _EXTRA}

    def set_extra_state(self, state) -> None:
        where = f"{type(self).__name__} extra state"
        if not isinstance(state, dict) or set(state) != set(_EXTRA):
            raise ValueError(f"{where} must be a dict with keys {_EXTRA}")
        check_count(where, "task", state["task"])
        check_count(where, "in_units", state["in_units"], positive=True)
        check_count(where, "out_units", state["out_units"], positive=True)
        check_sharpness(state["s"])
        for name in _EXTRA:
            if name == "s":
                self.set_sharpness(state[name])
            else:
                setattr(self, name, state[name])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False, *, resize: bool = False):
        """``nn.Module.load_state_dict``. As in ``torch.nn``, a state dict of other sizes (a layer
        that grew, or was built with other sizes) raises a size mismatch and leaves the layer as it
        was; ``resize=True`` gives the layer its sizes instead, and the parameters whose shape changes
        are new objects (build the optimiser anew). For a model: :func:`resizing`."""
        with resizing(self) if resize else contextlib.nullcontext():
            return super().load_state_dict(state_dict, strict, assign)

    def _size_mismatches(self, state_dict, prefix: str) -> list[str]:
        """The parameters (the layer's and its policy's) and active sizes ``state_dict`` has other
        than this layer, in ``torch.nn``'s words."""
        found = []
        for name, param in self.named_parameters():
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != param.shape:
                found.append(f"size mismatch for {prefix}{name}: copying a param with shape {incoming.shape} from "
                             f"checkpoint, the shape in current model is {param.shape}.")
        extra = state_dict.get(prefix + "_extra_state")
        for name in ("out_units", "in_units"):
            if isinstance(extra, dict) and extra.get(name, getattr(self, name)) != getattr(self, name):
                found.append(f"size mismatch for {prefix}{name}: {extra[name]!r} in checkpoint, "
                             f"{getattr(self, name)} in current model.")
        return found

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        incoming_weight = state_dict.get(prefix + "weight")
        if (local_metadata.get("version") or 1) < 2:
            capacity = incoming_weight.shape if isinstance(incoming_weight, torch.Tensor) else self.weight.shape
            self.policy.upgrade_state(state_dict, prefix, prefix + "policy.", tuple(capacity))
        mismatches = [] if self._resize_on_load else self._size_mismatches(state_dict, prefix)
        if mismatches:  # raised before anything is loaded, so the layer stays as it was
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(mismatches)
                               + "\n\tLoad with resize=True (or within dgm.layers.resizing(model)) to take its sizes.")
        # A layer that has consolidated or grown has other shapes than a new one: take them from the
        # state dict before loading the values.
        for name, param in list(self._parameters.items()):
            incoming = state_dict.get(prefix + name)
            if param is not None and isinstance(incoming, torch.Tensor) and incoming.shape != param.shape:
                setattr(self, name, nn.Parameter(param.new_empty(incoming.shape)))
        sizes = state_dict.get(prefix + "task_sizes")
        if isinstance(sizes, torch.Tensor):
            self.register_buffer("task_sizes", torch.empty(sizes.shape, dtype=sizes.dtype, device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"mask={self.mask!r}, task={self.task}, active=(out={self.out_units}, in={self.in_units}), "
                f"s_max={self.s_max:g}, backend={self.backend!r}")
