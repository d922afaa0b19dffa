"""The ``cuda`` backend of :mod:`dgm.ops`: masked ops through the C++/CUDA extension ``dgm._C``.

A masked layer's product runs as ATen's own (cuDNN convolution, GEMM) between two fused passes
over the weight, each one kernel (``torch.ops.dgm.*``, CPU and CUDA):

* before it, ``masked_weight`` writes ``W_eff = W * m`` into a buffer, with ``m`` the soft mask
  ``sigmoid(s * logits)`` or the packed bits, read straight from strided views of the storage;
* after ATen's weight gradient ``G``, ``masked_weight_backward`` writes ``grad_W = G * m * (1 - frozen)``
  and ``grad_logits = G * W * s * m * (1 - m)`` from one read of ``G``.

Unfused, the same step takes a sigmoid, a multiply, the product, then a chain of multiplies and a
``where`` for the two gradients. The meaning of every argument is :mod:`dgm.ops.reference`'s.
The module also exposes the packed-bit ops (same layout and results as :mod:`dgm.bits`). Without
the built extension it still imports; :func:`runs_on` is then ``False`` and :data:`LOAD_ERROR` says why.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import _scale_units

try:
    from .. import _C
except ImportError as exc:  # not built (or built against another torch): the backend is off
    _C = None
    LOAD_ERROR: str | None = f"dgm._C could not be imported ({exc}); build it with `pip install -e .`"
else:
    LOAD_ERROR = None

WITH_CUDA = bool(_C is not None and _C.WITH_CUDA)


def unavailable_reason(device: torch.device | str) -> str | None:
    """Why the extension cannot run on ``device``, or ``None`` if it can."""
    device = torch.device(device)
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return None if WITH_CUDA else "dgm._C was built without CUDA (no CUDA torch or nvcc at build time)"
    return f"dgm._C has no kernels for device type {device.type!r}"


def runs_on(device: torch.device | str) -> bool:
    """The extension is loaded and has kernels for ``device``."""
    return unavailable_reason(device) is None


def _ops():
    if LOAD_ERROR is not None:
        raise RuntimeError(LOAD_ERROR)
    return torch.ops.dgm


# -- packed bits (dgm.bits layout) -----------------------------------------------------------------
def pack(mask: torch.Tensor) -> torch.Tensor:
    """:func:`dgm.bits.pack` in one kernel."""
    return _ops().pack_bits(mask)


def unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    """:func:`dgm.bits.unpack` in one kernel."""
    return _ops().unpack_bits(bits, [int(d) for d in shape])


def union(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Packed bits of ``unpack(a) | unpack(b)``."""
    return _ops().union_bits(a, b)


def popcount(bits: torch.Tensor) -> int:
    """:func:`dgm.bits.popcount` in one kernel."""
    return int(_ops().popcount(bits))


# -- masked products -------------------------------------------------------------------------------
class _Linear:
    """``F.linear`` and its backward pieces, in the form :class:`_MaskedProduct` calls them."""

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
        self.args = (_pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"), transposed,
                     _pair(output_padding, "output_padding"), int(groups))

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
    raise ValueError(f"{name} must be an int or a pair of ints for the cuda backend, got {v!r}")


class _MaskedProduct(torch.autograd.Function):
    """``product(x, freeze(W) * m) + bias`` with the two fused weight passes around ATen's product."""

    @staticmethod
    def forward(ctx, x, weight, bias, logits, s, bits, frozen_bits, frozen_out, frozen_in, out_dim, product):
        masked = logits is not None or bits is not None
        w_eff = _ops().masked_weight(weight, logits, s, bits) if masked else weight
        ctx.save_for_backward(x, weight, w_eff, logits, bits, frozen_bits, frozen_out, frozen_in)
        ctx.s, ctx.out_dim, ctx.product, ctx.masked = s, out_dim, product, masked
        return product.forward(x, w_eff, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight, w_eff, logits, bits, frozen_bits, frozen_out, frozen_in = ctx.saved_tensors
        need_x, need_w, need_b, need_l = ctx.needs_input_grad[:4]
        gx, g, gb = ctx.product.backward(gy, x, w_eff, (need_x, need_w or need_l, need_b))
        gw = gl = None
        if need_w or need_l:
            if ctx.masked or frozen_bits is not None or frozen_out is not None:
                gw, gl = _ops().masked_weight_backward(g, weight, logits, ctx.s, bits, frozen_bits, frozen_out,
                                                       frozen_in, ctx.out_dim, need_w, need_l)
                gw, gl = (gw if need_w else None), (gl if need_l else None)
            else:
                gw = g
        return gx, gw, gb, gl, None, None, None, None, None, None, None


def _apply(product, x, weight, bias, *, logits, s, bits, row_task, frozen_bits, frozen_units, unit_scale, out_dim,
           unit_dim=1):
    frozen_out, frozen_in = frozen_units if frozen_units is not None else (None, None)

    def run(inp, task_bits):
        return _MaskedProduct.apply(inp, weight, bias, logits, float(s), task_bits, frozen_bits, frozen_out,
                                    frozen_in, out_dim, product)

    if row_task is None:
        return _scale_units(run(x, bits), unit_scale, unit_dim)
    # Replay: rows grouped by task, each group through its own task's bits.
    y = None
    for task in torch.unique(row_task).tolist():
        rows = (row_task == task).nonzero(as_tuple=True)[0]
        part = run(x.index_select(0, rows), bits[task])
        if y is None:
            y = part.new_zeros((x.shape[0],) + part.shape[1:])
        y = y.index_copy(0, rows, part)
    return _scale_units(y, unit_scale, unit_dim)


def _conv_apply(product, x, weight, bias, out_dim, **masks):
    """Conv ops accept an unbatched ``[C, H, W]`` input like ``F.conv2d``."""
    if x.dim() == 3 and masks["row_task"] is None:
        return _apply(product, x.unsqueeze(0), weight, bias, out_dim=out_dim, **masks).squeeze(0)
    return _apply(product, x, weight, bias, out_dim=out_dim, **masks)


def linear(x, weight, bias=None, *, logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None,
           frozen_units=None, unit_scale=None):
    """Masked ``F.linear`` (see :func:`dgm.ops.reference.linear`)."""
    return _apply(_Linear, x, weight, bias, logits=logits, s=s, bits=bits, row_task=row_task,
                  frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale, out_dim=0,
                  unit_dim=-1)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, logits=None, s=1.0,
           bits=None, row_task=None, frozen_bits=None, frozen_units=None, unit_scale=None):
    """Masked ``F.conv2d`` (see :func:`dgm.ops.reference.conv2d`); padding as ints, not strings."""
    product = _Conv(stride, padding, dilation, False, 0, groups)
    return _conv_apply(product, x, weight, bias, 0, logits=logits, s=s, bits=bits, row_task=row_task,
                       frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     logits=None, s=1.0, bits=None, row_task=None, frozen_bits=None, frozen_units=None,
                     unit_scale=None):
    """Masked ``F.conv_transpose2d`` (see :func:`dgm.ops.reference.conv_transpose2d`)."""
    product = _Conv(stride, padding, dilation, True, output_padding, groups)
    return _conv_apply(product, x, weight, bias, 1, logits=logits, s=s, bits=bits, row_task=row_task,
                       frozen_bits=frozen_bits, frozen_units=frozen_units, unit_scale=unit_scale)


# -- shapes for torch.compile (fake tensors) -------------------------------------------------------
if _C is not None:
    @torch.library.register_fake("dgm::pack_bits")
    def _pack_fake(mask):
        cols = math.prod(mask.shape[1:])
        return mask.new_empty((mask.shape[0], (cols + 7) // 8), dtype=torch.uint8)

    @torch.library.register_fake("dgm::unpack_bits")
    def _unpack_fake(bits, shape):
        return bits.new_empty(shape, dtype=torch.bool)

    @torch.library.register_fake("dgm::union_bits")
    def _union_fake(a, b):
        return torch.empty_like(a)

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
