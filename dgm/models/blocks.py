"""What every conditional generator here shares: the latent code that carries the label, and the
DCGAN geometry. DGM's masked generator (:mod:`dgm.models.generator`) and the replay baseline's
plain one (:mod:`dgm.methods.replay`) build on these, so the baseline is the same network without
masks or growth."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The per-class output layer of the DCGAN generator (kernel, stride, padding): 16x16 -> 32x32.
DCGAN_HEAD = (4, 2, 1)


def check_latent(nz: int, num_classes: int) -> None:
    if nz < num_classes:
        raise ValueError(f"nz={nz} must be >= num_classes={num_classes}: z carries the one-hot label")


def label_noise(labels: torch.Tensor, nz: int, num_classes: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Latent codes for ``labels``: Gaussian, with the one-hot label in the first entries (AC-GAN
    conditioning, as in the official code)."""
    z = torch.randn(labels.shape[0], nz, generator=generator, device=labels.device)
    z[:, :num_classes] = F.one_hot(labels, num_classes).to(z.dtype)
    return z


def dcgan_body(nz: int, ngf: int) -> list[tuple[int, int, int, int, int]]:
    """``(in, out, kernel, stride, padding)`` of the DCGAN generator's shared conv-transpose layers,
    1x1 -> 4x4 -> 8x8 -> 16x16, widths ``4*ngf, 2*ngf, ngf``."""
    return [(nz, 4 * ngf, 4, 1, 0), (4 * ngf, 2 * ngf, 4, 2, 1), (2 * ngf, ngf, 4, 2, 1)]


def dcgan_norm(units: int) -> nn.BatchNorm2d:
    """The batch norm after a DCGAN generator layer, its scale drawn from ``N(1, 0.02)``."""
    norm = nn.BatchNorm2d(units)
    nn.init.normal_(norm.weight, 1.0, 0.02)
    return norm
