"""The AC-GAN of DGM: masked, growing generators and per-task discriminators."""

from .discriminator import (
    Discriminator,
    dcgan_discriminator,
    gradient_penalty,
    mlp_discriminator,
    resnet_discriminator,
)
from .generator import DCGANGenerator, MaskedGenerator, MLPGenerator, ResNetGenerator

__all__ = ["MaskedGenerator", "DCGANGenerator", "MLPGenerator", "ResNetGenerator", "Discriminator",
           "dcgan_discriminator", "mlp_discriminator", "resnet_discriminator", "gradient_penalty"]
