"""The masked GEMM as a ``torch.library`` custom op with autograd, so ``torch.compile`` keeps it whole.

``dgm::masked_gemm`` is ``y = (x @ W_eff^T + bias) * unit_scale`` on a 2-D weight matrix; with
``transposed`` the matrix is ``[in, out * kk]`` (conv-transpose layout, ``kk`` columns per output
unit) and ``y = x @ W_eff``. Its backward, ``dgm::masked_gemm_backward``, runs the input-gradient
GEMM with the same in-register mask and one weight-gradient GEMM whose epilogue writes
``grad_W`` (masked, frozen entries zeroed) and ``grad_logits``. The two small reductions,
``grad_bias = sum(dY * u)`` and ``grad_unit_scale = sum(dY * pre)`` over the batch, are torch ops
on the pre-scale output the forward saves only when ``unit_scale`` needs a gradient.
"""

from typing import Optional

import torch
from torch import Tensor

from . import masked_matmul as mm
from .mask_args import check_masks


@torch.library.custom_op("dgm::masked_gemm", mutates_args=())
def masked_gemm(x: Tensor, weight: Tensor, bias: Optional[Tensor], logits: Optional[Tensor], s: float,
                bits: Optional[Tensor], perm: Optional[Tensor], sorted_task: Optional[Tensor],
                task_offsets: Optional[Tensor], frozen_bits: Optional[Tensor], frozen_out: Optional[Tensor],
                frozen_in: Optional[Tensor], unit_scale: Optional[Tensor], transposed: bool, kk: int,
                save_pre: bool) -> tuple[Tensor, Tensor]:
    """Forward; returns ``(y, pre)`` with ``pre`` empty unless ``save_pre``. The frozen and
    offset arguments are only used by the backward (they ride along for ``setup_context``)."""
    y, pre = mm.masked_mm(x, weight, w_rows_are_n=not transposed, logits=logits, s=s, bits=bits, perm=perm,
                          sorted_task=sorted_task, bias=bias, scale=unit_scale,
                          cols_per_unit=kk if transposed else 1, write_pre=save_pre)
    return y, pre if pre is not None else x.new_empty(0)


@masked_gemm.register_fake
def _(x, weight, bias, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
      unit_scale, transposed, kk, save_pre):
    y = x.new_empty((x.shape[0], weight.shape[1] if transposed else weight.shape[0]))
    return y, (torch.empty_like(y) if save_pre else x.new_empty(0))


@torch.library.custom_op("dgm::masked_gemm_backward", mutates_args=())
def masked_gemm_backward(grad: Tensor, x: Tensor, weight: Tensor, logits: Optional[Tensor], s: float,
                         bits: Optional[Tensor], perm: Optional[Tensor], sorted_task: Optional[Tensor],
                         task_offsets: Optional[Tensor], frozen_bits: Optional[Tensor],
                         frozen_out: Optional[Tensor], frozen_in: Optional[Tensor], transposed: bool, kk: int,
                         need_x: bool, need_w: bool, need_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_logits)`` from the gradient of the pre-scale output; the ones
    not asked for are empty."""
    gx = None
    if need_x:
        gx, _ = mm.masked_mm(grad, weight, w_rows_are_n=transposed, logits=logits, s=s, bits=bits, perm=perm,
                             sorted_task=sorted_task)
    gw, gl = None, None
    if need_w or need_logits:
        p, q = (x, grad) if transposed else (grad, x)
        gw, gl = mm.masked_wgrad(p, q, weight, logits=logits, s=s, bits=bits, perm=perm, task_offsets=task_offsets,
                                 frozen_bits=frozen_bits, frozen_out=frozen_out, frozen_in=frozen_in,
                                 out_on_rows=not transposed, cols_per_unit=kk, write_w=need_w,
                                 write_logits=need_logits)
    return tuple(t if t is not None else grad.new_empty(0) for t in (gx, gw, gl))


@masked_gemm_backward.register_fake
def _(grad, x, weight, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
      transposed, kk, need_x, need_w, need_logits):
    return (torch.empty_like(x) if need_x else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_w else grad.new_empty(0),
            logits.new_empty(logits.shape) if need_logits else grad.new_empty(0))


def _setup_context(ctx, inputs, output):
    (x, weight, bias, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
     unit_scale, transposed, kk, save_pre) = inputs
    ctx.s, ctx.transposed, ctx.kk = s, transposed, kk
    ctx.save_for_backward(x, weight, logits, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out,
                          frozen_in, unit_scale, output[1] if save_pre else None)


def _unit_broadcast(u: Tensor, kk: int, transposed: bool) -> Tensor:
    """``unit_scale`` laid out over the output columns (``kk`` columns per unit when transposed)."""
    if transposed and kk > 1:
        u = u.repeat_interleave(kk, dim=-1)
    return u


def _backward(ctx, grad_y, _grad_pre):
    x, weight, logits, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in, u, pre = \
        ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad = grad_y
    grad_bias = grad_u = None
    if u is not None:
        grad = (grad_y * _unit_broadcast(u, ctx.kk, ctx.transposed)).to(grad_y.dtype)
        if needs[12]:
            gu = grad_y * pre
            if ctx.transposed and ctx.kk > 1:
                gu = gu.reshape(gu.shape[0], -1, ctx.kk).sum(-1)
            grad_u = gu.sum(0) if u.dim() == 1 else gu
    if needs[2]:
        grad_bias = grad.sum(0)
        if ctx.transposed and ctx.kk > 1:
            grad_bias = grad_bias.reshape(-1, ctx.kk).sum(-1)
    gx, gw, gl = masked_gemm_backward(grad, x, weight, logits, ctx.s, bits, perm, sorted_task, task_offsets,
                                      frozen_bits, frozen_out, frozen_in, ctx.transposed, ctx.kk,
                                      needs[0], needs[1], needs[3])
    return (gx if needs[0] else None, gw if needs[1] else None, grad_bias, gl if needs[3] else None,
            None, None, None, None, None, None, None, None, grad_u, None, None, None)


masked_gemm.register_autograd(_backward, setup_context=_setup_context)


def run(op: str, x2: Tensor, w2: Tensor, bias, *, logits, s, bits, row_task, frozen_bits, frozen_units, unit_scale,
        transposed: bool, kk: int) -> Tensor:
    """Validate the mask arguments against the 2-D weight matrix ``w2`` and run the custom op.

    ``w2`` is ``[out, in * kk]`` (or ``[in, out * kk]`` when ``transposed``); ``logits`` must be
    the same 2-D view of its storage. Returns ``y`` of shape ``[batch, out]`` (``[batch, out * kk]``).
    """
    rows, cols = w2.shape
    out_units, in_units = (cols // kk, rows) if transposed else (rows, cols // kk)
    m = check_masks(op, x2, w2, out_units, in_units, logits=logits, bits=bits, row_task=row_task,
                    frozen_bits=frozen_bits, frozen_units=frozen_units, bias=bias, unit_scale=unit_scale)
    y, _ = masked_gemm(x2, w2, bias, logits, float(s), bits, m.perm, m.sorted_task, m.task_offsets, frozen_bits,
                       m.frozen_out, m.frozen_in, unit_scale, transposed, kk, m.save_pre)
    return y
