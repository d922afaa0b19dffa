"""Evaluating the classifier, and choosing which epoch of a task to keep (``--selection``).

In DGM the critic and the classifier share their features, so a late swing of the adversarial game
can spoil the classifier; every method therefore keeps the classifier of the epoch that scores
best on a validation set (:class:`BestEpoch`). Which set is the setting:

- ``official``: the validation images (the 15% holdout) of every class seen. This reads stored
  real images of earlier tasks, which class-incremental learning forbids; it is the official
  code's protocol (it validates on every task seen and reports the test accuracy of the epoch best
  there), kept as the default so the published results reproduce.
- ``current``: no real data of earlier tasks. The current task's validation images, plus for the
  earlier classes generated ones: the generator, as it was before learning the task, draws as
  many per earlier class as the task has validation images per class, from a seed of their own
  (not the training replay). Methods without a generator (``joint``, ``finetune``) validate on
  the current task's images only: nothing stands for the earlier classes (``joint`` trains on
  real data of every task, but selects without earlier tasks' validation images too).
- ``last``: the last epoch; no validation set is read.

Whatever the selection, the run still reports every task's validation accuracy after each task
(``val_accuracy_matrix`` in ``metrics.json``); that report chooses nothing.
"""

from __future__ import annotations

import torch

from .. import distributed

SELECTIONS = ("official", "current", "last")


def validation_sets(selection: str, task, old_tasks, generated=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(images, labels)`` sets ``selection`` validates ``task``'s epochs on; ``generated``:
    generated images and labels of ``old_tasks``' classes, or ``None`` (used by ``current`` only)."""
    if selection == "official":
        return [(t.val.images, t.val.labels) for t in (*old_tasks, task)]
    if selection == "current":
        return [(task.val.images, task.val.labels)] + ([generated] if generated is not None else [])
    if selection == "last":
        return []
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


class BestEpoch:
    """Keeps the classifier of the epoch that scores best on ``sets`` (pooled accuracy); without
    validation images the last epoch stands."""

    def __init__(self, classifier, sets, batch_size: int, device: torch.device):
        self.classifier, self.sets, self.batch_size, self.device = classifier, sets, batch_size, device
        self.accuracy, self.state = -1.0, None

    def end_epoch(self) -> None:
        if not self.sets:
            return
        counts = count_correct(self.classifier, self.sets, self.batch_size, self.device)
        correct, total = sum(c for c, _ in counts), sum(n for _, n in counts)
        if not total:
            return
        if correct / total > self.accuracy:
            self.accuracy = correct / total
            self.state = {k: v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def restore(self):
        """The classifier, with the best epoch's weights; returns it."""
        if self.state is not None:
            self.classifier.load_state_dict(self.state)
        return self.classifier


@torch.no_grad()
def count_correct(classifier, sets, batch_size: int, device: torch.device) -> list[tuple[int, int]]:
    """Per set ``(images, labels)``: ``(correct, total)`` of the classifier head, in eval mode; one
    host read for all sets. In a data-parallel run (the same sets on every rank) each rank scores
    every ``N``-th image of each set and the counts are summed over the ranks."""
    was_training = classifier.training
    classifier.eval()
    size, rank = distributed.world_size(), distributed.rank()
    if size > 1:
        sets = [(images[rank::size], labels[rank::size]) for images, labels in sets]
    counts = []
    for images, labels in sets:
        hits = torch.zeros((), dtype=torch.long, device=device)
        for i in range(0, labels.shape[0], batch_size):
            x, y = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
            hits += (classifier(x)[1].argmax(1) == y).sum()
        counts.append(torch.stack([hits, torch.tensor(labels.shape[0], device=device)]))
    classifier.train(was_training)
    if not counts:
        return []
    counts = distributed.sum_(torch.stack(counts), "the evaluation's counts")
    return [(c, n) for c, n in counts.tolist()]


def evaluate(discriminator, tasks, split: str, batch_size: int, device: torch.device) -> list[tuple[int, int]]:
    """Per task: ``(correct, total)`` of the classifier over all classes seen, on ``split`` data."""
    data = [getattr(task, split) for task in tasks]
    return count_correct(discriminator, [(d.images, d.labels) for d in data], batch_size, device)
