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
        total = sum(labels.shape[0] for _, labels in self.sets)
        if not total:
            return
        correct = sum(c for c, _ in count_correct(self.classifier, self.sets, self.batch_size, self.device))
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
    host read for all sets."""
    was_training = classifier.training
    classifier.eval()
    correct = []
    for images, labels in sets:
        hits = torch.zeros((), dtype=torch.long, device=device)
        for i in range(0, labels.shape[0], batch_size):
            x, y = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
            hits += (classifier(x)[1].argmax(1) == y).sum()
        correct.append(hits)
    classifier.train(was_training)
    correct = torch.stack(correct).tolist() if correct else []
    return [(c, labels.shape[0]) for c, (_, labels) in zip(correct, sets)]


def evaluate(discriminator, tasks, split: str, batch_size: int, device: torch.device) -> list[tuple[int, int]]:
    """Per task: ``(correct, total)`` of the classifier over all classes seen, on ``split`` data."""
    data = [getattr(task, split) for task in tasks]
    return count_correct(discriminator, [(d.images, d.labels) for d in data], batch_size, device)
