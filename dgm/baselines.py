"""The baselines that frame DGM's result, on the same data, split, classifier and protocol.

- ``joint`` (upper bound): after task ``t`` a classifier is trained from scratch, with
  cross-entropy only, on the real training data of tasks ``0..t``. No generator.
- ``finetune`` (lower bound): one classifier carried across tasks, its head widened to the classes
  seen, trained with cross-entropy on the real data of task ``t`` only. No replay, no generator.
- ``replay`` (MeRGAN-style joint retraining): a plain conditional generator (:class:`ReplayGenerator`:
  no masks, no growth) and, as in DGM, a discriminator rebuilt every task. At task ``t`` the
  generator first makes the replay of every earlier class (so it is the generator as it was after
  task ``t - 1``, a frozen copy), then the AC-GAN trains on real data of task ``t`` plus that replay:
  the critic sees both as real, the generator makes every class seen, and the classifier learns
  them exactly as DGM's does.

The classifier is always the discriminator architecture of :func:`dgm.trainer.build_discriminator`
(joint and finetune use its classifier head only), evaluated like DGM's, and, as in DGM, each task
keeps the epoch whose classifier does best on the validation data of the classes seen. Each baseline is a
learner of :func:`dgm.trainer.run` (see :mod:`dgm.trainer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .models.generator import dcgan_init_
from .reporting import Reporter
from .trainer import (
    BestEpoch,
    GenerativeLearner,
    adam,
    build_discriminator,
    discriminator_loss,
    minibatches,
    replay_batch,
    replay_for,
    replay_rng,
    task_rng,
)


class ReplayGenerator(nn.Module):
    """MeRGAN's generator: the layers of DGM's generator at their initial widths, as ordinary layers,
    each followed by one batch norm that every class shares and ReLU, then one output layer and
    ``tanh``. As in DGM the one-hot label fills the first entries of ``z``; the AC-GAN loss makes
    the generator follow it."""

    def __init__(self, config: TrainConfig, num_classes: int, channels: int):
        super().__init__()
        if config.nz < num_classes:
            raise ValueError(f"nz={config.nz} must be >= num_classes={num_classes}: z carries the one-hot label")
        self.nz, self.num_classes, self.channels, self.image_size = config.nz, num_classes, channels, config.image_size
        self.conv = config.arch == "dcgan"
        if self.conv:
            if config.image_size != 32:
                raise ValueError(f"the dcgan generator makes 32x32 images, got image_size={config.image_size}")
            ngf = config.ngf
            self.body = nn.ModuleList([nn.ConvTranspose2d(config.nz, 4 * ngf, 4, 1, 0, bias=False),
                                       nn.ConvTranspose2d(4 * ngf, 2 * ngf, 4, 2, 1, bias=False),
                                       nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=False)])
            self.norms = nn.ModuleList(nn.BatchNorm2d(n) for n in (4 * ngf, 2 * ngf, ngf))
            self.head = nn.ConvTranspose2d(ngf, channels, 4, 2, 1, bias=False)
            for layer in [*self.body, self.head]:
                dcgan_init_(layer.weight)
            for norm in self.norms:
                nn.init.normal_(norm.weight, 1.0, 0.02)
        else:
            h = config.hidden
            self.body = nn.ModuleList([nn.Linear(config.nz, h), nn.Linear(h, h)])
            self.norms = nn.ModuleList([nn.BatchNorm1d(h), nn.BatchNorm1d(h)])
            self.head = nn.Linear(h, channels * config.image_size ** 2)

    def units(self) -> list[int]:
        return [layer.weight.shape[1 if self.conv else 0] for layer in self.body]

    def noise(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent codes for ``labels``: Gaussian, with the one-hot label in the first entries."""
        z = torch.randn(labels.shape[0], self.nz, generator=generator, device=labels.device)
        z[:, : self.num_classes] = F.one_hot(labels, self.num_classes).to(z.dtype)
        return z

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


def train_replay_task(generator: ReplayGenerator, task, old_tasks, config: TrainConfig, reporter: Reporter,
                      device: torch.device):
    """Learn ``task`` by joint retraining on its real data plus the replay of ``old_tasks`` (see the
    module doc). Returns the new discriminator (its classifier covers every class seen so far)."""
    seen = sum(len(t.classes) for t in old_tasks) + len(task.classes)
    rng, picks = task_rng(config, task), replay_rng(config, task, device)
    discriminator = build_discriminator(config, seen, task.train.channels).to(device)
    real_x, real_y = task.train.images.to(device), task.train.labels.to(device)
    replay = replay_for(generator, task, old_tasks, config, real_y.shape[0])
    generator.train()
    opt_d, opt_g = adam(discriminator.parameters(), config), adam(generator.parameters(), config)

    best = BestEpoch(discriminator, [*old_tasks, task], config.batch_size, device)
    for epoch, b, batches, idx in minibatches(real_y.shape[0], config, rng, reporter, task, device):
        x, y = real_x[idx], real_y[idx]
        if replay is not None:
            old_x, old_y = replay_batch(replay, picks)
            x, y = torch.cat([x, old_x]), torch.cat([y, old_y])

        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = generator(generator.noise(y))
        loss_d, loss_class, gp = discriminator_loss(discriminator, x, y, fake, config.lambda_gp)
        loss_d.backward()
        opt_d.step()

        # AC-GAN generator loss: fool the critic and be classified as the label asked for.
        opt_g.zero_grad(set_to_none=True)
        critic_gen, class_gen = discriminator(generator(generator.noise(y)))
        loss_g_class = F.cross_entropy(class_gen, y)
        loss_g = -critic_gen.mean() + loss_g_class
        loss_g.backward()
        opt_g.step()

        scalars = {"loss_d": loss_d, "loss_g": loss_g, "class": loss_class, "gp": gp, "g_class": loss_g_class}
        reporter.log_step(task.index, epoch, b, {k: v.detach() for k, v in scalars.items()})
        if b == batches - 1:
            best.end_epoch()
    return best.restore()


class ReplayLearner(GenerativeLearner):
    """``replay``: carries the unmasked generator; the discriminator is rebuilt every task."""

    def train_task(self, task, old_tasks, reporter: Reporter):
        return train_replay_task(self.generator, task, old_tasks, self.config, reporter, self.device)

    def generator_size(self) -> tuple[int, list[int]]:
        return sum(layer.weight.numel() for layer in self.generator.body), self.generator.units()


def train_classifier(classifier, images: torch.Tensor, labels: torch.Tensor, tasks, config: TrainConfig,
                     reporter: Reporter, rng: torch.Generator, device: torch.device):
    """Cross-entropy of the discriminator's classifier head on real ``images`` only (the critic head
    is unused): ``config.epochs`` epochs of Adam, a fresh optimiser every task. ``tasks``: every
    task seen, the last the one being learned (validation, :class:`~dgm.trainer.BestEpoch`).
    Returns the classifier of the best epoch."""
    x_all, y_all = images.to(device), labels.to(device)
    opt = adam(classifier.parameters(), config)
    classifier.train()
    best = BestEpoch(classifier, tasks, config.batch_size, device)
    for epoch, b, batches, idx in minibatches(y_all.shape[0], config, rng, reporter, tasks[-1], device):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(classifier(x_all[idx])[1], y_all[idx])
        loss.backward()
        opt.step()
        reporter.log_step(tasks[-1].index, epoch, b, {"class": loss.detach()})
        if b == batches - 1:
            best.end_epoch()
    return best.restore()


def widen_classifier(classifier, num_classes: int) -> None:
    """Grow the classifier head to ``num_classes`` outputs, keeping the rows of the classes it has."""
    old = classifier.classifier
    if num_classes < old.out_features:
        raise ValueError(f"num_classes={num_classes} is below the {old.out_features} classes the head has")
    new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    classifier.classifier = new


class ClassifierLearner:
    """A method without a generator; checkpointed as ``"classifier"`` (the last task's)."""

    def __init__(self, config: TrainConfig, channels: int, device: torch.device):
        self.config, self.channels, self.device = config, channels, device
        self.classifier = None

    def _new_classifier(self, num_classes: int):
        return build_discriminator(self.config, num_classes, self.channels).to(self.device)

    def state_dict(self) -> dict:
        return {"classifier": None if self.classifier is None else self.classifier.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        weights = state["classifier"]
        self.classifier = self._new_classifier(weights["classifier.weight"].shape[0])
        self.classifier.load_state_dict(weights)

    def generator_size(self) -> tuple[int, None]:
        return 0, None

    def samples(self, tasks) -> None:
        """No generator, no samples."""
        return None


class JointLearner(ClassifierLearner):
    """``joint``: a classifier from scratch on the real data of every task so far."""

    def train_task(self, task, old_tasks, reporter: Reporter):
        rng = task_rng(self.config, task)
        tasks = [*old_tasks, task]
        self.classifier = self._new_classifier(sum(len(t.classes) for t in tasks))
        return train_classifier(self.classifier, torch.cat([t.train.images for t in tasks]),
                                torch.cat([t.train.labels for t in tasks]), tasks, self.config, reporter, rng,
                                self.device)


class FinetuneLearner(ClassifierLearner):
    """``finetune``: one classifier, its head widened each task, trained on the new task only."""

    def train_task(self, task, old_tasks, reporter: Reporter):
        rng = task_rng(self.config, task)
        seen = sum(len(t.classes) for t in old_tasks) + len(task.classes)
        if self.classifier is None:
            self.classifier = self._new_classifier(seen)
        else:
            widen_classifier(self.classifier, seen)
        return train_classifier(self.classifier, task.train.images, task.train.labels, [*old_tasks, task],
                                self.config, reporter, rng, self.device)


def build_baseline(config: TrainConfig, num_classes: int, channels: int, device: torch.device):
    """The learner of baseline ``config.method``."""
    if config.method == "replay":
        return ReplayLearner(ReplayGenerator(config, num_classes, channels).to(device), config, device)
    if config.method == "joint":
        return JointLearner(config, channels, device)
    if config.method == "finetune":
        return FinetuneLearner(config, channels, device)
    raise ValueError(f"method must be one of joint, finetune, replay for a baseline, got {config.method!r}")
