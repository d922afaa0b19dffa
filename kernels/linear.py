"""Masked linear on the fused Triton GEMMs: signature and meaning of :func:`dgm.ops.reference.linear`.

Every mask form is fused: soft mask, one task's bits, per-row bits (replay), frozen bits, HAT's
frozen units, the per-unit or per-row ``unit_scale`` and the bias's mask and freeze. Inputs of
more than two dimensions are flattened to rows; ``row_task`` and ``unit_scale`` are defined on
the rows of a 2-D input, so they need one. fp16, bf16 and fp32 only. What this backend serves is
declared in :mod:`dgm.ops.backends`; an input outside it raises here.
"""

from .linear_op import masked_linear
from .mask_args import check_operands


def linear(x, weight, bias=None, **masks):
    """Masked ``F.linear``; the mask keywords are :func:`dgm.ops.reference.linear`'s."""
    check_operands("linear", x, weight, 2)
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x must end in {weight.shape[1]} features (weight's in), got shape {tuple(x.shape)}")
    if x.dim() != 2 and (masks.get("row_task") is not None or masks.get("unit_scale") is not None):
        raise ValueError(f"linear: row_task and unit_scale address the rows of a 2-D input, got shape "
                         f"{tuple(x.shape)}")
    y = masked_linear(x.reshape(-1, x.shape[-1]), weight, bias, **masks)
    return y.reshape(*x.shape[:-1], weight.shape[0])
