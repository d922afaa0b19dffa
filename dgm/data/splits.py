"""Class-incremental task splits: which classes each task brings, and its train/val/test images.

The paper's protocol: classes arrive in ascending label order ``0..C-1``, ``classes_per_task`` at
a time (one class per task: 10 tasks on MNIST/SVHN/CIFAR-10), and 15% of each class's training
images are held out for validation. The holdout is drawn per class from one generator seeded by
``seed`` and walked over every class, so a class's validation images depend on the seed alone,
not on how many tasks a run uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DataError
from .dataset import ImageDataset


@dataclass(frozen=True)
class Task:
    """Task ``index`` (0-based): its ``classes`` (global label ids) and their train/val/test images."""

    index: int
    classes: tuple[int, ...]
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset


def holdout_per_class(labels: torch.Tensor, num_classes: int, fraction: float,
                      seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per class ``c`` (ascending): ``(kept, held)`` indices into ``labels``, ``held`` being a random
    ``floor(fraction * n_c)`` of the class's ``n_c`` images and ``kept`` the rest in random order."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        n_held = math.floor(fraction * idx.numel() + 1e-9)
        out.append((idx[n_held:], idx[:n_held]))
    return out


def split_tasks(train: ImageDataset, test: ImageDataset, classes_per_task: int = 1, tasks: int | None = None,
                val_fraction: float = 0.15, train_per_class: int | None = None, seed: int = 0) -> list[Task]:
    """The first ``tasks`` (default: all ``C / classes_per_task``) tasks of a class-incremental run.

    Task ``t`` holds classes ``t*k .. t*k+k-1`` (``k = classes_per_task``). Its ``val`` set is the
    held-out ``val_fraction`` of those classes' training images; its ``train`` set is the rest,
    capped at ``train_per_class`` images per class when given (for fast runs; the cap does not
    change the validation set); its ``test`` set is every test image of those classes.
    """
    num_classes = train.num_classes
    if test.num_classes != num_classes:
        raise ValueError(f"train and test must share a label space, got {num_classes} and {test.num_classes} classes")
    if not isinstance(classes_per_task, int) or classes_per_task < 1:
        raise ValueError(f"classes_per_task must be a positive integer, got {classes_per_task!r}")
    if num_classes % classes_per_task:
        raise ValueError(f"classes_per_task={classes_per_task} does not divide the {num_classes} classes of "
                         f"{train.name or 'the data set'}; use a divisor of {num_classes}")
    available = num_classes // classes_per_task
    if tasks is None:
        tasks = available
    if not isinstance(tasks, int) or not 1 <= tasks <= available:
        raise ValueError(f"tasks must be an integer in 1..{available} ({num_classes} classes, "
                         f"{classes_per_task} per task), got {tasks!r}")
    if train_per_class is not None and (not isinstance(train_per_class, int) or train_per_class < 1):
        raise ValueError(f"train_per_class must be a positive integer or None, got {train_per_class!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    per_class = holdout_per_class(train.labels, num_classes, val_fraction, seed)
    test_labels = test.labels.cpu()
    out = []
    for t in range(tasks):
        classes = tuple(range(t * classes_per_task, (t + 1) * classes_per_task))
        train_idx, val_idx, test_idx = [], [], []
        for c in classes:
            kept, held = per_class[c]
            if train_per_class is not None:
                kept = kept[:train_per_class]
            test_c = torch.nonzero(test_labels == c).flatten()
            if kept.numel() == 0 or test_c.numel() == 0:
                raise DataError(f"class {c} of {train.name or 'the data set'} has {kept.numel()} training images "
                                 f"after the validation holdout and {test_c.numel()} test images; it needs at "
                                 "least one of each")
            train_idx.append(kept)
            val_idx.append(held)
            test_idx.append(test_c)
        out.append(Task(t, classes, train.subset(torch.cat(train_idx)), train.subset(torch.cat(val_idx)),
                        test.subset(torch.cat(test_idx))))
    return out
