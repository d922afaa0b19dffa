"""The masked implicit-GEMM conv as a ``torch.library`` custom op with autograd, so ``torch.compile``
keeps it whole.

``dgm::masked_conv`` is ``y = (conv(x, W_eff) + bias) * unit_scale`` where ``conv`` is ``conv2d``
or, with ``transposed``, ``conv_transpose2d`` (groups 1). Its backward,
``dgm::masked_conv_backward``, computes the input gradient as the adjoint conv (a conv-transpose
for a conv and vice versa) with the same in-register mask, and the weight gradient as one
implicit GEMM whose epilogue writes ``grad_W`` (masked, frozen entries zeroed) and
``grad_logits``. ``grad_bias`` and ``grad_unit_scale`` are torch reductions, the latter over the
pre-scale output the forward saves only when ``unit_scale`` needs a gradient.
"""

from typing import Optional

import torch
from torch import Tensor

from . import masked_implicit_gemm as ig
from .mask_args import check_masks


@torch.library.custom_op("dgm::masked_conv", mutates_args=())
def masked_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], logits: Optional[Tensor], s: float,
                bits: Optional[Tensor], perm: Optional[Tensor], sorted_task: Optional[Tensor],
                task_offsets: Optional[Tensor], frozen_bits: Optional[Tensor], frozen_out: Optional[Tensor],
                frozen_in: Optional[Tensor], unit_scale: Optional[Tensor], transposed: bool, stride: list[int],
                padding: list[int], dilation: list[int], out_size: list[int],
                save_pre: bool) -> tuple[Tensor, Tensor]:
    """Forward; returns ``(y, pre)`` with ``pre`` empty unless ``save_pre``. The frozen and offset
    arguments are only used by the backward (they ride along for ``setup_context``)."""
    y, pre = ig.conv_mm(x, weight, tuple(out_size), transposed=transposed, stride=stride, padding=padding,
                        dilation=dilation, logits=logits, s=s, bits=bits, perm=perm, sorted_task=sorted_task,
                        bias=bias, scale=unit_scale, write_pre=save_pre)
    return y, pre if pre is not None else x.new_empty(0)


@masked_conv.register_fake
def _(x, weight, bias, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
      unit_scale, transposed, stride, padding, dilation, out_size, save_pre):
    shape = (x.shape[0], weight.shape[1] if transposed else weight.shape[0], *out_size)
    y = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=ig.output_format(x))
    return y, (torch.empty_like(y) if save_pre else x.new_empty(0))


@torch.library.custom_op("dgm::masked_conv_backward", mutates_args=())
def masked_conv_backward(grad: Tensor, x: Tensor, weight: Tensor, logits: Optional[Tensor], s: float,
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
        gx, _ = ig.conv_mm(grad, weight, tuple(x.shape[2:]), transposed=not transposed, logits=logits, s=s,
                           bits=bits, perm=perm, sorted_task=sorted_task, **geometry)
    if need_w or need_logits:
        p, q = (x, grad) if transposed else (grad, x)
        gw, gl = ig.conv_wgrad(p, q, weight, logits=logits, s=s, bits=bits, perm=perm, task_offsets=task_offsets,
                               frozen_bits=frozen_bits, frozen_out=frozen_out, frozen_in=frozen_in,
                               out_on_rows=not transposed, write_w=need_w, write_logits=need_logits, **geometry)
    return tuple(t if t is not None else grad.new_empty(0) for t in (gx, gw, gl))


@masked_conv_backward.register_fake
def _(grad, x, weight, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
      transposed, stride, padding, dilation, need_x, need_w, need_logits):
    gx = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=ig.output_format(grad))
    return (gx if need_x else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_w else grad.new_empty(0),
            logits.new_empty(logits.shape) if need_logits else grad.new_empty(0))


def _setup_context(ctx, inputs, output):
    (x, weight, bias, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
     unit_scale, transposed, stride, padding, dilation, out_size, save_pre) = inputs
    ctx.s, ctx.transposed, ctx.geometry = s, transposed, (stride, padding, dilation)
    ctx.save_for_backward(x, weight, logits, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out,
                          frozen_in, unit_scale, output[1] if save_pre else None)


def _backward(ctx, grad_y, _grad_pre):
    x, weight, logits, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in, u, pre = \
        ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad = grad_y
    grad_bias = grad_u = None
    if u is not None:
        grad = (grad_y * u.reshape(u.shape[0] if u.dim() == 2 else 1, -1, 1, 1)).to(grad_y.dtype)
        if needs[12]:
            gu = (grad_y * pre).sum((2, 3))
            grad_u = (gu.sum(0) if u.dim() == 1 else gu).to(u.dtype)
    if needs[2]:
        grad_bias = grad.sum((0, 2, 3))
    gx, gw, gl = masked_conv_backward(grad, x, weight, logits, ctx.s, bits, perm, sorted_task, task_offsets,
                                      frozen_bits, frozen_out, frozen_in, ctx.transposed, *ctx.geometry,
                                      needs[0], needs[1], needs[3])
    return (gx if needs[0] else None, gw if needs[1] else None, grad_bias, gl if needs[3] else None,
            None, None, None, None, None, None, None, None, grad_u, None, None, None, None, None, None)


masked_conv.register_autograd(_backward, setup_context=_setup_context)


def run(op: str, x: Tensor, weight: Tensor, bias, *, transposed: bool, stride, padding, dilation, out_size,
        logits, s, bits, row_task, frozen_bits, frozen_units, unit_scale) -> Tensor:
    """Validate the mask arguments against the 4-D weight (bits address its 2-D matrix
    ``(shape[0], rest)``) and run the custom op."""
    rows, dim1 = weight.shape[:2]
    out_units, in_units = (dim1, rows) if transposed else (rows, dim1)
    m = check_masks(op, x, weight, out_units, in_units, logits=logits, bits=bits, row_task=row_task,
                    frozen_bits=frozen_bits, frozen_units=frozen_units, bias=bias, unit_scale=unit_scale)
    y, _ = masked_conv(x, weight, bias, logits, float(s), bits, m.perm, m.sorted_task, m.task_offsets, frozen_bits,
                       m.frozen_out, m.frozen_in, unit_scale, transposed, list(stride), list(padding),
                       list(dilation), list(out_size), m.save_pre)
    return y
