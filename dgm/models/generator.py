"""The DGM generator: shared masked layers that grow, with per-task norms and per-class heads.

``G(z, labels, task)`` runs the shared masked body under ``task``'s mask (soft while the task is
learned, binary once consolidated), each hidden layer followed by the batch norm of that task
(statistics differ per task, as in the paper's official code) and ReLU, then the output head of
each row's class and ``tanh``. The label also enters as a one-hot code in the first entries of
``z`` (AC-GAN conditioning). :meth:`MaskedGenerator.generate` runs rows of many consolidated tasks
in one pass per layer (replay), with the same ops whichever tasks and classes the rows hold: the
consolidated tasks' norms and every class's head are tables (:class:`ReplayTables`), built at the
first replay after each consolidation.

Three bodies: :class:`DCGANGenerator` (conv-transpose, 32x32 images: the paper's),
:class:`ResNetGenerator` (residual blocks, 32x32 images: the official code's ImageNet generator) and
:class:`MLPGenerator` (masked linear layers: a small, fast configuration).
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..expansion import layer_growth, padded, weight_growth
from ..layers import MaskedConv2d, MaskedConvTranspose2d, MaskedLayer, MaskedLinear, resizing
from ..ops.reference import stacked_rows
from .blocks import DCGAN_HEAD, check_latent, dcgan_body, dcgan_norm, label_noise


def dcgan_init_(w: torch.Tensor) -> None:
    """DCGAN initialisation, ``N(0, 0.02)``."""
    nn.init.normal_(w, 0.0, 0.02)


class ReplayTables(NamedTuple):
    """What :meth:`MaskedGenerator.generate` reads per row, for every consolidated task and class."""
    affine: list[tuple[torch.Tensor, torch.Tensor]]  # per level: (scale, shift) [tasks, width] of each task's norm
    heads: torch.Tensor                               # every class's head weight, stacked (zeros: no head)
    head_biases: torch.Tensor | None
    has_head: torch.Tensor                            # [num_classes] bool


class MaskedGenerator(nn.Module, metaclass=abc.ABCMeta):
    """Shared logic of the generators; subclasses build ``self.body`` and :meth:`_make_head`, and
    say how a head computes (:meth:`_head_op`, ``_HEAD_IN_DIM``, ``_HEAD_OUT_DIM``, ``_UNIT_DIM``)."""

    body: nn.ModuleList
    _HEAD_IN_DIM: int   # the head weight's dimension of input units
    _HEAD_OUT_DIM: int  # and of outputs
    _UNIT_DIM: int      # the dimension of units in the hidden activations

    def __init__(self, nz: int, num_classes: int, channels: int, image_size: int, mask: str):
        super().__init__()
        check_latent(nz, num_classes)
        self.nz, self.num_classes, self.channels, self.image_size = nz, num_classes, channels, image_size
        self.mask = mask
        self.norms = nn.ModuleList()   # norms[task][layer]
        self.heads = nn.ModuleDict()   # heads[str(class)]
        self.initial_units = 0
        self._replay: ReplayTables | None = None  # built at the first replay after a change

    def _defer_unit_masks(self) -> None:
        for layer in self.body:
            layer.defer_unit_mask = True

    # -- structure ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _norm(self, units: int) -> nn.Module:
        """A task's norm after a layer of ``units`` outputs."""

    @abc.abstractmethod
    def _make_head(self, in_units: int) -> nn.Module:
        """A class's output layer, from the last hidden layer's ``in_units``."""

    @abc.abstractmethod
    def _head_in_units(self, head: nn.Module) -> int:
        """How many hidden units ``head`` reads."""

    @staticmethod
    @abc.abstractmethod
    def _head_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """What a head computes, given its weight and bias."""

    def _to_body_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def _norm_widths(self) -> list[int]:
        """The current width of each of a task's norms: here one after every shared layer."""
        return [layer.out_units for layer in self.body]

    def _body(self, x: torch.Tensor, task, norm) -> torch.Tensor:
        """The shared layers under ``task`` (an id, or per-row ids), ``norm(level, x)`` applying a
        task's ``level``-th norm: here a chain, each layer followed by its norm and ReLU."""
        for level, layer in enumerate(self.body):
            x = self._unit_mask(layer, F.relu(norm(level, layer(x, task))), task)
        return x

    def _to_image(self, y: torch.Tensor) -> torch.Tensor:
        return y.view(y.shape[0], self.channels, self.image_size, self.image_size)

    @property
    def task(self) -> int:
        """The task the generator is learning (= number of consolidated tasks)."""
        return self.body[0].task

    def prepare_task(self, classes: list[int]) -> None:
        """Add the norms of the task about to be learned and the heads of its classes."""
        if len(self.norms) != self.task:
            raise RuntimeError(f"prepare_task: task {self.task} is already prepared")
        for c in classes:
            if not 0 <= c < self.num_classes or str(c) in self.heads:
                raise ValueError(f"class {c} is outside 0..{self.num_classes - 1} or already has a head")
        self.norms.append(self._like_body(nn.ModuleList(self._norm(w) for w in self._norm_widths())))
        for c in classes:
            self.heads[str(c)] = self._like_body(self._make_head(self.body[-1].out_units))
        self._replay = None

    def _like_body(self, module: nn.Module) -> nn.Module:
        """``module`` on the device and in the dtype of the shared layers."""
        weight = self.body[0].weight
        return module.to(device=weight.device, dtype=weight.dtype)

    def set_sharpness(self, s: float | torch.Tensor) -> None:
        """Every masked layer's sharpness, in place (:meth:`MaskedLayer.set_sharpness`)."""
        for layer in self.body:
            layer.set_sharpness(s)

    def masked_layers(self) -> list[MaskedLayer]:
        return list(self.body)

    def task_parameters(self, classes: list[int]) -> list[nn.Parameter]:
        """What learning the current task trains: the shared layers, its norms, its classes' heads."""
        params = list(self.body.parameters()) + list(self.norms[self.task].parameters())
        for c in classes:
            params += list(self.heads[str(c)].parameters())
        return params

    def units(self) -> int:
        """Total output units of the shared layers (the official code's network size)."""
        return sum(layer.out_units for layer in self.body)

    # -- forward ------------------------------------------------------------------------------
    def noise(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent codes for ``labels`` (:func:`~dgm.models.blocks.label_noise`) in the layers' dtype."""
        return label_noise(labels, self.nz, self.num_classes, generator).to(self.body[0].weight.dtype)

    def forward(self, z: torch.Tensor, labels: torch.Tensor, task: int | None = None,
                classes: list[int] | None = None) -> torch.Tensor:
        """Images for ``labels`` under ``task`` (default: the task being learned).

        ``classes``: the classes ``labels`` are drawn from, known on the host (the trainer passes
        the task's). With it the forward never reads ``labels`` back to the host, so a training
        step does not wait for the device; rows whose label is not in ``classes`` get undefined
        images. Without it the labels are read and checked."""
        task = self.task if task is None else task
        self._check(z, labels, task, classes)
        norms = self.norms[task]
        x = self._body(self._to_body_input(z), task, lambda level, x: norms[level](x))
        if classes is None:
            return self._heads(x, labels)
        return self._class_heads(x, labels, classes)

    def _unit_mask(self, layer: MaskedLayer, x: torch.Tensor, task) -> torch.Tensor:
        """DGMa: the task's unit mask after norm and ReLU, so masked units are exactly zero and the
        weights they feed cannot change the task's output (see ``defer_unit_mask``)."""
        if self.mask != "activation":
            return x
        a = layer.unit_mask(task)
        return x * a.view(a.shape[0] if a.dim() == 2 else 1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, row_task: torch.Tensor, z: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Replay: each row under its own consolidated task, one layer call for all rows, and the
        same ops whichever tasks and classes the rows hold (no host read).

        Runs in eval mode: each task's norm is its running statistics, applied per row as an
        affine map; rows of earlier (narrower) tasks are zero outside their units. Each row's
        class head is picked from all heads run at once (:func:`~dgm.ops.reference.stacked_rows`).
        """
        if self.task == 0:
            raise ValueError("generate: no task is consolidated yet")
        tables = self._replay_tables()
        torch._assert_async(tables.has_head[labels].all(), "generate: a label's class has no head")
        z = self.noise(labels, generator) if z is None else z

        def norm(level, x):
            scale, shift = tables.affine[level]
            shape = (x.shape[0], -1) + (1,) * (x.dim() - 2)
            return x * scale[row_task].view(shape) + shift[row_task].view(shape)

        x = self._body(self._to_body_input(z), row_task, norm)
        y = stacked_rows(self._head_op, x, tables.heads, tables.head_biases, labels, self._HEAD_OUT_DIM,
                         self._UNIT_DIM)
        return self._to_image(torch.tanh(y))

    def _replay_tables(self) -> ReplayTables:
        if self._replay is None:
            self._replay = self._build_replay_tables()
        return self._replay

    def _build_replay_tables(self) -> ReplayTables:
        """Each consolidated task's norms as per-unit affine maps ``[tasks, width]`` at each norm's
        current width (zero past the task's units), and every class's head at the last layer's
        current width (zero past the units it reads; zero for classes without a head)."""
        affine = []
        for level, width in enumerate(self._norm_widths()):
            scales, shifts = [], []
            for norms in self.norms[: self.task]:
                norm = norms[level]
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                scales.append(padded(scale, (width,)))
                shifts.append(padded(norm.bias - norm.running_mean * scale, (width,)))
            affine.append((torch.stack(scales), torch.stack(shifts)))
        like = next(iter(self.heads.values()))  # a consolidated task has heads
        shape = list(like.weight.shape)
        shape[self._HEAD_IN_DIM] = self.body[-1].out_units
        heads = like.weight.new_zeros((self.num_classes, *shape))
        biases = None if like.bias is None else like.bias.new_zeros((self.num_classes, like.bias.shape[0]))
        has_head = torch.zeros(self.num_classes, dtype=torch.bool, device=heads.device)
        for c, head in self.heads.items():
            heads[int(c)] = padded(head.weight, tuple(shape))
            if biases is not None:
                biases[int(c)] = head.bias
            has_head[int(c)] = True
        return ReplayTables(affine, heads, biases, has_head)

    def _heads(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each row through its class's own head, at the units that head reads (the forward
        without host-known classes: it reads the labels back)."""
        out = None
        for c in torch.unique(labels).tolist():
            rows = (labels == c).nonzero(as_tuple=True)[0]
            head = self.heads[str(c)]
            y = torch.tanh(head(x.index_select(0, rows)[:, : self._head_in_units(head)]))
            if out is None:
                out = y.new_empty((x.shape[0],) + y.shape[1:])
            out = out.index_copy(0, rows, y)
        return self._to_image(out)

    def _class_heads(self, x: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """Heads of the host-known ``classes``, each over the whole batch, picked per row by label:
        no data-dependent shapes. One head per class is the paper's protocol (one class a task),
        where this costs nothing extra."""
        out = None
        for c in classes:
            head = self.heads[str(c)]
            y = torch.tanh(head(x[:, : self._head_in_units(head)]))
            out = y if out is None else torch.where(_per_row(labels == c, y), y, out)
        return self._to_image(out)

    def _check(self, z, labels, task, classes=None):
        if z.dim() != 2 or z.shape[1] != self.nz:
            raise ValueError(f"z must have shape (batch, {self.nz}), got {tuple(z.shape)}")
        if labels.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(labels.shape)}")
        if not 0 <= task < len(self.norms):
            raise ValueError(f"task {task} was never trained: tasks 0..{len(self.norms) - 1} exist")
        if classes is not None and not classes:
            raise ValueError("classes must name at least one class")
        used = classes if classes is not None else torch.unique(labels).tolist()
        missing = [c for c in used if str(c) not in self.heads]
        if missing:
            raise ValueError(f"classes {missing} have no head: they belong to no task trained so far")

    # -- end of a task ------------------------------------------------------------------------
    @torch.no_grad()
    def consolidate_and_expand(self, optimizer: torch.optim.Optimizer | None = None) -> list[int]:
        """Binarise and reserve the current task's masks, then grow every layer by the capacity the
        task newly reserved (:mod:`dgm.expansion`). Returns the units added per layer."""
        before = [layer.reserved_count() for layer in self.body]
        for layer in self.body:
            layer.consolidate()
        growth = self._grow([layer.reserved_count() - b for layer, b in zip(self.body, before)], optimizer)
        self._replay = None
        return growth

    def _grow(self, new: list[int], optimizer) -> list[int]:
        """Grow the shared layers after ``new`` entries per layer were reserved: here a chain."""
        if self.mask == "weight":
            growth = weight_growth(new, [layer.in_units for layer in self.body],
                                   [layer.out_units for layer in self.body],
                                   [_kernel_area(layer) for layer in self.body])
        else:
            growth = new
        prev = 0
        for layer, d in zip(self.body, growth):
            layer.expand(out_extra=d, in_extra=prev, optimizer=optimizer)
            prev = d
        if self.mask == "activation":
            for prev_layer, layer in zip(self.body[:-1], self.body[1:]):
                layer.set_input_reserved(prev_layer.reserved_units)
        return growth

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A generator's checkpoint is loaded at its sizes: its masked layers grew, and it has a norm
        per task and a head per class learned (rebuilt here); build the optimisers afterwards."""
        with resizing(self):
            return super().load_state_dict(state_dict, strict, assign)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A generator that learned tasks has more norms and heads than a new one: build them first.
        tasks = {int(k.removeprefix(prefix + "norms.").split(".")[0]) for k in state_dict
                 if k.startswith(prefix + "norms.")}
        for task in range(len(self.norms), max(tasks, default=-1) + 1):
            widths = [state_dict[f"{prefix}norms.{task}.{level}.weight"].shape[0]
                      for level in range(len(self._norm_widths()))]
            self.norms.append(self._like_body(nn.ModuleList(self._norm(w) for w in widths)))
        for key, value in state_dict.items():
            if key.startswith(prefix + "heads.") and key.endswith(".weight"):
                c = key.removeprefix(prefix + "heads.").split(".")[0]
                if c not in self.heads:
                    self.heads[c] = self._like_body(self._make_head(self._head_units_from(value)))
        self._replay = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        """Moves and casts leave the replay tables on the old device and dtype: drop them."""
        self._replay = None
        return super()._apply(fn, *args, **kwargs)

    @abc.abstractmethod
    def _head_units_from(self, weight: torch.Tensor) -> int:
        """A head's input units, from its stored weight (to rebuild it from a state dict)."""


def _per_row(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row ``flags[batch]`` shaped to broadcast against ``like``."""
    return flags.view((flags.shape[0],) + (1,) * (like.dim() - 1))


def _kernel_area(layer: MaskedLayer) -> int:
    k = getattr(layer, "kernel_size", (1, 1))
    return k[0] * k[1]


class _ConvGenerator(MaskedGenerator):
    """The conv generators' common parts: ``z`` as a 1x1 image, DCGAN norms and initialisation, and
    a conv head per class, ``_HEAD`` = (module, its functional op, (kernel, stride, padding))."""

    _HEAD: tuple

    def _to_body_input(self, z):
        return z.view(z.shape[0], self.nz, 1, 1)

    def _norm(self, units):
        return dcgan_norm(units)

    def _make_head(self, in_units):
        module, _, geometry = self._HEAD
        head = module(in_units, self.channels, *geometry, bias=False)
        dcgan_init_(head.weight)
        return head

    def _head_in_units(self, head):
        return head.in_channels

    @classmethod
    def _head_op(cls, x, weight, bias):
        _, op, (_, stride, padding) = cls._HEAD
        return op(x, weight, bias, stride, padding)

    def _head_units_from(self, weight):
        return weight.shape[self._HEAD_IN_DIM]


class DCGANGenerator(_ConvGenerator):
    """The paper's generator for 32x32 images: masked conv-transpose 1x1 -> 4x4 -> 8x8 -> 16x16,
    then a per-class conv-transpose to 32x32. Widths ``4*ngf, 2*ngf, ngf`` at the start."""

    _HEAD_IN_DIM, _HEAD_OUT_DIM, _UNIT_DIM = 0, 1, 1
    _HEAD = (nn.ConvTranspose2d, F.conv_transpose2d, DCGAN_HEAD)

    def __init__(self, nz: int, num_classes: int, channels: int = 1, ngf: int = 6, mask: str = "weight",
                 s_max: float = 1e4, backend: str = "auto", image_size: int = 32):
        if image_size != 32:
            raise ValueError(f"DCGANGenerator makes 32x32 images, got image_size={image_size}")
        super().__init__(nz, num_classes, channels, image_size, mask)
        common = {"bias": False, "mask": mask, "s_max": s_max, "backend": backend, "weight_init": dcgan_init_}
        self.body = nn.ModuleList(MaskedConvTranspose2d(*shape, **common) for shape in dcgan_body(nz, ngf))
        self._defer_unit_masks()
        self.initial_units = self.units()



class MLPGenerator(MaskedGenerator):
    """Small, fast generator: two masked linear layers, then a per-class linear head."""

    _HEAD_IN_DIM, _HEAD_OUT_DIM, _UNIT_DIM = 1, 0, -1

    def __init__(self, nz: int, num_classes: int, channels: int = 1, hidden: int = 256, mask: str = "weight",
                 s_max: float = 1e4, backend: str = "auto", image_size: int = 32):
        super().__init__(nz, num_classes, channels, image_size, mask)
        common = {"mask": mask, "s_max": s_max, "backend": backend}
        self.body = nn.ModuleList([MaskedLinear(nz, hidden, **common), MaskedLinear(hidden, hidden, **common)])
        self._defer_unit_masks()
        self.initial_units = self.units()

    def _norm(self, units):
        return nn.BatchNorm1d(units)

    def _make_head(self, in_units):
        return nn.Linear(in_units, self.channels * self.image_size ** 2)

    def _head_in_units(self, head):
        return head.in_features

    @staticmethod
    def _head_op(x, weight, bias):
        return F.linear(x, weight, bias)

    def _head_units_from(self, weight):
        return weight.shape[1]


class ResNetGenerator(_ConvGenerator):
    """The official code's ImageNet generator (``netG`` of ``networks/net_DGMw_imnet.py``), 32x32:
    a masked map from ``z`` to ``ngf`` channels at 4x4, three pre-activation residual blocks that
    each double the side, an output norm and ReLU, then a per-class 3x3 conv head.

    A block: norm, ReLU, nearest x2 upsample, masked 3x3 conv, norm, ReLU, masked 3x3 conv, plus
    the shortcut: the upsampled input through a masked 1x1 conv. ``body`` holds the masked layers
    in order: the first map, then per block ``conv1, shortcut, conv2``. A task's norms: per block
    the one on its input and the one after ``conv1``, then the output norm.

    Where it differs from the official code (configs/README.md):

    * the map ``z -> 4x4`` is a conv-transpose 1x1 -> 4x4, the same linear map as the official
      linear layer to ``16 * ngf`` features, so its units are channels and it grows by whole
      channels (the official one rounds its features up to a multiple of 16);
    * the shortcut conv is always there; the official code uses the identity while a block's
      input and output widths are equal (before any growth). Every masked layer then learns and
      consolidates a mask each task, and no task's block switches between identity and conv;
    * DGMa (the official code has only DGMw here): each layer's unit mask makes the units it does
      not use exactly zero, on the block's output (``conv2`` and shortcut summed, under ``conv2``'s
      mask) and again after each norm and ReLU, as the chain generators do.
    """

    _HEAD_IN_DIM, _HEAD_OUT_DIM, _UNIT_DIM = 1, 0, 1
    _HEAD = (nn.Conv2d, F.conv2d, (3, 1, 1))
    BLOCKS = 3

    def __init__(self, nz: int, num_classes: int, channels: int = 3, ngf: int = 64, mask: str = "weight",
                 s_max: float = 1e4, backend: str = "auto", image_size: int = 32):
        if image_size != 4 * 2 ** self.BLOCKS:
            raise ValueError(f"ResNetGenerator makes {4 * 2 ** self.BLOCKS}x{4 * 2 ** self.BLOCKS} images, "
                             f"got image_size={image_size}")
        super().__init__(nz, num_classes, channels, image_size, mask)
        common = {"bias": False, "mask": mask, "s_max": s_max, "backend": backend, "weight_init": dcgan_init_}
        layers = [MaskedConvTranspose2d(nz, ngf, 4, **common)]
        for _ in range(self.BLOCKS):
            layers += [MaskedConv2d(ngf, ngf, 3, padding=1, **common), MaskedConv2d(ngf, ngf, 1, **common),
                       MaskedConv2d(ngf, ngf, 3, padding=1, **common)]
        self.body = nn.ModuleList(layers)
        self._defer_unit_masks()
        for shortcut in self._blocks()[1]:
            shortcut.defer_unit_mask = False  # its output is summed, not normed: masked where it is made
        self.initial_units = self.units()

    def _blocks(self):
        """``(conv1s, shortcuts, conv2s)`` of the blocks, in order."""
        return self.body[1::3], self.body[2::3], self.body[3::3]

    def _norm_widths(self):
        widths, feeding = [], self.body[0]
        for conv1, _, conv2 in zip(*self._blocks()):
            widths += [feeding.out_units, conv1.out_units]
            feeding = conv2
        return widths + [feeding.out_units]

    def _body(self, x, task, norm):
        x, feeding = self._unit_mask(self.body[0], self.body[0](x, task), task), self.body[0]
        level = 0
        for conv1, shortcut, conv2 in zip(*self._blocks()):
            h = _upsample(self._unit_mask(feeding, F.relu(norm(level, x)), task))
            h = self._unit_mask(conv1, F.relu(norm(level + 1, conv1(h, task))), task)
            x = self._unit_mask(conv2, conv2(h, task) + shortcut(_upsample(x), task), task)
            feeding, level = conv2, level + 2
        return self._unit_mask(feeding, F.relu(norm(level, x)), task)

    def _grow(self, new, optimizer):
        """Growth block by block: ``conv1`` by its own rule; ``conv2`` and the shortcut, whose outputs
        are summed, both by the larger of their two rules (the official code widens both alike)."""
        weight = self.mask == "weight"
        first = self.body[0]
        d_in = layer_growth(new[0], first.in_units, first.out_units, _kernel_area(first), 0) if weight else new[0]
        first.expand(out_extra=d_in, optimizer=optimizer)
        growth, feeding = [d_in], first
        for b, (conv1, shortcut, conv2) in enumerate(zip(*self._blocks())):
            n1, ns, n2 = new[1 + 3 * b: 4 + 3 * b]
            if weight:
                d1 = layer_growth(n1, conv1.in_units, conv1.out_units, _kernel_area(conv1), d_in)
                d_out = max(layer_growth(ns, shortcut.in_units, shortcut.out_units, _kernel_area(shortcut), d_in),
                            layer_growth(n2, conv2.in_units, conv2.out_units, _kernel_area(conv2), d1))
            else:
                d1, d_out = n1, max(ns, n2)
            conv1.expand(out_extra=d1, in_extra=d_in, optimizer=optimizer)
            shortcut.expand(out_extra=d_out, in_extra=d_in, optimizer=optimizer)
            conv2.expand(out_extra=d_out, in_extra=d1, optimizer=optimizer)
            if not weight:
                conv1.set_input_reserved(feeding.reserved_units)
                shortcut.set_input_reserved(feeding.reserved_units)
                conv2.set_input_reserved(conv1.reserved_units)
            growth += [d1, d_out, d_out]
            d_in, feeding = d_out, conv2
        return growth



def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")
