"""The masked GEMM as a ``torch.library`` custom op with autograd, so ``torch.compile`` keeps it whole.

``dgm::masked_gemm`` is ``y = (x @ W_eff^T + b_eff) * unit_scale`` on a 2-D weight. For one task's
mask (soft or bits) ``W_eff = W * m`` is formed once per call by ``dgm::triton_masked_weight``
(one pass over the weight, in the GEMM's dtype), and both GEMMs that read the weight, the forward
and the input gradient, read it unmasked: the mask is never recomputed per output tile. Replay
(per-row bits) keeps the bits in the k-loop, one pass per task present in a tile, so it adds no
pass. The backward, ``dgm::masked_gemm_backward``, runs the input-gradient GEMM and one
weight-gradient GEMM whose epilogue writes ``grad_W`` (masked, frozen entries zeroed) and
``grad_logits``; the bias and unit-scale gradients are the torch reductions of :mod:`.autograd`.
"""

from typing import Optional

import torch
from torch import Tensor

from . import autograd
from . import linear_kernels as lk
from .mask_args import MaskArgs, check_masks


@torch.library.custom_op("dgm::masked_gemm", mutates_args=())
def masked_gemm(x: Tensor, weight: Tensor, bias: Optional[Tensor], logits: Optional[Tensor],
                bias_logits: Optional[Tensor], s: Optional[Tensor], bits: Optional[Tensor], bias_bits: Optional[Tensor],
                perm: Optional[Tensor], sorted_task: Optional[Tensor], task_offsets: Optional[Tensor],
                frozen_bits: Optional[Tensor], frozen_bias_bits: Optional[Tensor], frozen_out: Optional[Tensor],
                frozen_in: Optional[Tensor], unit_scale: Optional[Tensor], save_pre: bool,
                w_eff: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Forward; returns ``(y, pre)`` with ``pre`` empty unless ``save_pre``. With ``w_eff`` (the
    masked weight) the GEMM reads it instead of ``weight`` and its mask. The frozen and offset
    arguments are only used by the backward (they ride along for ``setup_context``)."""
    if w_eff is not None:
        weight, logits, bits = w_eff, None, None
    y, pre = lk.masked_mm(x, weight, w_rows_are_n=True, logits=logits, s=s, bits=bits, perm=perm,
                          sorted_task=sorted_task, bias=bias, bias_logits=bias_logits, bias_bits=bias_bits,
                          scale=unit_scale, write_pre=save_pre)
    return y, pre if pre is not None else x.new_empty(0)


@masked_gemm.register_fake
def _(x, weight, *masks):
    y = x.new_empty((x.shape[0], weight.shape[0]))
    return y, (torch.empty_like(y) if MaskArgs(*masks[:-1]).save_pre else x.new_empty(0))


@torch.library.custom_op("dgm::triton_masked_weight", mutates_args=())
def masked_weight(weight: Tensor, logits: Optional[Tensor], s: Optional[Tensor], bits: Optional[Tensor]) -> Tensor:
    """``W * m`` (contiguous, ``weight``'s dtype) for one task's mask; no autograd of its own: the
    masked GEMM's backward writes the weight and logit gradients (call it under ``no_grad``)."""
    return lk.masked_weight(weight, logits=logits, s=s, bits=bits)


@masked_weight.register_fake
def _(weight, logits, s, bits):
    return weight.new_empty(weight.shape)


@torch.library.custom_op("dgm::masked_gemm_backward", mutates_args=())
def masked_gemm_backward(grad: Tensor, x: Tensor, weight: Tensor, logits: Optional[Tensor], s: Optional[Tensor],
                         bits: Optional[Tensor], perm: Optional[Tensor], sorted_task: Optional[Tensor],
                         task_offsets: Optional[Tensor], frozen_bits: Optional[Tensor],
                         frozen_out: Optional[Tensor], frozen_in: Optional[Tensor], w_eff: Optional[Tensor],
                         need_x: bool, need_w: bool, need_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_logits)`` from the gradient of the pre-scale output; the ones
    not asked for are empty. The input gradient reads the forward's ``w_eff`` when it had one."""
    gx = None
    if need_x and w_eff is not None:
        gx, _ = lk.masked_mm(grad, w_eff, w_rows_are_n=False)
    elif need_x:
        gx, _ = lk.masked_mm(grad, weight, w_rows_are_n=False, logits=logits, s=s, bits=bits, perm=perm,
                             sorted_task=sorted_task)
    gw, gl = None, None
    if need_w or need_logits:
        gw, gl = lk.masked_wgrad(grad, x, weight, logits=logits, s=s, bits=bits, perm=perm, task_offsets=task_offsets,
                                 frozen_bits=frozen_bits, frozen_out=frozen_out, frozen_in=frozen_in,
                                 write_w=need_w, write_logits=need_logits)
    return tuple(t if t is not None else grad.new_empty(0) for t in (gx, gw, gl))


@masked_gemm_backward.register_fake
def _(grad, x, weight, logits, s, bits, perm, sorted_task, task_offsets, frozen_bits, frozen_out, frozen_in,
      w_eff, need_x, need_w, need_logits):
    return (torch.empty_like(x) if need_x else grad.new_empty(0),
            weight.new_empty(weight.shape) if need_w else grad.new_empty(0),
            logits.new_empty(logits.shape) if need_logits else grad.new_empty(0))


autograd.register(masked_gemm, ("x", "weight") + MaskArgs._fields + ("w_eff",), masked_gemm_backward, ("w_eff",))


def masked_linear(x2: Tensor, weight: Tensor, bias, **masks) -> Tensor:
    """Validate the mask arguments against the 2-D weight and run the custom op on the rows
    ``x2`` ``[batch, in]``; returns ``[batch, out]``."""
    m = check_masks("linear", x2, weight, weight.shape[0], weight.shape[1], bias=bias, **masks)
    w_eff = None
    if m.perm is None and (m.logits is not None or m.bits is not None):
        with torch.no_grad():  # its gradients are the GEMM's backward's
            w_eff = masked_weight(weight, m.logits, m.s, m.bits)
    y, _ = masked_gemm(x2, weight, *m, w_eff)
    return y
