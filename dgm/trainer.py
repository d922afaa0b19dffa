"""The continual run: for each task, learn it with replay of all earlier classes, consolidate the
generator's masks, grow the generator, evaluate every class seen so far, checkpoint.

:func:`train_task` is one task of training; :func:`run` is the whole run with evaluation,
reporting and resume. Randomness is seeded per task from ``(seed, task)``, so a run resumed from
the checkpoint after task ``t`` continues exactly as the unbroken run would have.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import ops
from .checkpoint import CheckpointError, checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import load_dataset, split_tasks
from .masks import compensate_logit_grad_, sharpness, sparsity_regularizer
from .metrics import build_metrics
from .models import DCGANGenerator, MLPGenerator, dcgan_discriminator, gradient_penalty, mlp_discriminator
from .optim import FrozenAdam, reserved_masks
from .reporting import Reporter

# Config keys that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"out", "resume", "tasks", "device", "backend", "fused", "num_workers", "data_root",
                      "download"}


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
    each under its own task's mask, rows of all tasks together in each batch."""
    labels = torch.cat([torch.full((per_class,), c, dtype=torch.long) for task in old_tasks for c in task.classes])
    row_task = torch.cat([torch.full((per_class * len(task.classes),), task.index, dtype=torch.long)
                          for task in old_tasks])
    device = generator.body[0].weight.device
    labels, row_task = labels.to(device), row_task.to(device)
    rng = torch.Generator(device=device).manual_seed(seed)
    was_training = generator.training
    generator.eval()
    images = torch.cat([generator.generate(labels[i:i + batch_size], row_task[i:i + batch_size], generator=rng)
                        for i in range(0, labels.shape[0], batch_size)])
    generator.train(was_training)
    return images, labels


def train_task(generator, task, old_tasks, config: TrainConfig, reporter: Reporter, device: torch.device):
    """Learn ``task``: WGAN-GP + auxiliary classifier on its real data plus replay of ``old_tasks``,
    the generator's current mask annealed and regularised towards sparsity. Returns the new
    discriminator (its classifier covers every class seen so far)."""
    seen = sum(len(t.classes) for t in old_tasks) + len(task.classes)
    torch.manual_seed(_task_seed(config.seed, task.index))
    rng = torch.Generator().manual_seed(_task_seed(config.seed, task.index))
    channels = task.train.channels
    discriminator = build_discriminator(config, seen, channels).to(device)
    generator.prepare_task(list(task.classes))
    generator.train()

    real_x, real_y = task.train.images.to(device), task.train.labels.to(device)
    replay_x = replay_y = None
    if old_tasks:
        per_class = config.replay_per_class or max(1, real_y.shape[0] // len(task.classes))
        replay_x, replay_y = generate_replay(generator, old_tasks, per_class, config.batch_size,
                                             _task_seed(config.seed, task.index))
    # Every step the classifier sees as many replayed images per earlier class as real images per
    # new class, so all classes seen weigh the same.
    replay_batch = config.batch_size * (seen - len(task.classes)) // len(task.classes)

    betas = (config.beta1, 0.999)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    logits = [p for layer in generator.masked_layers() for p in layer.logits()]
    weights = [p for p in generator.task_parameters(list(task.classes)) if all(p is not q for q in logits)]
    opt_g = FrozenAdam([{"params": weights}, {"params": logits, "lr": config.mask_lr or config.lr}],
                       lr=config.lr, betas=betas, backend="reference" if generator_backend(generator) == "reference"
                       else "auto")
    opt_g.set_reserved(reserved_masks(generator))  # reserved weights and their moments never move
    s_max = config.resolved_s_max
    lambda_reg = config.resolved_lambda_reg * generator.units() / generator.initial_units

    n = real_y.shape[0]
    batches = max(1, -(-n // config.batch_size))
    for epoch in reporter.progress(range(config.epochs), config.epochs, f"task {task.index}"):
        order = torch.randperm(n, generator=rng).to(device)
        for b in range(batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x, y = real_x[idx], real_y[idx]
            s = sharpness(epoch, config.epochs, b, batches, s_max)
            generator.set_sharpness(s)

            # Discriminator: critic on real vs fake of this task, classifier on real + replay.
            opt_d.zero_grad(set_to_none=True)
            with torch.no_grad():
                fake = generator(generator.noise(y), y)
            critic_real, class_real = discriminator(x)
            critic_fake, _ = discriminator(fake)
            gp = gradient_penalty(lambda v: discriminator(v)[0], x, fake)
            if replay_x is None:
                loss_class = F.cross_entropy(class_real, y)
            else:
                pick = torch.randint(0, replay_y.shape[0], (replay_batch,), generator=rng).to(device)
                _, class_replay = discriminator(replay_x[pick])
                loss_class = F.cross_entropy(torch.cat([class_real, class_replay]), torch.cat([y, replay_y[pick]]))
            loss_d = critic_fake.mean() - critic_real.mean() + config.lambda_gp * gp + loss_class
            loss_d.backward()
            opt_d.step()

            # Generator: fool the critic with a sparse mask; reserved weights stay frozen.
            opt_g.zero_grad(set_to_none=True)
            critic_gen, _ = discriminator(generator(generator.noise(y), y))
            reg = sparsity_regularizer(layer.mask_usage() for layer in generator.masked_layers())
            loss_g = -critic_gen.mean() + lambda_reg * reg
            loss_g.backward()
            for p in logits:
                compensate_logit_grad_(p, s, s_max)
            opt_g.step()

            scalars = {"loss_d": loss_d, "loss_g": loss_g, "class": loss_class, "gp": gp, "reg": reg}
            reporter.log_step(task.index, epoch, b, {**{k: v.detach() for k, v in scalars.items()}, "s": s})
    generator.consolidate_and_expand()
    return discriminator


@torch.no_grad()
def evaluate(discriminator, tasks, split: str, batch_size: int, device: torch.device):
    """Per task: ``(correct, total)`` of the classifier over all classes seen, on ``split`` data."""
    discriminator.eval()
    counts = []
    for task in tasks:
        data = getattr(task, split)
        correct = 0
        for i in range(0, len(data), batch_size):
            x, y = data.images[i:i + batch_size].to(device), data.labels[i:i + batch_size].to(device)
            correct += int((discriminator(x)[1].argmax(1) == y).sum())
        counts.append((correct, len(data)))
    return counts


@torch.no_grad()
def sample_grid(generator, tasks, per_class: int, seed: int):
    """``per_class`` samples of every class seen, each under its own task's mask."""
    generator.eval()
    rng = torch.Generator(device=generator.body[0].weight.device).manual_seed(seed)
    rows = []
    for task in tasks:
        labels = torch.tensor([c for c in task.classes for _ in range(per_class)],
                              device=generator.body[0].weight.device)
        rows.append(generator(generator.noise(labels, rng), labels, task=task.index))
    generator.train()
    return torch.cat(rows)


def _check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    differ = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if differ:
        raise CheckpointError(f"{path} was written by a run with other settings ({', '.join(differ)}); "
                              f"resume with the same settings or choose another --out")


def run(config: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Train and evaluate a whole continual run; returns the metrics (also in ``out/metrics.json``)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but no CUDA GPU is available")
    backend = ops.fastest_backend(device) if config.fused else config.backend
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = load_dataset(config.dataset, root=config.data_root, download=config.download,
                               image_size=config.image_size)
    tasks = split_tasks(train, test, config.classes_per_task, config.tasks, config.val_fraction,
                        config.train_per_class, config.seed)
    torch.manual_seed(config.seed)
    generator = build_generator(config, train.num_classes, train.channels, backend).to(device)
    history = {"test": [], "val": [], "generator_params": [], "growth": [], "wall_time_s": []}

    start = 0
    path = latest_checkpoint(out)
    if path is not None and not config.resume:
        raise CheckpointError(f"{out} holds a checkpoint of an earlier run ({path.name}); pass --resume to "
                              f"continue it or choose another --out")
    if path is not None:
        state = load_checkpoint(path, map_location=device)
        _check_resumable(state["config"], config, path)
        generator.load_state_dict(state["generator"])
        history, start = state["history"], state["next_task"]

    reporter = reporter if reporter is not None else Reporter(out)
    reporter.start(config.to_dict(), start if path is not None else None)
    metrics = None
    try:
        for t in range(start, len(tasks)):
            began = time.perf_counter()
            discriminator = train_task(generator, tasks[t], tasks[:t], config, reporter, device)
            history["wall_time_s"].append(time.perf_counter() - began)
            history["test"].append(evaluate(discriminator, tasks[: t + 1], "test", config.batch_size, device))
            history["val"].append(evaluate(discriminator, tasks[: t + 1], "val", config.batch_size, device))
            history["generator_params"].append(sum(layer.active_weight().numel() for layer in generator.body))
            history["growth"].append([layer.out_units for layer in generator.body])
            metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks[: t + 1]], history,
                                    device=str(device), backend=backend)
            reporter.task_end(t, metrics, sample_grid(generator, tasks[: t + 1], 8, config.seed), 8)
            save_checkpoint(checkpoint_path(out, t),
                            {"config": config.to_dict(), "next_task": t + 1, "history": history,
                             "generator": generator.state_dict()})
    finally:
        reporter.close()
    if metrics is None:  # every task was done before this resume
        metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks], history,
                                device=str(device), backend=backend)
    return metrics
