"""Drop-in masked layers."""

from .conv import MaskedConv2d, MaskedConvTranspose2d
from .linear import MaskedLinear
from .masked import MaskedLayer

__all__ = ["MaskedLayer", "MaskedLinear", "MaskedConv2d", "MaskedConvTranspose2d"]
