"""Model selection (``--selection``): which validation images each mode reads, for every method,
that the best epoch is the one kept, and that ``metrics.json`` says which mode ran."""

import dataclasses

import pytest
import torch
from torch import nn

from dgm.config import TrainConfig
from dgm.data import load_dataset, split_tasks
from dgm.methods import METHODS, base, build_learner, selection
from dgm.methods.selection import BestEpoch
from dgm.reporting import Reporter
from dgm.trainer import run


def tiny(out, method, **kw):
    return TrainConfig(dataset="mnist5k", method=method, tasks=2, epochs=2, batch_size=16, arch="mlp", hidden=16,
                       nz=16, train_per_class=16, out=str(out), mask_lr=0.05, **kw)


class Forbidden:
    """A validation set that must not be read."""

    def __getattr__(self, name):
        raise AssertionError(f"read .{name} of a validation set the selection may not use")

    def __len__(self):
        raise AssertionError("read the length of a validation set the selection may not use")


@pytest.fixture(scope="module")
def tasks():
    train, test = load_dataset("mnist5k")
    return split_tasks(train, test, 1, 2, train_per_class=16)


@pytest.fixture
def recorded_sets(monkeypatch):
    """The validation sets every task's :class:`BestEpoch` is given."""
    sets = []

    class Recording(BestEpoch):
        def __init__(self, classifier, validation, *args):
            sets.append(validation)
            super().__init__(classifier, validation, *args)

    monkeypatch.setattr(base, "BestEpoch", Recording)
    return sets


def learn_both(tmp_path, method, mode, tasks, forbid_old=False, forbid_current=False):
    """Learn task 0, then task 1; earlier or current validation sets replaced by :class:`Forbidden`
    while task 1 is learned (and, with ``forbid_current``, while task 0 is)."""
    config = tiny(tmp_path, method, selection=mode)
    learner = build_learner(config, 10, 1, "reference", torch.device("cpu"))
    reporter = Reporter(tmp_path, show_progress=False, tensorboard=False)
    reporter.start(config.to_dict(), None)
    hide = dataclasses.replace
    first = hide(tasks[0], val=Forbidden()) if forbid_current else tasks[0]
    learner.train_task(first, [], reporter)
    old = hide(tasks[0], val=Forbidden()) if forbid_old else tasks[0]
    learner.train_task(hide(tasks[1], val=Forbidden()) if forbid_current else tasks[1], [old], reporter)
    reporter.close()


def test_official_validates_on_every_class_seen(tmp_path, tasks, recorded_sets):
    learn_both(tmp_path, "dgmw", "official", tasks)
    sets = recorded_sets[1]
    assert [labels for _, labels in sets] == [tasks[0].val.labels, tasks[1].val.labels]
    assert all(images is task.val.images for (images, _), task in zip(sets, tasks))


@pytest.mark.parametrize("method", METHODS)
def test_current_reads_no_validation_image_of_an_earlier_task(tmp_path, tasks, recorded_sets, method):
    learn_both(tmp_path, method, "current", tasks, forbid_old=True)
    sets = recorded_sets[1]
    assert sets[0][0] is tasks[1].val.images
    if method in ("joint", "finetune"):  # no generator: nothing stands for the earlier classes
        assert len(sets) == 1
    else:  # generated images of class 0, as many as task 1 has validation images
        images, labels = sets[1]
        assert labels.tolist() == [0] * len(tasks[1].val) and images.shape[1:] == (1, 32, 32)


@pytest.mark.parametrize("method", METHODS)
def test_last_reads_no_validation_image(tmp_path, tasks, recorded_sets, method, monkeypatch):
    def no_evaluation(*args):
        raise AssertionError("the last epoch needs no evaluation")

    monkeypatch.setattr(selection, "count_correct", no_evaluation)
    learn_both(tmp_path, method, "last", tasks, forbid_old=True, forbid_current=True)
    assert recorded_sets == [[], []]


class Biased(nn.Module):
    """A classifier that predicts the class its bias favours, whatever the image."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x.sum((1, 2, 3)), self.bias.expand(x.shape[0], 2)


@pytest.mark.parametrize("sets, kept", [([(torch.zeros(3, 1, 2, 2), torch.tensor([0, 0, 1]))], 0), ([], 1)])
def test_best_epoch_keeps_the_best_epoch_or_the_last_without_validation(sets, kept):
    classifier = Biased()
    best = BestEpoch(classifier, sets, 2, torch.device("cpu"))
    for favoured in (0, 1):  # epoch 0 scores 2/3, epoch 1 scores 1/3
        with torch.no_grad():
            classifier.bias.copy_(torch.eye(2)[favoured])
        best.end_epoch()
    assert best.restore() is classifier and classifier.bias.argmax().item() == kept


def test_metrics_record_the_selection(tmp_path):
    metrics = run(tiny(tmp_path, "finetune", selection="last"), Reporter(tmp_path, show_progress=False))
    assert metrics["selection"] == "last" and metrics["config"]["selection"] == "last"


def test_an_unknown_selection_is_refused():
    with pytest.raises(ValueError, match='selection = "test": one of official, current, last'):
        TrainConfig(selection="test")
