"""``MaskedConv2d`` and ``MaskedConvTranspose2d``: the conv layers with a per-task DGM mask."""

from __future__ import annotations

from torch.nn.modules.utils import _pair

from .masked import DEFAULT_S_MAX, MaskedLayer


class _MaskedConv(MaskedLayer):
    _UNIT_DIM = 1
    _INPUT_DIMS = (3, 4)

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                 mask, backend, s_max, weight_init, device, dtype, output_padding=0):
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.output_padding = _pair(output_padding)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        if groups != 1 and mask == "activation":
            raise ValueError("mask='activation' needs groups=1 (HAT masks whole channels)")
        self.groups = groups
        super().__init__(in_channels, out_channels, bias, mask, backend, s_max, weight_init, device, dtype)

    @property
    def in_channels(self) -> int:
        return self.in_units

    @property
    def out_channels(self) -> int:
        return self.out_units

    def extra_repr(self) -> str:
        s = (f"{self.in_units}, {self.out_units}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1,) * len(self.dilation):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * len(self.output_padding):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}, " + super().extra_repr()


class MaskedConv2d(_MaskedConv):
    """Drop-in ``nn.Conv2d`` with a DGM mask over weights (``"weight"``) or output channels
    (``"activation"``)."""

    _OP = "conv2d"
    _OUT_DIM = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, mask: str = "weight", backend: str = "auto",
                 s_max: float = DEFAULT_S_MAX, weight_init=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         mask, backend, s_max, weight_init, device, dtype)

    def _weight_shape(self, out_units, in_units):
        return (out_units, in_units // self.groups, *self.kernel_size)

    def _op_args(self):
        return (self.stride, self.padding, self.dilation, self.groups)


class MaskedConvTranspose2d(_MaskedConv):
    """Drop-in ``nn.ConvTranspose2d`` with a DGM mask over weights (``"weight"``) or output channels
    (``"activation"``). The paper's generator is made of these."""

    _OP = "conv_transpose2d"
    _OUT_DIM = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1, *, mask: str = "weight",
                 backend: str = "auto", s_max: float = DEFAULT_S_MAX, weight_init=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         mask, backend, s_max, weight_init, device, dtype, output_padding=output_padding)

    def _weight_shape(self, out_units, in_units):
        return (in_units, out_units // self.groups, *self.kernel_size)

    def _op_args(self):
        return (self.stride, self.padding, self.output_padding, self.groups, self.dilation)
