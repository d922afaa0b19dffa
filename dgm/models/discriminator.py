"""The AC-GAN discriminator: a WGAN-GP critic head and an auxiliary classifier head.

The auxiliary head covers every class seen so far and is the classifier DGM is evaluated on. The
discriminator is not masked; it is rebuilt for every task and learns from real data of the task
plus the generator's replay of earlier classes.

Every sample is scored on its own: no normalisation mixes the samples of a batch. The official
code's DCGAN critic has batch norm; here it is a per-sample layer norm (``GroupNorm(1, C)``), for
two reasons measured on the MNIST subset (docs/results.md, "The DCGAN discriminator"):

* a training batch of one task's real images holds only the new classes (one class with the
  paper's layout), and the replay batch only old ones; batch norm subtracts each batch's own mean,
  so the classifier learns on features centred per source and per class and is then evaluated
  with running statistics that mix real images, generated images and gradient-penalty
  interpolates. With batch norm the DCGAN runs lost old and new classes alike;
* the WGAN-GP gradient penalty is a per-sample constraint, which a batch-coupled critic breaks
  (the WGAN-GP paper advises against batch norm in the critic and suggests layer normalisation).
"""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """``features`` -> (critic score ``[B]``, class logits ``[B, num_classes]``)."""

    def __init__(self, features: nn.Module, feature_units: int, num_classes: int, classifier_bias: bool = True):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.features = features
        self.critic = nn.Linear(feature_units, 1)
        self.classifier = nn.Linear(feature_units, num_classes, bias=classifier_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).flatten(1)
        return self.critic(h).squeeze(1), self.classifier(h)


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def dcgan_discriminator(num_classes: int, channels: int = 1, ndf: int = 32) -> Discriminator:
    """Three 5x5 stride-2 convolutions, 32x32 -> 4x4 (the official architecture), each of the last
    two followed by a per-sample layer norm where the official code has batch norm (module doc)."""
    features = nn.Sequential(
        nn.Conv2d(channels, ndf, 5, 2, 2, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, 2 * ndf, 5, 2, 2, bias=False), nn.GroupNorm(1, 2 * ndf), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * ndf, 4 * ndf, 5, 2, 2, bias=False), nn.GroupNorm(1, 4 * ndf), nn.LeakyReLU(0.2),
    )
    features.apply(_dcgan_init)
    return Discriminator(features, 4 * ndf * 4 * 4, num_classes)


def mlp_discriminator(num_classes: int, channels: int = 1, hidden: int = 256, image_size: int = 32) -> Discriminator:
    """Two hidden layers over the flattened image: the small, fast configuration."""
    features = nn.Sequential(
        nn.Flatten(), nn.Linear(channels * image_size ** 2, hidden), nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
    )
    return Discriminator(features, hidden, num_classes)


class _BasicBlock(nn.Module):
    """ResNet-18's block: two 3x3 convs, the first of ``stride``; a 1x1 conv shortcut where the
    shape changes. Per-sample norms where torchvision's has batch norm (module doc)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(1, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(1, out_ch)
        self.shortcut = nn.Identity() if stride == 1 and in_ch == out_ch else nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.GroupNorm(1, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


def resnet_discriminator(num_classes: int, channels: int = 3, ndf: int = 64,
                         feature_units: int = 2048) -> Discriminator:
    """The official code's ImageNet discriminator (``netD`` of ``networks/net_DGMw_imnet.py``):
    torchvision's ResNet-18 layout (7x7/2 conv, 3x3/2 max pool, four stages of two blocks, widths
    ``ndf * (1, 2, 4, 8)``, global average pool; ``ndf=64`` is ResNet-18) whose last layer maps to
    ``feature_units``, then a norm, ReLU, the critic and a bias-free classifier. Every norm is a
    per-sample layer norm where the official code has batch norm (module doc)."""
    stem = [nn.Conv2d(channels, ndf, 7, 2, 3, bias=False), nn.GroupNorm(1, ndf), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    stages, width = [], ndf
    for k, stride in enumerate((1, 2, 2, 2)):
        out = ndf * 2 ** k
        stages += [_BasicBlock(width, out, stride), _BasicBlock(out, out, 1)]
        width = out
    features = nn.Sequential(*stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, feature_units),
                             nn.GroupNorm(1, feature_units), nn.ReLU())
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return Discriminator(features, feature_units, num_classes, classifier_bias=False)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, generator=None) -> torch.Tensor:
    """WGAN-GP: ``E[(||grad_x critic(x)|| - 1)^2]`` on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator, device=real.device)
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score = critic(x)
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


