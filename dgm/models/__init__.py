"""The AC-GAN of DGM: masked, growing generators and per-task discriminators."""

from .discriminator import Discriminator, dcgan_discriminator, gradient_penalty, mlp_discriminator
from .generator import DCGANGenerator, MaskedGenerator, MLPGenerator

__all__ = ["MaskedGenerator", "DCGANGenerator", "MLPGenerator", "Discriminator", "dcgan_discriminator",
           "mlp_discriminator", "gradient_penalty"]
