"""``replay``: MeRGAN-style joint retraining, the generative-replay baseline without masks or growth.

A plain conditional generator (:class:`ReplayGenerator`) and, as in DGM, a discriminator rebuilt
every task. At task ``t`` the generator first makes the replay of every earlier class (so it is the
generator as it was after task ``t - 1``, a frozen copy), then the AC-GAN trains on real data of
task ``t`` plus that replay: the critic sees both as real, the generator makes every class seen,
and the classifier learns them exactly as DGM's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..models.blocks import DCGAN_HEAD, check_latent, dcgan_body, dcgan_norm, label_noise
from ..models.generator import dcgan_init_
from .base import (
    GenerativeLearner,
    TaskSetup,
    adam,
    build_discriminator,
    classes_seen,
    discriminator_loss,
    generator_loss,
    replay_batch,
    replay_for,
    replay_rng,
)


class ReplayGenerator(nn.Module):
    """MeRGAN's generator: the layers of DGM's generator at their initial widths, as ordinary layers,
    each followed by one batch norm that every class shares and ReLU, then one output layer and
    ``tanh``. As in DGM the one-hot label fills the first entries of ``z``; the AC-GAN loss makes
    the generator follow it."""

    def __init__(self, config, num_classes: int, channels: int):
        super().__init__()
        check_latent(config.nz, num_classes)
        self.nz, self.num_classes, self.channels, self.image_size = config.nz, num_classes, channels, config.image_size
        self.conv = config.arch == "dcgan"
        if self.conv:
            if config.image_size != 32:
                raise ValueError(f"the dcgan generator makes 32x32 images, got image_size={config.image_size}")
            shapes = dcgan_body(config.nz, config.ngf)
            self.body = nn.ModuleList(nn.ConvTranspose2d(*shape, bias=False) for shape in shapes)
            self.head = nn.ConvTranspose2d(config.ngf, channels, *DCGAN_HEAD, bias=False)
            for layer in [*self.body, self.head]:
                dcgan_init_(layer.weight)
            self.norms = nn.ModuleList(dcgan_norm(layer.out_channels) for layer in self.body)
        else:
            h = config.hidden
            self.body = nn.ModuleList([nn.Linear(config.nz, h), nn.Linear(h, h)])
            self.norms = nn.ModuleList([nn.BatchNorm1d(h), nn.BatchNorm1d(h)])
            self.head = nn.Linear(h, channels * config.image_size ** 2)

    def units(self) -> list[int]:
        return [layer.weight.shape[1 if self.conv else 0] for layer in self.body]

    def noise(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return label_noise(labels, self.nz, self.num_classes, generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], self.nz, 1, 1) if self.conv else z
        for layer, norm in zip(self.body, self.norms):
            x = F.relu(norm(layer(x)))
        return torch.tanh(self.head(x)).view(z.shape[0], self.channels, self.image_size, self.image_size)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, row_task: torch.Tensor | None = None, z: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images of ``labels`` (replay, sample grids): one generator serves every task, so
        ``row_task`` (the interface of :meth:`dgm.models.MaskedGenerator.generate`) is not needed."""
        return self(self.noise(labels, generator) if z is None else z)


class ReplayLearner(GenerativeLearner):
    """``replay``: carries the unmasked generator; the discriminator is rebuilt every task."""

    def __init__(self, config, num_classes: int, channels: int, backend: str, device: torch.device):
        super().__init__(config, num_classes, channels, backend, device)
        self.generator = ReplayGenerator(config, num_classes, channels).to(device)

    def begin_task(self, task, old_tasks) -> TaskSetup:
        """Joint retraining on the task's real data plus the replay of ``old_tasks`` (module doc)."""
        config, generator = self.config, self.generator
        picks = replay_rng(config, task, self.device)
        discriminator = build_discriminator(config, classes_seen([*old_tasks, task]), task.train.channels)
        discriminator = discriminator.to(self.device)
        real_x, real_y = task.train.images.to(self.device), task.train.labels.to(self.device)
        replay = replay_for(generator, task, old_tasks, config, real_y.shape[0])
        generator.train()
        opt_d, opt_g = adam(discriminator.parameters(), config), adam(generator.parameters(), config)
        sync = distributed.gradient_sync()  # data-parallel runs: average the gradients over the ranks

        def step(epoch, b, batches, idx):
            x, y = real_x[idx], real_y[idx]
            if replay is not None:
                old_x, old_y = replay_batch(replay, picks)
                x, y = torch.cat([x, old_x]), torch.cat([y, old_y])

            opt_d.zero_grad(set_to_none=True)
            with torch.no_grad():
                fake = generator(generator.noise(y))
            loss_d, loss_class, gp = discriminator_loss(discriminator, x, y, fake, config.lambda_gp)
            loss_d.backward()
            if sync is not None:
                sync(list(discriminator.parameters()), "discriminator")
            opt_d.step()

            # AC-GAN generator loss: fool the critic and be classified as the label asked for.
            opt_g.zero_grad(set_to_none=True)
            adversarial, loss_g_class = generator_loss(discriminator, generator(generator.noise(y)), y)
            loss_g = adversarial + loss_g_class
            loss_g.backward()
            if sync is not None:
                sync(list(generator.parameters()), "generator")
            opt_g.step()
            scalars = {"loss_d": loss_d, "loss_g": loss_g, "class": loss_class, "gp": gp, "g_class": loss_g_class}
            return {k: v.detach() for k, v in scalars.items()}

        return TaskSetup(discriminator, real_y.shape[0], step)

    def generator_size(self) -> tuple[int, list[int]]:
        return sum(layer.weight.numel() for layer in self.generator.body), self.generator.units()
