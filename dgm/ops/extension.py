"""The ``extension`` backend of :mod:`dgm.ops`: masked ops through the C++/CUDA extension ``dgm._C``
(its CUDA build on CUDA tensors, its CPU build on CPU tensors).

A masked layer's product runs as ATen's own (cuDNN convolution, GEMM) between two fused passes
over the weight, each one kernel (``torch.ops.dgm.*``, CPU and CUDA):

* before it, ``masked_weight`` writes ``W_eff = W * m`` into a buffer, with ``m`` the soft mask
  ``sigmoid(s * logits)`` or the packed bits, read straight from strided views of the storage;
* after ATen's weight gradient ``G``, ``masked_weight_backward`` writes ``grad_W = G * m * (1 - frozen)``
  and ``grad_logits = G * W * s * m * (1 - m)`` from one read of ``G``.

Unfused, the same step takes a sigmoid, a multiply, the product, then a chain of multiplies and a
``where`` for the two gradients. The bias's mask and freeze (a vector) are the reference's torch
ops (:func:`dgm.ops.reference.effective_bias`); replay is the reference's one product over every
task's masked weight (:func:`dgm.ops.reference.task_rows`, ATen's product; no loop over the tasks
present, no host read). The meaning of every argument is
:mod:`dgm.ops.reference`'s. The module also exposes the packed-bit ops (same layout and results as
:mod:`dgm.bits`). Importing it imports ``dgm._C``; the dispatcher reports when that fails.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _C
from .reference import NO_MASKS, effective_bias, scale_units, sharpness_tensor, task_rows

WITH_CUDA = bool(_C.WITH_CUDA)


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the extension cannot run on ``device``, or ``None`` if it can."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return None if WITH_CUDA else "dgm._C was built without CUDA (no CUDA torch or nvcc at build time)"
    return f"dgm._C has no kernels for device type {device.type!r}"


# -- packed bits (dgm.bits layout) -----------------------------------------------------------------
def pack(mask: torch.Tensor) -> torch.Tensor:
    """:func:`dgm.bits.pack` in one kernel."""
    return torch.ops.dgm.pack_bits(mask)


def unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    """:func:`dgm.bits.unpack` in one kernel."""
    return torch.ops.dgm.unpack_bits(bits, [int(d) for d in shape])


def popcount(bits: torch.Tensor) -> int:
    """:func:`dgm.bits.popcount` in one kernel."""
    return int(torch.ops.dgm.popcount(bits))


# -- masked products -------------------------------------------------------------------------------
class _Linear:
    """``F.linear`` and its backward pieces, in the form :class:`_MaskedProduct` calls them."""

    groups = 1

    @staticmethod
    def forward(x, w, b):
        return F.linear(x, w, b)

    @staticmethod
    def backward(gy, x, w, needs):
        gy2 = gy.reshape(-1, gy.shape[-1])
        gx = gy.matmul(w) if needs[0] else None
        gw = gy2.t().matmul(x.reshape(-1, x.shape[-1])) if needs[1] else None
        gb = gy2.sum(0) if needs[2] else None
        return gx, gw, gb


class _Conv:
    """ATen's convolution (cuDNN on GPU) with fixed hyper-parameters."""

    def __init__(self, stride, padding, dilation, transposed, output_padding, groups):
        self.groups = int(groups)
        self.args = (_pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"), transposed,
                     _pair(output_padding, "output_padding"), self.groups)

    def forward(self, x, w, b):
        return torch.ops.aten.convolution(x, w, b, *self.args)

    def backward(self, gy, x, w, needs):
        bias_sizes = [gy.shape[1]] if needs[2] else None
        return torch.ops.aten.convolution_backward(gy, x, w, bias_sizes, *self.args, list(needs))


def _pair(v, name: str) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return list(v)
    raise ValueError(f"{name} must be an int or a pair of ints for the extension backend, got {v!r}")


class _MaskedProduct(torch.autograd.Function):
    """``product(x, freeze(W) * m) + bias`` with the two fused weight passes around ATen's product."""

    @staticmethod
    def forward(ctx, x, weight, bias, logits, s, bits, frozen_bits, frozen_out, frozen_in, out_dim, product):
        masked = logits is not None or bits is not None
        w_eff = torch.ops.dgm.masked_weight(weight, logits, s, bits) if masked else weight
        ctx.save_for_backward(x, weight, w_eff, logits, s, bits, frozen_bits, frozen_out, frozen_in)
        ctx.out_dim, ctx.product, ctx.masked = out_dim, product, masked
        return product.forward(x, w_eff, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight, w_eff, logits, s, bits, frozen_bits, frozen_out, frozen_in = ctx.saved_tensors
        need_x, need_w, need_b, need_l = ctx.needs_input_grad[:4]
        gx, g, gb = ctx.product.backward(gy, x, w_eff, (need_x, need_w or need_l, need_b))
        gw = gl = None
        if need_w or need_l:
            if ctx.masked or frozen_bits is not None or frozen_out is not None:
                gw, gl = torch.ops.dgm.masked_weight_backward(g, weight, logits, s, bits, frozen_bits, frozen_out,
                                                              frozen_in, ctx.out_dim, need_w, need_l)
                gw, gl = (gw if need_w else None), (gl if need_l else None)
            else:
                gw = g
        return gx, gw, gb, gl, None, None, None, None, None, None, None


def _masked_products(product, x, weight, bias, *, logits, s, bits, row_task, frozen_bits, frozen_units, unit_scale,
                     bias_logits, bias_bits, frozen_bias_bits, out_dim, unit_dim=1):
    """The reference formula with the product fused (:class:`_MaskedProduct`); replay through
    :func:`~dgm.ops.reference.task_rows`."""
    if row_task is not None:
        y = task_rows(product.forward, x, weight, bias, row_task, bits, bias_bits, frozen_bits=frozen_bits,
                      frozen_units=frozen_units, frozen_bias_bits=frozen_bias_bits, out_dim=out_dim,
                      unit_dim=unit_dim, groups=product.groups)
        return scale_units(y, unit_scale, unit_dim)
    frozen_out, frozen_in = frozen_units if frozen_units is not None else (None, None)
    b = effective_bias(bias, bias_logits=bias_logits, s=s, bias_bits=bias_bits, frozen_bias_bits=frozen_bias_bits,
                       frozen_units=frozen_units)
    y = _MaskedProduct.apply(x, weight, b, logits, None if logits is None else sharpness_tensor(s, weight), bits,
                             frozen_bits, frozen_out, frozen_in, out_dim, product)
    return scale_units(y, unit_scale, unit_dim)


def _conv(product, x, weight, bias, out_dim, masks):
    """Conv ops accept an unbatched ``[C, H, W]`` input like ``F.conv2d``."""
    masks = {**NO_MASKS, **masks}
    if x.dim() == 3 and masks["row_task"] is None:
        return _masked_products(product, x.unsqueeze(0), weight, bias, out_dim=out_dim, **masks).squeeze(0)
    return _masked_products(product, x, weight, bias, out_dim=out_dim, **masks)


def linear(x, weight, bias=None, **masks):
    """Masked ``F.linear``; the mask keywords are :func:`dgm.ops.reference.linear`'s."""
    return _masked_products(_Linear, x, weight, bias, out_dim=0, unit_dim=-1, **{**NO_MASKS, **masks})


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, **masks):
    """Masked ``F.conv2d`` (see :func:`dgm.ops.reference.conv2d`); padding as ints, not strings."""
    return _conv(_Conv(stride, padding, dilation, False, 0, groups), x, weight, bias, 0, masks)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, **masks):
    """Masked ``F.conv_transpose2d`` (see :func:`dgm.ops.reference.conv_transpose2d`)."""
    return _conv(_Conv(stride, padding, dilation, True, output_padding, groups), x, weight, bias, 1, masks)


# -- shapes for torch.compile (fake tensors) -------------------------------------------------------

@torch.library.register_fake("dgm::pack_bits")
def _pack_fake(mask):
    cols = math.prod(mask.shape[1:])
    return mask.new_empty((mask.shape[0], (cols + 7) // 8), dtype=torch.uint8)


@torch.library.register_fake("dgm::unpack_bits")
def _unpack_fake(bits, shape):
    return bits.new_empty(shape, dtype=torch.bool)


@torch.library.register_fake("dgm::popcount")
def _popcount_fake(bits):
    return bits.new_empty((), dtype=torch.long)


@torch.library.register_fake("dgm::masked_weight")
def _masked_weight_fake(weight, logits, s, bits):
    return weight.new_empty(weight.shape)


@torch.library.register_fake("dgm::masked_weight_backward")
def _masked_weight_backward_fake(grad, weight, logits, s, bits, frozen_bits, frozen_out, frozen_in, out_dim,
                                 weight_grad, logits_grad):
    return (weight.new_empty(weight.shape if weight_grad else (0,)),
            weight.new_empty(weight.shape if logits_grad else (0,)))


@torch.library.register_fake("dgm::frozen_adam_")
def _frozen_adam_fake(*args):
    return None
