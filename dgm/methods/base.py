"""What every method shares: the task loop, its seeding, replay, the discriminator and its loss.

A method is a :class:`Learner`: what it carries from task to task. :meth:`Learner.train_task` is
one task of any method, written once: seed from ``(seed, task)``, let the method set the task up
(:meth:`Learner.begin_task`: the classifier to select and evaluate, how many real samples an
epoch walks over, and the ``step`` of one minibatch), run ``config.epochs`` epochs of minibatches,
keep the classifier of the epoch that ``config.selection`` picks (:mod:`~dgm.methods.selection`),
let the method close the task (:meth:`Learner.end_task`). Randomness is seeded per task
(:func:`task_rng`, :func:`replay_rng`), so a run resumed from the checkpoint after task ``t``
continues exactly as the unbroken run would. In a data-parallel run (:mod:`dgm.distributed`) the
models are initialised alike on every rank, and the draws of the steps and the replay are
rank-distinct (:func:`~dgm.distributed.rank_seed`).

``config`` is always the run's :class:`dgm.config.TrainConfig`; the methods do not import it, since
the config takes the method names from this package's registry (no import cycle).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..errors import DataError
from ..models import dcgan_discriminator, gradient_penalty, mlp_discriminator, resnet_discriminator
from ..reporting import Reporter
from .selection import BestEpoch, validation_sets

# One minibatch of a task: ``step(epoch, batch, batches_per_epoch, indices)`` -> scalars to log.
Step = Callable[[int, int, int, torch.Tensor], dict]


@dataclass
class TaskSetup:
    """What :meth:`Learner.begin_task` hands the task loop."""

    classifier: nn.Module  # selected per epoch and returned: its classifier head covers every class seen
    samples: int           # real training samples an epoch walks over
    step: Step


class Learner(abc.ABC):
    """A method of the continual run (:func:`dgm.trainer.run`), built from the run's settings."""

    def __init__(self, config, num_classes: int, channels: int, backend: str, device: torch.device):
        self.config, self.channels, self.device = config, channels, device

    def train_task(self, task, old_tasks, reporter: Reporter) -> nn.Module:
        """Learn ``task`` after ``old_tasks``; returns the classifier to evaluate (a discriminator
        whose classifier head covers every class seen), that of the epoch the selection keeps."""
        rng = task_rng(self.config, task)
        setup = self.begin_task(task, old_tasks)
        if distributed.world_size() > 1:  # the models are initialised alike; the steps' draws differ per rank
            torch.manual_seed(distributed.rank_seed(task_seed(self.config.seed, task.index)))
        selection = self.config.selection
        generated = self.generated_validation(task, old_tasks) if selection == "current" else None
        best = BestEpoch(setup.classifier, validation_sets(selection, task, old_tasks, generated),
                         self.config.batch_size, self.device)
        for epoch, b, batches, idx in minibatches(setup.samples, self.config, rng, reporter, task, self.device):
            reporter.log_step(task.index, epoch, b, setup.step(epoch, b, batches, idx))
            if b == batches - 1:
                best.end_epoch()
        self.end_task()
        return best.restore()

    @abc.abstractmethod
    def begin_task(self, task, old_tasks) -> TaskSetup:
        """Set up learning ``task`` (after the global RNG is seeded for it)."""

    def end_task(self) -> None:
        """Close the task once its epochs are done."""

    def replicated(self) -> dict[str, nn.Module]:
        """The models carried across tasks, which every rank of a data-parallel run holds alike
        (compared after every task: :func:`dgm.distributed.check_replicas`)."""
        return {}

    def step_capture(self) -> dict:
        """Whether the last task's training step was captured as a CUDA graph, and if not why:
        ``{"captured": bool, "reason": str or None}`` (``metrics.json``; :mod:`dgm.step_graph`)."""
        return {"captured": False, "reason": f"method {self.config.method!r} runs its step eagerly"}

    def generated_validation(self, task, old_tasks) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Generated validation images and labels of ``old_tasks``' classes (``--selection current``);
        ``None`` without a generator."""
        return None

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """The checkpoint entries resuming needs."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s entries."""

    @abc.abstractmethod
    def generator_size(self) -> tuple[int, list[int] | None]:
        """Shared generator weights and units per layer, or ``(0, None)`` without a generator."""

    @abc.abstractmethod
    def samples(self, tasks) -> torch.Tensor | None:
        """The task-end image grid of ``tasks``' classes, or ``None`` without a generator."""


class GenerativeLearner(Learner):
    """A method whose memory is a conditional generator (checkpointed as ``"generator"``)."""

    generator: nn.Module

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])

    def end_task(self) -> None:
        """Every rank takes rank 0's running statistics of the generator's norms (each rank's come
        from its own batches), which the replay of the next tasks reads."""
        distributed.broadcast_buffers(self.generator, "generator")

    def replicated(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    def samples(self, tasks):
        """Eight generated images of every class of ``tasks``, one row per class."""
        return generate_replay(self.generator, tasks, 8, self.config.batch_size, self.config.seed)[0]

    def generated_validation(self, task, old_tasks):
        """As many images per earlier class as ``task`` has validation images per class, by the
        generator before it learns ``task``, from a seed of their own (the replay uses ``+ 0``, its
        picks ``+ 1``); the same on every rank of a data-parallel run, which splits their scoring."""
        per_class = len(task.val) // len(task.classes)
        if not old_tasks or not per_class:
            return None
        return generate_replay(self.generator, old_tasks, per_class, self.config.batch_size,
                               task_seed(self.config.seed, task.index) + 2)


class ClassifierLearner(Learner):
    """A method without a generator: cross-entropy of the discriminator's classifier head (the
    critic head is unused) on real images, a fresh Adam every task. Checkpointed as
    ``"classifier"`` (the last task's)."""

    classifier: nn.Module | None = None

    @abc.abstractmethod
    def task_classifier(self, task, old_tasks) -> nn.Module:
        """The classifier that learns ``task``, its head over every class seen."""

    @abc.abstractmethod
    def training_data(self, task, old_tasks) -> tuple[torch.Tensor, torch.Tensor]:
        """The real ``(images, labels)`` it learns ``task`` from."""

    def begin_task(self, task, old_tasks) -> TaskSetup:
        self.classifier = classifier = self.task_classifier(task, old_tasks)
        images, labels = self.training_data(task, old_tasks)
        x_all, y_all = images.to(self.device), labels.to(self.device)
        opt = adam(classifier.parameters(), self.config)
        classifier.train()
        model = distributed.wrap(classifier, self.device)  # rebuilt every task: the classifier is new or wider

        def step(epoch, b, batches, idx):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_all[idx])[1], y_all[idx])
            with distributed.collective("the classifier's backward and gradient all-reduce (DDP)"):
                loss.backward()
            opt.step()
            return {"class": loss.detach()}

        return TaskSetup(classifier, y_all.shape[0], step)

    def new_classifier(self, num_classes: int) -> nn.Module:
        return build_discriminator(self.config, num_classes, self.channels).to(self.device)

    def state_dict(self) -> dict:
        return {"classifier": None if self.classifier is None else self.classifier.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        weights = state["classifier"]
        self.classifier = self.new_classifier(weights["classifier.weight"].shape[0])
        self.classifier.load_state_dict(weights)

    def generator_size(self) -> tuple[int, None]:
        return 0, None

    def samples(self, tasks) -> None:
        """No generator, no samples."""


def classes_seen(tasks) -> int:
    return sum(len(t.classes) for t in tasks)


def build_discriminator(config, num_classes: int, channels: int):
    """The discriminator (critic and classifier over ``num_classes``) of ``config.arch``; every
    method's classifier is this network."""
    if config.arch == "dcgan":
        return dcgan_discriminator(num_classes, channels, config.ndf)
    if config.arch == "resnet":
        return resnet_discriminator(num_classes, channels, config.ndf)
    return mlp_discriminator(num_classes, channels, config.hidden, config.image_size)


def adam(params, config) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, 0.999))


def task_seed(seed: int, task: int) -> int:
    return seed * 1_000_003 + task


def task_rng(config, task) -> torch.Generator:
    """Seed the global RNG (initialisations, gradient penalty) and return the generator of the
    task's batch order, both from ``(seed, task)``."""
    torch.manual_seed(task_seed(config.seed, task.index))
    return torch.Generator().manual_seed(task_seed(config.seed, task.index))


def replay_rng(config, task, device: torch.device) -> torch.Generator:
    """The generator of the task's replay picks, on ``device`` so that drawing a step's picks
    needs no host-to-device copy (which would make the host wait for the device)."""
    return torch.Generator(device=device).manual_seed(distributed.rank_seed(task_seed(config.seed, task.index) + 1))


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Minibatches in an epoch over ``n`` samples (the last may be smaller)."""
    return max(1, -(-n // batch_size))


def epoch_steps(n: int, config) -> int:
    """Minibatches in an epoch over ``n`` samples (``config``: the rank's), the same on every rank
    of a data-parallel run, whose global batch is ``N * config.batch_size`` and whose epochs leave
    ``n mod N`` samples out (:func:`minibatches`)."""
    world = distributed.world_size()
    if n < world:
        raise DataError(f"a task has {n} training samples, fewer than the {world} processes of the run: every "
                        "process needs at least one sample a step")
    return batches_per_epoch(n - n % world, config.batch_size * world)


def minibatches(n: int, config, rng: torch.Generator, reporter: Reporter, task, device):
    """``config.epochs`` epochs over ``n`` samples, a fresh order from ``rng`` each epoch; yields
    ``(epoch, step, steps_per_epoch, indices)``.

    Data-parallel (``N`` ranks): every rank draws the same order (``rng`` is seeded alike) and takes
    every ``N``-th row of each global batch of ``N * config.batch_size``, so the ranks' batches
    together are the batch one process would take, and every class's images of an epoch are split
    across the ranks. The order's last ``n mod N`` samples are left out, so every rank has as many
    rows in every step (``DistributedSampler``'s ``drop_last``)."""
    world, rank = distributed.world_size(), distributed.rank()
    size, steps = config.batch_size * world, epoch_steps(n, config)
    for epoch in reporter.progress(range(config.epochs), config.epochs, f"task {task.index}"):
        order = torch.randperm(n, generator=rng).to(device)
        if world > 1:
            order = order[: n - n % world]
        for b in range(steps):
            batch = order[b * size:(b + 1) * size]
            yield epoch, b, steps, batch if world == 1 else batch[rank::world]


@torch.no_grad()
def generate_replay(generator, old_tasks, per_class: int, batch_size: int, seed: int):
    """``per_class`` generated images of every class of every consolidated task in ``old_tasks``,
    each under its own task's mask, rows of all tasks together in each batch. Also the task-end
    sample grid (one row of ``per_class`` images per class)."""
    labels = torch.cat([torch.full((per_class,), c, dtype=torch.long) for task in old_tasks for c in task.classes])
    row_task = torch.cat([torch.full((per_class * len(task.classes),), task.index, dtype=torch.long)
                          for task in old_tasks])
    device = next(generator.parameters()).device
    labels, row_task = labels.to(device), row_task.to(device)
    rng = torch.Generator(device=device).manual_seed(seed)
    was_training = generator.training
    generator.eval()
    images = torch.cat([generator.generate(labels[i:i + batch_size], row_task[i:i + batch_size], generator=rng)
                        for i in range(0, labels.shape[0], batch_size)])
    generator.train(was_training)
    return images, labels


def replay_for(generator, task, old_tasks, config, n_real: int):
    """The replay of every class of ``old_tasks`` for learning ``task``, or ``None`` at the first
    task: ``(images, labels, batch)``. Generated once, before the generator learns ``task``, so by
    the generator as it was after the previous task. ``batch`` is how many replayed images each
    step adds to the classifier's batch: as many per earlier class as real images per new class,
    so all classes seen weigh the same. In a data-parallel run each rank makes its share (``config``
    is the rank's) from a seed of its own."""
    if not old_tasks:
        return None
    per_class = config.replay_per_class or max(1, distributed.share(n_real // len(task.classes)))
    images, labels = generate_replay(generator, old_tasks, per_class, config.batch_size,
                                     distributed.rank_seed(task_seed(config.seed, task.index)))
    return images, labels, config.batch_size * classes_seen(old_tasks) // len(task.classes)


def replay_batch(replay, rng: torch.Generator):
    """A random batch (with replacement) of the replay from :func:`replay_for`."""
    images, labels, batch = replay
    pick = torch.randint(0, labels.shape[0], (batch,), generator=rng, device=labels.device)
    return images[pick], labels[pick]


def discriminator_loss(discriminator, real_x, real_y, fake, lambda_gp: float, replay=None):
    """WGAN-GP critic loss on ``real_x`` vs ``fake`` plus the classifier's cross-entropy on the real
    images and, when given, the ``replay`` batch ``(images, labels)`` (which the critic does not
    see). Returns ``(loss, classifier loss, gradient penalty)``."""
    critic_real, class_real = discriminator(real_x)
    critic_fake, _ = discriminator(fake)
    gp = gradient_penalty(lambda v: discriminator(v)[0], real_x, fake)
    logits, labels = class_real, real_y
    if replay is not None:
        logits = torch.cat([class_real, discriminator(replay[0])[1]])
        labels = torch.cat([real_y, replay[1]])
    loss_class = F.cross_entropy(logits, labels)
    return critic_fake.mean() - critic_real.mean() + lambda_gp * gp + loss_class, loss_class, gp


def generator_loss(discriminator, fake, labels):
    """The AC-GAN generator's two terms on ``fake`` images of ``labels``: the adversarial one
    (``-critic``) and the class term (the classifier's cross-entropy against the labels asked
    for), which ties each class's output to its class. Returns ``(adversarial, class term)``."""
    critic, logits = discriminator(fake)
    return -critic.mean(), F.cross_entropy(logits, labels)
