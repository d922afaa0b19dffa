"""The autograd both custom ops share: their inputs by name, and the backward of the forward
epilogue ``y = (acc + b_eff) * unit_scale``.

:func:`register` saves every tensor input by name, so each op's backward reads ``saved["logits"]``
rather than a position, and returns its gradients as ``{input name: gradient}``. The bias and
unit-scale terms are vectors over the output units, so their gradients are small torch reductions
over the batch (and the pixels of a conv) rather than kernels. ``y`` has its units on dimension 1
(``[B, out]`` or ``[B, out, H, W]``).

``b_eff = freeze(bias) * m_b`` as in :mod:`dgm.ops.reference`: ``m_b`` is ``sigmoid(s *
bias_logits)``, one task's bias bits, or per replay row its task's bits; the freeze (packed
``frozen_bias_bits``, or HAT's reserved output units) zeroes ``grad_bias`` there.
"""

from __future__ import annotations

import torch
from torch import Tensor

# What each op's backward custom op takes after the gradient, before its own ``extra`` arguments
# and the three ``need_*`` flags.
BACKWARD_INPUTS = ("x", "weight", "logits", "s", "bits", "perm", "sorted_task", "task_offsets", "frozen_bits",
                   "frozen_out", "frozen_in")


def register(op, names: tuple[str, ...], backward_op, extra: tuple[str, ...] = ()) -> None:
    """Autograd of the custom op ``op`` (inputs ``names``, outputs ``(y, pre)``): the kernels'
    gradients (x, weight, logits) come from ``backward_op(grad, *BACKWARD_INPUTS, *extra, need_x,
    need_w, need_logits)`` on the gradient of the pre-scale output; the epilogue's are added here."""

    def setup_context(ctx, inputs, output):
        args = dict(zip(names, inputs))
        ctx.tensor_names = [n for n, v in args.items() if v is None or isinstance(v, Tensor)]
        ctx.consts = {n: v for n, v in args.items() if n not in ctx.tensor_names}
        ctx.save_for_backward(*(args[n] for n in ctx.tensor_names), output[1] if args["save_pre"] else None)

    def backward(ctx, grad_y, _grad_pre):
        *tensors, pre = ctx.saved_tensors
        saved = dict(zip(ctx.tensor_names, tensors), **ctx.consts)
        needs = dict(zip(names, ctx.needs_input_grad))
        grad, grads = _epilogue_grads(grad_y, pre, saved, needs)
        grads["x"], grads["weight"], grads["logits"] = backward_op(
            grad, *(saved[n] for n in BACKWARD_INPUTS + extra), needs["x"], needs["weight"], needs["logits"])
        return tuple(grads.get(n) if needs[n] else None for n in names)

    op.register_autograd(backward, setup_context=setup_context)


def _units_of(t: Tensor, like: Tensor) -> Tensor:
    """Per-unit ``[out]`` or per-row ``[B, out]`` values shaped to broadcast against ``like`` (sizes
    spelled out: an empty batch has no ``-1`` to infer)."""
    return t.reshape((t.shape[0] if t.dim() == 2 else 1, t.shape[-1]) + (1,) * (like.dim() - 2))


def _bias_bit(bias_bits: Tensor) -> Tensor:
    """Bit 0 of each unit's byte (the :mod:`dgm.bits` layout of a 1-D mask), as bools."""
    return (bias_bits[..., 0] & 1).bool()


def _epilogue_grads(grad_y: Tensor, pre: Tensor | None, saved: dict, needs: dict) -> tuple[Tensor, dict]:
    """``(grad of acc, {input name: gradient})`` for ``unit_scale``, ``bias`` and ``bias_logits``.

    ``saved`` holds the op's inputs by name; ``pre`` is the pre-scale output the forward saved
    when ``unit_scale`` needs a gradient.
    """
    spatial = tuple(range(2, grad_y.dim()))
    u = saved["unit_scale"]
    grad = grad_y
    grads = {}
    if u is not None:
        grad = (grad_y * _units_of(u, grad_y)).to(grad_y.dtype)
        if needs["unit_scale"]:
            per_row = (grad_y * pre).sum(spatial) if spatial else grad_y * pre
            grads["unit_scale"] = (per_row if u.dim() == 2 else per_row.sum(0)).to(u.dtype)
    if needs["bias"] or needs["bias_logits"]:
        grads.update(_bias_grads(grad, saved, needs))
    return grad, grads


def _bias_grads(grad: Tensor, saved: dict, needs: dict) -> dict:
    """``grad_bias = sum(G * m_b) * (1 - frozen)`` and ``grad_bias_logits = sum(G) * b * s * m_b * (1 - m_b)``."""
    bias, logits, bits, s = saved["bias"], saved["bias_logits"], saved["bias_bits"], saved["s"]
    units = (0,) + tuple(range(2, grad.dim()))
    m = None
    if bits is not None and bits.dim() == 3:
        # Replay: each row under its own task's bit, rows taken in the sorted order of the tasks.
        rows = grad.sum(units[1:]) if grad.dim() > 2 else grad
        on = _bias_bit(bits)[saved["sorted_task"].long()]
        g = g_masked = (rows.index_select(0, saved["perm"].long()) * on).sum(0)
    else:
        g = grad.sum(units)
        if logits is not None:
            m = torch.sigmoid(s * logits.float())
        elif bits is not None:
            m = _bias_bit(bits)
        g_masked = g if m is None else g * m
    grads = {}
    if needs["bias"]:
        frozen = saved["frozen_out"]
        if saved["frozen_bias_bits"] is not None:
            frozen = _bias_bit(saved["frozen_bias_bits"])
        grads["bias"] = (g_masked if frozen is None else g_masked.masked_fill(frozen, 0)).to(bias.dtype)
    if needs["bias_logits"]:
        grads["bias_logits"] = (g * bias * s * m * (1 - m)).to(logits.dtype)
    return grads
