"""dgm: continual learning with Dynamic Generative Memory (Ostapenko et al., CVPR 2019)."""

from . import bits, masks, ops, optim
from .layers import MaskedConv2d, MaskedConvTranspose2d, MaskedLayer, MaskedLinear

__version__ = "0.1.0"
__all__ = ["MaskedLayer", "MaskedLinear", "MaskedConv2d", "MaskedConvTranspose2d", "bits", "masks", "ops", "optim"]
