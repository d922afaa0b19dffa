"""Drop-in masked layers."""

from .conv import MaskedConv2d, MaskedConvTranspose2d
from .linear import MaskedLinear
from .masked import MaskedLayer, resizing
from .policy import MaskPolicy
from .unit_mask import UnitMask
from .weight_mask import WeightMask

__all__ = ["MaskedLayer", "MaskedLinear", "MaskedConv2d", "MaskedConvTranspose2d", "MaskPolicy", "WeightMask",
           "UnitMask", "resizing"]
