"""Masked conv2d / conv-transpose2d on the Triton backend: signatures and meaning of
:mod:`dgm.ops.reference`.

Fused, as implicit GEMMs with the mask formed in registers (:mod:`.conv_kernels`, autograd in
:mod:`.conv_op`): every stride, padding, dilation and output padding as ints with ``groups=1``,
batched 4-D input in fp32/fp16/bf16, and every mask form -- soft mask, one task's bits, per-row
bits (replay), frozen bits, HAT's frozen units, per-unit or per-row ``unit_scale``, the bias's
mask and freeze. NCHW and channels_last inputs are both read in place through their strides (no
conversion); the output keeps the input's memory format. Weights and logits may be strided views
of a larger storage. Grouped convs, string padding and unbatched inputs are not served (declared in
:mod:`dgm.ops.backends`): they raise here, as does a geometry ``F.conv2d`` would reject.
"""

from torch.nn.modules.utils import _pair

from .conv_op import masked_conv2d
from .mask_args import check_operands


def _geometry(op: str, **params) -> list[tuple[int, int]]:
    """The conv parameters as pairs of ints."""
    pairs = []
    for name, value in params.items():
        p = _pair(value)
        if isinstance(value, str) or len(p) != 2 or not all(isinstance(v, int) for v in p):
            raise ValueError(f"{op}: the triton backend takes {name} as an int or a pair of ints, got {value!r}")
        pairs.append(p)
    return pairs


def _check_input(op: str, x, weight, groups, channels_dim: int) -> None:
    check_operands(op, x, weight, 4)
    if groups != 1:
        raise ValueError(f"{op}: the triton backend runs groups=1 only, got groups={groups!r}")
    if x.dim() != 4:
        raise ValueError(f"{op}: the triton backend takes a batched 4-D input, got shape {tuple(x.shape)}")
    if x.shape[1] != weight.shape[channels_dim]:
        raise ValueError(f"{op}: input has {x.shape[1]} channels, the weight expects {weight.shape[channels_dim]}")


def _out_size(op: str, x, weight, stride, padding, dilation, output_padding=None) -> list[int]:
    """The output's spatial size; raises where ``F.conv2d``/``F.conv_transpose2d`` would."""
    if min(stride) <= 0 or min(dilation) <= 0 or min(padding) < 0:
        raise ValueError(f"{op}: stride and dilation must be positive and padding non-negative, got "
                         f"stride={stride}, padding={padding}, dilation={dilation}")
    out = []
    for i in range(2):
        size, k, s, p, d = x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]
        if output_padding is None:
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        else:
            if not 0 <= output_padding[i] < max(s, d):
                raise ValueError(f"{op}: output_padding must be smaller than stride or dilation, got "
                                 f"output_padding={output_padding}")
            out.append((size - 1) * s - 2 * p + d * (k - 1) + output_padding[i] + 1)
    if min(out) <= 0:
        raise ValueError(f"{op}: the output size {out} is too small (input {tuple(x.shape)}, kernel "
                         f"{tuple(weight.shape[2:])})")
    return out


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, **masks):
    """Masked ``F.conv2d``; the mask keywords are :func:`dgm.ops.reference.conv2d`'s."""
    _check_input("conv2d", x, weight, groups, 1)
    st, pad, dil = _geometry("conv2d", stride=stride, padding=padding, dilation=dilation)
    out = _out_size("conv2d", x, weight, st, pad, dil)
    return masked_conv2d("conv2d", x, weight, bias, transposed=False, stride=st, padding=pad, dilation=dil,
                         out_size=out, **masks)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, **masks):
    """Masked ``F.conv_transpose2d``; the mask keywords are :func:`dgm.ops.reference.conv_transpose2d`'s."""
    _check_input("conv_transpose2d", x, weight, groups, 0)
    st, pad, dil, opad = _geometry("conv_transpose2d", stride=stride, padding=padding, dilation=dilation,
                                   output_padding=output_padding)
    out = _out_size("conv_transpose2d", x, weight, st, pad, dil, opad)
    return masked_conv2d("conv_transpose2d", x, weight, bias, transposed=True, stride=st, padding=pad, dilation=dil,
                         out_size=out, **masks)
