"""The masked implicit-GEMM conv as a ``torch.library`` custom op with autograd, so ``torch.compile``
keeps it whole.

``dgm::masked_conv`` is ``y = (conv(x, W_eff) + b_eff) * unit_scale`` where ``conv`` is ``conv2d``
or, with ``transposed``, ``conv_transpose2d`` (groups 1). Its backward,
``dgm::masked_conv_backward``, computes the input gradient as the adjoint conv (a conv-transpose
for a conv and vice versa) with the same in-register mask, and the weight gradient as one
implicit GEMM whose epilogue writes ``grad_W`` (masked, frozen entries zeroed) and
``grad_logits``; the bias and unit-scale gradients are the torch reductions of :mod:`.autograd`.
"""

from typing import Optional

import torch
from torch import Tensor

from . import autograd
from . import conv_kernels as ck
from .mask_args import MaskArgs, check_masks

# The op's arguments after the masks; the backward takes all but ``out_size``.
GEOMETRY = ("transposed", "stride", "padding", "dilation", "out_size")


@torch.library.custom_op("dgm::masked_conv", mutates_args=())
def masked_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], logits: Optional[Tensor],
                bias_logits: Optional[Tensor], s: Optional[Tensor], bits: Optional[Tensor], bias_bits: Optional[Tensor],
                perm: Optional[Tensor], sorted_task: Optional[Tensor], task_offsets: Optional[Tensor],
                frozen_bits: Optional[Tensor], frozen_bias_bits: Optional[Tensor], frozen_out: Optional[Tensor],
                frozen_in: Optional[Tensor], unit_scale: Optional[Tensor], save_pre: bool, transposed: bool,
                stride: list[int], padding: list[int], dilation: list[int],
                out_size: list[int]) -> tuple[Tensor, Tensor]:
    """Forward; returns ``(y, pre)`` with ``pre`` empty unless ``save_pre``. The frozen and offset
    arguments are only used by the backward (they ride along for ``setup_context``)."""
    y, pre = ck.conv_mm(x, weight, tuple(out_size), transposed=transposed, stride=stride, padding=padding,
                        dilation=dilation, logits=logits, s=s, bits=bits, perm=perm, sorted_task=sorted_task,
                        bias=bias, bias_logits=bias_logits, bias_bits=bias_bits, scale=unit_scale,
                        write_pre=save_pre)
    return y, pre if pre is not None else x.new_empty(0)


@masked_conv.register_fake
def _(x, weight, *args):
    masks, (transposed, _, _, _, out_size) = MaskArgs(*args[:len(MaskArgs._fields)]), args[len(MaskArgs._fields):]
    shape = (x.shape[0], weight.shape[1] if transposed else weight.shape[0], *out_size)
    y = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=ck.output_format(x))
    return y, (torch.empty_like(y) if masks.save_pre else x.new_empty(0))


@torch.library.custom_op("dgm::masked_conv_backward", mutates_args=())
def masked_conv_backward(grad: Tensor, x: Tensor, weight: Tensor, logits: Optional[Tensor], s: Optional[Tensor],
                         bits: Optional[Tensor], perm: Optional[Tensor], sorted_task: Optional[Tensor],
                         task_offsets: Optional[Tensor], frozen_bits: Optional[Tensor],
                         frozen_out: Optional[Tensor], frozen_in: Optional[Tensor], transposed: bool,
                         stride: list[int], padding: list[int], dilation: list[int], need_x: bool, need_w: bool,
                         need_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_logits)`` from the gradient of the pre-scale output; the ones
    not asked for are empty."""
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    gx = gw = gl = None
    if need_x:
        gx, _ = ck.conv_mm(grad, weight, tuple(x.shape[2:]), transposed=not transposed, logits=logits, s=s,
                           bits=bits, perm=perm, sorted_task=sorted_task, **geometry)
    if need_w or need_logits:
        p, q = (x, grad) if transposed else (grad, x)
        gw, gl = ck.conv_wgrad(p, q, weight, logits=logits, s=s, bits=bits, perm=perm, task_offsets=task_offsets,
                               frozen_bits=frozen_bits, frozen_out=frozen_out, frozen_in=frozen_in,
                               out_on_rows=not transposed, write_w=need_w, write_logits=need_logits, **geometry)
    return tuple(t if t is not None else grad.new_empty(0) for t in (gx, gw, gl))


@masked_conv_backward.register_fake
def _(grad, x, weight, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
      transposed, stride, padding, dilation, need_x, need_w, need_logits):
    gx = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=ck.output_format(grad))
    return (gx if need_x else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_w else grad.new_empty(0),
            logits.new_empty(logits.shape) if need_logits else grad.new_empty(0))


autograd.register(masked_conv, ("x", "weight") + MaskArgs._fields + GEOMETRY, masked_conv_backward,
                  extra=GEOMETRY[:-1])


def masked_conv2d(op: str, x: Tensor, weight: Tensor, bias, *, transposed: bool, stride, padding, dilation,
                  out_size, **masks) -> Tensor:
    """Validate the mask arguments against the 4-D weight (bits address its 2-D matrix
    ``(shape[0], rest)``) and run the custom op."""
    rows, dim1 = weight.shape[:2]
    out_units, in_units = (dim1, rows) if transposed else (rows, dim1)
    m = check_masks(op, x, weight, out_units, in_units, bias=bias, **masks)
    y, _ = masked_conv(x, weight, *m, transposed, list(stride), list(padding), list(dilation), list(out_size))
    return y
