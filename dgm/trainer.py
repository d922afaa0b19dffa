"""The continual run: for each task, learn it with replay of all earlier classes, consolidate the
generator's masks, grow the generator, evaluate every class seen so far, checkpoint.

:func:`train_task` is one task of DGM (:func:`begin_task`, then :func:`train_step` per batch);
:func:`run` is the whole run of any method with evaluation, reporting and resume. A method is a
*learner* (:class:`DGMLearner` here, the baselines in :mod:`dgm.baselines`): what it carries from
task to task, with ``train_task(task, old_tasks, reporter)`` returning the classifier to evaluate
(a discriminator whose classifier head covers every class seen), ``state_dict()`` /
``load_state_dict()`` (the checkpoint entries resuming needs), ``generator_size()`` (shared
generator weights and units per layer, or ``(0, None)``) and ``samples(tasks)`` (the task-end
image grid, or ``None`` without a generator). Randomness is seeded per task from ``(seed, task)``
(:func:`task_rng`, :func:`replay_rng`), so a run resumed from the checkpoint after task ``t``
continues exactly as the unbroken run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import ops
from .checkpoint import checkpoint_path, save_checkpoint
from .config import DGM_METHODS, TrainConfig, check_device
from .data import load_dataset, split_tasks
from .masks import compensate_logit_grad_, sharpness, sparsity_regularizer
from .metrics import build_metrics
from .models import (DCGANGenerator, Discriminator, MaskedGenerator, MLPGenerator, dcgan_discriminator,
                     gradient_penalty, mlp_discriminator)
from .optim import FrozenAdam, reserved_masks
from .reporting import Reporter
from .run_folder import restore, resume_point


def build_generator(config: TrainConfig, num_classes: int, channels: int, backend: str):
    mask = "weight" if config.method == "dgmw" else "activation"
    common = {"mask": mask, "s_max": config.resolved_s_max, "backend": backend, "image_size": config.image_size}
    if config.arch == "dcgan":
        return DCGANGenerator(config.nz, num_classes, channels, config.ngf, **common)
    return MLPGenerator(config.nz, num_classes, channels, config.hidden, **common)


def build_discriminator(config: TrainConfig, num_classes: int, channels: int):
    if config.arch == "dcgan":
        return dcgan_discriminator(num_classes, channels, config.ndf)
    return mlp_discriminator(num_classes, channels, config.hidden, config.image_size)


def generator_backend(generator) -> str:
    return generator.body[0].backend


def _task_seed(seed: int, task: int) -> int:
    return seed * 1_000_003 + task


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


def task_rng(config: TrainConfig, task) -> torch.Generator:
    """Seed the global RNG (initialisations, gradient penalty) and return the generator of the
    task's batch order, both from ``(seed, task)``."""
    torch.manual_seed(_task_seed(config.seed, task.index))
    return torch.Generator().manual_seed(_task_seed(config.seed, task.index))


def replay_rng(config: TrainConfig, task, device: torch.device) -> torch.Generator:
    """The generator of the task's replay picks, on ``device`` so that drawing a step's picks
    needs no host-to-device copy (which would make the host wait for the device)."""
    return torch.Generator(device=device).manual_seed(_task_seed(config.seed, task.index) + 1)


def adam(params, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, 0.999))


def minibatches(n: int, config: TrainConfig, rng: torch.Generator, reporter: Reporter, task, device):
    """``config.epochs`` epochs over ``n`` samples, a fresh order from ``rng`` each epoch; yields
    ``(epoch, step, steps_per_epoch, indices)``."""
    steps = max(1, -(-n // config.batch_size))
    for epoch in reporter.progress(range(config.epochs), config.epochs, f"task {task.index}"):
        order = torch.randperm(n, generator=rng).to(device)
        for b in range(steps):
            yield epoch, b, steps, order[b * config.batch_size:(b + 1) * config.batch_size]


def replay_for(generator, task, old_tasks, config: TrainConfig, n_real: int):
    """The replay of every class of ``old_tasks`` for learning ``task``, or ``None`` at the first
    task: ``(images, labels, batch)``. Generated once, before the generator learns ``task``, so by
    the generator as it was after the previous task. ``batch`` is how many replayed images each
    step adds to the classifier's batch: as many per earlier class as real images per new class,
    so all classes seen weigh the same."""
    if not old_tasks:
        return None
    per_class = config.replay_per_class or max(1, n_real // len(task.classes))
    images, labels = generate_replay(generator, old_tasks, per_class, config.batch_size,
                                     _task_seed(config.seed, task.index))
    old_classes = sum(len(t.classes) for t in old_tasks)
    return images, labels, config.batch_size * old_classes // len(task.classes)


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


@dataclass
class TaskTraining:
    """One DGM task being learned: everything :func:`train_step` updates."""

    generator: MaskedGenerator
    classes: list[int]
    discriminator: Discriminator
    opt_d: torch.optim.Optimizer
    opt_g: FrozenAdam
    logits: list[torch.nn.Parameter]
    replay: tuple | None
    replay_rng: torch.Generator
    s_max: float
    lambda_reg: float
    lambda_gp: float


def begin_task(generator, task, old_tasks, n_real: int, config: TrainConfig, device: torch.device) -> TaskTraining:
    """Set up learning ``task``: a new discriminator over every class seen, the generator's norms
    and heads for the task, the replay of ``old_tasks``, and the optimisers (the generator's keeps
    reserved weights and their moments where they are)."""
    seen = sum(len(t.classes) for t in old_tasks) + len(task.classes)
    discriminator = build_discriminator(config, seen, task.train.channels).to(device)
    generator.prepare_task(list(task.classes))
    generator.train()
    replay = replay_for(generator, task, old_tasks, config, n_real)
    logits = [p for layer in generator.masked_layers() for p in layer.logits()]
    weights = [p for p in generator.task_parameters(list(task.classes)) if all(p is not q for q in logits)]
    opt_g = FrozenAdam([{"params": weights}, {"params": logits, "lr": config.mask_lr or config.lr}],
                       lr=config.lr, betas=(config.beta1, 0.999),
                       backend="reference" if generator_backend(generator) == "reference" else "auto")
    opt_g.set_reserved(reserved_masks(generator))
    lambda_reg = config.resolved_lambda_reg * generator.units() / generator.initial_units
    return TaskTraining(generator, list(task.classes), discriminator, adam(discriminator.parameters(), config),
                        opt_g, logits, replay, replay_rng(config, task, device), config.resolved_s_max, lambda_reg,
                        config.lambda_gp)


def train_step(state: TaskTraining, x: torch.Tensor, y: torch.Tensor, s: float) -> dict:
    """One step on a real batch ``(x, y)`` at sharpness ``s``; returns the losses as tensors. The
    host never waits for the device in a step (tests/test_host_sync.py)."""
    generator, discriminator, classes = state.generator, state.discriminator, state.classes
    generator.set_sharpness(s)

    # Discriminator: critic on real vs fake of this task, classifier on real + replay.
    state.opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = generator(generator.noise(y), y, classes=classes)
    replay = None if state.replay is None else replay_batch(state.replay, state.replay_rng)
    loss_d, loss_class, gp = discriminator_loss(discriminator, x, y, fake, state.lambda_gp, replay)
    loss_d.backward()
    state.opt_d.step()

    # Generator: fool the critic with a sparse mask; reserved weights stay frozen.
    state.opt_g.zero_grad(set_to_none=True)
    critic_gen, _ = discriminator(generator(generator.noise(y), y, classes=classes))
    reg = sparsity_regularizer(layer.mask_usage() for layer in generator.masked_layers())
    loss_g = -critic_gen.mean() + state.lambda_reg * reg
    loss_g.backward()
    for p in state.logits:
        compensate_logit_grad_(p, s, state.s_max)
    state.opt_g.step()
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "class": loss_class.detach(),
            "gp": gp.detach(), "reg": reg.detach()}


def train_task(generator, task, old_tasks, config: TrainConfig, reporter: Reporter, device: torch.device):
    """Learn ``task``: WGAN-GP + auxiliary classifier on its real data plus replay of ``old_tasks``,
    the generator's current mask annealed and regularised towards sparsity; then consolidate and
    grow the generator. Returns the discriminator of the best epoch (:class:`BestEpoch`; its
    classifier covers every class seen)."""
    rng = task_rng(config, task)
    real_x, real_y = task.train.images.to(device), task.train.labels.to(device)
    state = begin_task(generator, task, old_tasks, real_y.shape[0], config, device)
    best = BestEpoch(state.discriminator, [*old_tasks, task], config.batch_size, device)
    for epoch, b, batches, idx in minibatches(real_y.shape[0], config, rng, reporter, task, device):
        s = sharpness(epoch, config.epochs, b, batches, state.s_max)
        reporter.log_step(task.index, epoch, b, {**train_step(state, real_x[idx], real_y[idx], s), "s": s})
        if b == batches - 1:
            best.end_epoch()
    generator.consolidate_and_expand()
    return best.restore()


class BestEpoch:
    """Keeps the classifier of the epoch that scored best on the validation images of every class
    seen (the paper's official protocol selects the epoch this way, and every method here does
    the same): in DGM the critic and classifier share their features, and a late swing of the
    adversarial game can spoil the classifier. Without validation data, the last epoch stands."""

    def __init__(self, classifier, tasks, batch_size: int, device: torch.device):
        self.classifier, self.tasks, self.batch_size, self.device = classifier, tasks, batch_size, device
        self.accuracy, self.state = -1.0, None

    def end_epoch(self) -> None:
        counts = evaluate(self.classifier, self.tasks, "val", self.batch_size, self.device)
        total = sum(n for _, n in counts)
        accuracy = sum(c for c, _ in counts) / max(total, 1)
        if total and accuracy > self.accuracy:
            self.accuracy = accuracy
            self.state = {k: v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def restore(self):
        """The classifier, with the best epoch's weights; returns it."""
        if self.state is not None:
            self.classifier.load_state_dict(self.state)
        return self.classifier


@torch.no_grad()
def evaluate(discriminator, tasks, split: str, batch_size: int, device: torch.device):
    """Per task: ``(correct, total)`` of the classifier over all classes seen, on ``split`` data."""
    was_training = discriminator.training
    discriminator.eval()
    correct = []
    for task in tasks:
        data = getattr(task, split)
        hits = torch.zeros((), dtype=torch.long, device=device)
        for i in range(0, len(data), batch_size):
            x, y = data.images[i:i + batch_size].to(device), data.labels[i:i + batch_size].to(device)
            hits += (discriminator(x)[1].argmax(1) == y).sum()
        correct.append(hits)
    discriminator.train(was_training)
    correct = torch.stack(correct).tolist() if correct else []  # one read for all tasks
    return [(c, len(getattr(task, split))) for c, task in zip(correct, tasks)]


class GenerativeLearner:
    """A method whose memory is a conditional generator (checkpointed as ``"generator"``)."""

    def __init__(self, generator, config: TrainConfig, device: torch.device):
        self.generator, self.config, self.device = generator, config, device

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])

    def samples(self, tasks):
        """Eight generated images of every class of ``tasks``, one row per class."""
        return generate_replay(self.generator, tasks, 8, self.config.batch_size, self.config.seed)[0]


class DGMLearner(GenerativeLearner):
    """DGMw / DGMa: the masked, growing generator; the discriminator is rebuilt every task."""

    def train_task(self, task, old_tasks, reporter: Reporter):
        return train_task(self.generator, task, old_tasks, self.config, reporter, self.device)

    def generator_size(self) -> tuple[int, list[int]]:
        body = self.generator.body
        return sum(layer.active_weight().numel() for layer in body), [layer.out_units for layer in body]


def build_learner(config: TrainConfig, num_classes: int, channels: int, backend: str, device: torch.device):
    """The learner of ``config.method`` (see the module doc)."""
    if config.method in DGM_METHODS:
        return DGMLearner(build_generator(config, num_classes, channels, backend).to(device), config, device)
    from .baselines import build_baseline  # the baselines build on this module's helpers
    return build_baseline(config, num_classes, channels, device)


def run(config: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Train and evaluate a whole continual run; returns the metrics (also in ``out/metrics.json``).
    Every check of the settings, the output folder, the checkpoint and the data comes before the
    first write (``reporter.start``): a run that cannot start leaves ``out`` as it was."""
    check_device(config.device)
    device = torch.device(config.device)
    backend = ops.fastest_backend(device) if config.fused else config.backend
    out = Path(config.out)
    resume = resume_point(config)

    train, test = load_dataset(config.dataset, root=config.data_root, download=config.download,
                               image_size=config.image_size)
    tasks = split_tasks(train, test, config.classes_per_task, config.tasks, config.val_fraction,
                        config.train_per_class, config.seed)
    torch.manual_seed(config.seed)
    learner = build_learner(config, train.num_classes, train.channels, backend, device)
    history = {"test": [], "val": [], "generator_params": [], "growth": [], "wall_time_s": []}

    reporter = reporter if reporter is not None else Reporter(out)
    start = 0
    if resume is not None:
        restore(learner, resume, config.method)
        history, start = resume.payload["history"], resume.next_task
        for skipped in resume.skipped:
            reporter.note(f"{skipped}; continuing from {resume.path.name}")

    reporter.start(config.to_dict(), start if resume is not None else None)
    metrics = None
    try:
        for t in range(start, len(tasks)):
            began = time.perf_counter()
            discriminator = learner.train_task(tasks[t], tasks[:t], reporter)
            history["wall_time_s"].append(time.perf_counter() - began)
            history["test"].append(evaluate(discriminator, tasks[: t + 1], "test", config.batch_size, device))
            history["val"].append(evaluate(discriminator, tasks[: t + 1], "val", config.batch_size, device))
            params, units = learner.generator_size()
            history["generator_params"].append(params)
            if units is not None:
                history["growth"].append(units)
            metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks[: t + 1]], history,
                                    device=str(device), backend=backend)
            reporter.task_end(t, metrics, learner.samples(tasks[: t + 1]), 8)
            save_checkpoint(checkpoint_path(out, t),
                            {"config": config.to_dict(), "next_task": t + 1, "history": history,
                             **learner.state_dict()})
    finally:
        reporter.close()
    if metrics is None:  # every task was done before this resume
        metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks], history,
                                device=str(device), backend=backend)
    return metrics
