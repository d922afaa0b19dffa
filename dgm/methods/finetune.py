"""``finetune`` (lower bound): one classifier carried across tasks, its head widened to the classes
seen, trained with cross-entropy on the real data of task ``t`` only. No replay, no generator."""

from __future__ import annotations

import torch
from torch import nn

from .base import ClassifierLearner, classes_seen


class FinetuneLearner(ClassifierLearner):
    """One classifier, its head widened each task, trained on the new task only."""

    def task_classifier(self, task, old_tasks):
        seen = classes_seen([*old_tasks, task])
        if self.classifier is None:
            return self.new_classifier(seen)
        widen_classifier(self.classifier, seen)
        return self.classifier

    def training_data(self, task, old_tasks):
        return task.train.images, task.train.labels


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
