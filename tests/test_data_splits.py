"""Class-incremental splits and the in-memory data set: classes per task, disjoint stratified
train/val, the validation fraction, determinism, caps and errors."""

import math

import pytest
import torch

from dgm.data import ImageDataset, split_tasks
from dgm.data.splits import holdout_per_class

NUM_CLASSES = 10


def make_data(train_counts, test_counts, seed=0):
    """Data sets whose image ``i`` carries the unique id ``i`` in every pixel (as ``i / 10**4``), with
    classes in shuffled order so nothing relies on sorted input."""
    g = torch.Generator().manual_seed(seed)

    def build(counts, offset):
        labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
        labels = labels[torch.randperm(labels.numel(), generator=g)]
        ids = torch.arange(labels.numel(), dtype=torch.float32) + offset
        images = (ids / 1e4).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
        return ImageDataset(images, labels, len(counts), name="toy")

    return build(train_counts, 0), build(test_counts, 5000)


def ids(ds):
    return set(torch.round(ds.images[:, 0, 0, 0] * 1e4).long().tolist())


TRAIN_COUNTS = [20 + 3 * c for c in range(NUM_CLASSES)]
TEST_COUNTS = [4 + c for c in range(NUM_CLASSES)]


def test_one_class_per_task_is_the_paper_protocol():
    train, test = make_data(TRAIN_COUNTS, TEST_COUNTS)
    tasks = split_tasks(train, test)
    assert [t.index for t in tasks] == list(range(NUM_CLASSES))
    assert [t.classes for t in tasks] == [(c,) for c in range(NUM_CLASSES)]
    for task, n, n_test in zip(tasks, TRAIN_COUNTS, TEST_COUNTS):
        (c,) = task.classes
        n_val = math.floor(0.15 * n)
        assert len(task.val) == n_val and len(task.train) == n - n_val and len(task.test) == n_test
        for part in (task.train, task.val, task.test):
            assert set(part.labels.tolist()) <= {c} and part.num_classes == NUM_CLASSES
        class_ids = {i for i, label in enumerate(train.labels.tolist()) if label == c}
        assert ids(task.train).isdisjoint(ids(task.val))
        assert ids(task.train) | ids(task.val) == class_ids
        assert ids(task.test) == {5000 + i for i, label in enumerate(test.labels.tolist()) if label == c}


def test_several_classes_per_task_are_stratified():
    train, test = make_data(TRAIN_COUNTS, TEST_COUNTS)
    tasks = split_tasks(train, test, classes_per_task=2, val_fraction=0.25)
    assert [t.classes for t in tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for task in tasks:
        val_counts = task.val.class_counts()
        train_counts = task.train.class_counts()
        for c in task.classes:
            assert val_counts[c] == math.floor(0.25 * TRAIN_COUNTS[c])
            assert train_counts[c] == TRAIN_COUNTS[c] - val_counts[c]
        others = [c for c in range(NUM_CLASSES) if c not in task.classes]
        assert val_counts[others].sum() == 0 and train_counts[others].sum() == 0


def test_split_is_deterministic_and_independent_of_task_count():
    train, test = make_data(TRAIN_COUNTS, TEST_COUNTS)
    full = split_tasks(train, test, seed=3)
    again = split_tasks(train, test, seed=3)
    first_three = split_tasks(train, test, tasks=3, seed=3)
    other_seed = split_tasks(train, test, seed=4)
    assert len(first_three) == 3
    for a, b in zip(full, again):
        assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.images, b.val.images)
    for a, b in zip(full, first_three):
        assert ids(a.val) == ids(b.val) and ids(a.train) == ids(b.train)
    assert any(ids(a.val) != ids(b.val) for a, b in zip(full, other_seed))


def test_train_per_class_caps_train_but_not_val():
    train, test = make_data(TRAIN_COUNTS, TEST_COUNTS)
    capped = split_tasks(train, test, classes_per_task=5, train_per_class=7, seed=1)
    full = split_tasks(train, test, classes_per_task=5, seed=1)
    for a, b in zip(capped, full):
        assert a.train.class_counts()[list(a.classes)].tolist() == [7] * 5
        assert ids(a.train) <= ids(b.train)
        assert ids(a.val) == ids(b.val)


def test_val_fraction_zero_gives_empty_val():
    train, test = make_data(TRAIN_COUNTS, TEST_COUNTS)
    for task in split_tasks(train, test, val_fraction=0.0):
        assert len(task.val) == 0 and len(task.train) == TRAIN_COUNTS[task.classes[0]]
        assert task.val.images.shape[1:] == train.images.shape[1:]


def test_holdout_rounds_down_without_float_error():
    labels = torch.zeros(100, dtype=torch.int64)
    (kept, held), = holdout_per_class(labels, 1, 0.29, seed=0)  # 0.29 * 100 == 28.999... in floats
    assert held.numel() == 29 and kept.numel() == 71
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(100))


@pytest.mark.parametrize("kwargs, words", [
    (dict(classes_per_task=3), "classes_per_task=3 does not divide the 10 classes"),
    (dict(classes_per_task=0), "classes_per_task must be a positive integer"),
    (dict(tasks=11), "tasks must be an integer in 1..10"),
    (dict(classes_per_task=2, tasks=6), "tasks must be an integer in 1..5"),
    (dict(tasks=0), "tasks must be an integer in 1..10"),
    (dict(val_fraction=1.0), "val_fraction must be in [0, 1)"),
    (dict(train_per_class=0), "train_per_class must be a positive integer"),
])
def test_bad_arguments_are_named(kwargs, words):
    train, test = make_data(TRAIN_COUNTS, TEST_COUNTS)
    with pytest.raises(ValueError) as info:
        split_tasks(train, test, **kwargs)
    assert words in str(info.value)


def test_class_without_images_is_an_error():
    train, test = make_data([5] * 9 + [0], [2] * 10)
    with pytest.raises(ValueError, match="class 9 of toy has 0 training images"):
        split_tasks(train, test)
    assert len(split_tasks(train, test, tasks=9)) == 9
    train, test = make_data([5] * 10, [2] * 4 + [0] + [2] * 5)
    with pytest.raises(ValueError, match="class 4 of toy has 5 training images after the validation holdout and 0"):
        split_tasks(train, test)


def test_train_and_test_must_share_label_space():
    train, _ = make_data(TRAIN_COUNTS, TEST_COUNTS)
    test = ImageDataset(torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.int64), 5)
    with pytest.raises(ValueError, match="share a label space"):
        split_tasks(train, test)


def test_image_dataset_checks_and_helpers():
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    ds = ImageDataset(images, labels, 4, name="x")
    assert len(ds) == 6 and ds.channels == 3 and ds.image_size == 8 and ds.classes == ("0", "1", "2", "3")
    assert ds.class_counts().tolist() == [2, 2, 2, 0]
    image, label = ds[3]
    assert torch.equal(image, images[3]) and label == 2
    sub = ds.subset(torch.tensor([4, 1]))
    assert torch.equal(sub.images, images[[4, 1]]) and sub.num_classes == 4
    both = ImageDataset.cat([sub, ds])
    assert len(both) == 8 and torch.equal(both.labels[:2], labels[[4, 1]])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and torch.equal(y, labels[:4])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        ImageDataset(images, labels, 2)
    with pytest.raises(ValueError, match="images must be a float32"):
        ImageDataset(images.double(), labels, 4)
    with pytest.raises(ValueError, match="labels must be an int64 tensor"):
        ImageDataset(images, labels[:5], 4)
    with pytest.raises(ValueError, match="classes must name all 4"):
        ImageDataset(images, labels, 4, classes=["a"])
    with pytest.raises(ValueError, match="share num_classes"):
        ImageDataset.cat([ds, ImageDataset(images, labels, 3)])
