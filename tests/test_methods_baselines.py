"""The baselines on the offline MNIST subset: joint trains on every task's real data, finetune
forgets, replay's generator replays every earlier class as it was before the task, and every
baseline reports, checkpoints and resumes like DGM."""

import csv

import pytest
import torch

from dgm.checkpoint import checkpoint_path, load_checkpoint
from dgm.cli.train import parse_config
from dgm.config import METHODS, TrainConfig
from dgm.data import load_dataset, split_tasks
from dgm.methods import build_learner, replay
from dgm.methods.base import generate_replay, task_seed
from dgm.methods.joint import JointLearner
from dgm.methods.selection import evaluate
from dgm.reporting import Reporter
from dgm.trainer import run

BASELINES = ("joint", "finetune", "replay")


def tiny(out, method, tasks=3, **kw):
    return TrainConfig(dataset="mnist5k", method=method, tasks=tasks, epochs=1, batch_size=16, arch="mlp",
                       hidden=16, nz=16, train_per_class=24, out=str(out), **kw)


def quiet(out):
    return Reporter(out, show_progress=False)


def split(config):
    train, test = load_dataset(config.dataset)
    return split_tasks(train, test, config.classes_per_task, config.tasks, config.val_fraction,
                       config.train_per_class, config.seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-task run of every baseline, recording what joint's classifiers trained on and what
    replay's generator replayed."""
    seen = {"classifier_data": [], "replays": []}
    training_data, replay_for = JointLearner.training_data, replay.replay_for

    def record_classifier(learner, task, old_tasks):
        images, labels = training_data(learner, task, old_tasks)
        seen["classifier_data"].append((task.index, learner.classifier, images.clone(), labels.clone()))
        return images, labels

    def record_replay(generator, task, *args):
        replay = replay_for(generator, task, *args)
        seen["replays"].append((task.index, replay))
        return replay

    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JointLearner, "training_data", record_classifier)
        patch.setattr(replay, "replay_for", record_replay)
        for method in BASELINES:
            for records in seen.values():
                records.clear()
            folder = tmp_path_factory.mktemp(method)
            config = tiny(folder, method)
            out[method] = {"config": config, "metrics": run(config, quiet(folder)), "out": folder,
                           **{k: list(v) for k, v in seen.items()}}
    return out


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_report_and_checkpoint_like_dgm(runs, method):
    m, folder = runs[method]["metrics"], runs[method]["out"]
    assert m["classes_per_task"] == [[0], [1], [2]] and m["config"]["method"] == method
    assert len(m["accuracy_matrix"]) == 3 and len(m["A"]) == 3
    assert m["accuracy_matrix"][0] == [1.0, None, None]  # one class seen: nothing else to predict
    for name in ("metrics.json", "log.csv", "accuracy_matrix.png"):
        assert (folder / name).is_file(), name
    assert (folder / "samples_task2.png").is_file() == (method == "replay")  # only replay has a generator
    state = load_checkpoint(checkpoint_path(folder, 2))
    if method == "replay":
        assert m["generator_params"] == [16 * 16 + 16 * 16] * 3  # nz*hidden + hidden*hidden, no growth
        assert m["generator_units"] == [[16, 16]] * 3
        assert "generator" in state and "classifier" not in state
    else:
        assert m["generator_params"] == [0, 0, 0] and "generator_units" not in m
        assert state["classifier"]["classifier.weight"].shape[0] == 3 and "generator" not in state


def test_finetune_forgets_while_joint_remembers(runs):
    finetune, joint = runs["finetune"], runs["joint"]
    matrix = finetune["metrics"]["accuracy_matrix"]
    assert matrix[2][2] == 1.0
    # the classifier trained on task 2 alone calls every old test image class 2
    learner = build_learner(finetune["config"], 10, 1, "reference", torch.device("cpu"))
    learner.load_state_dict(load_checkpoint(checkpoint_path(finetune["out"], 2)))
    tasks = split(finetune["config"])
    old = torch.cat([t.test.images for t in tasks[:2]])
    with torch.no_grad():
        assert (learner.classifier.eval()(old)[1].argmax(1) == 2).all()
    assert joint["metrics"]["A"][2] > finetune["metrics"]["A"][2] + 0.2


def test_joint_trains_a_new_classifier_on_real_data_of_all_tasks_so_far(runs):
    tasks = split(runs["joint"]["config"])
    data = runs["joint"]["classifier_data"]
    assert [index for index, *_ in data] == [0, 1, 2]
    for t, classifier, images, labels in data:
        assert torch.equal(images, torch.cat([task.train.images for task in tasks[: t + 1]]))
        assert torch.equal(labels, torch.cat([task.train.labels for task in tasks[: t + 1]]))
        assert classifier.classifier.out_features == t + 1
    assert len({id(classifier) for _, classifier, *_ in data}) == 3  # from scratch every task
    # the evaluated classifier is the last one trained
    final = data[-1][1]
    assert [c for c, _ in evaluate(final, tasks, "test", 64, torch.device("cpu"))] == \
        runs["joint"]["metrics"]["test_counts"]["correct"][2]


def test_replay_generator_replays_every_earlier_class_as_it_was_before_the_task(runs):
    config, folder = runs["replay"]["config"], runs["replay"]["out"]
    tasks = split(config)
    replays = runs["replay"]["replays"]
    assert [t for t, _ in replays] == [0, 1, 2] and replays[0][1] is None
    for t, (images, labels, batch) in replays[1:]:
        per_class = tasks[t].train.labels.shape[0]
        assert labels.tolist() == [c for c in range(t) for _ in range(per_class)]
        assert batch == config.batch_size * t
        assert images.shape == (t * per_class, 1, 32, 32) and images.abs().max() <= 1
        # made by the generator as the checkpoint after task t-1 holds it (a frozen copy)
        before = build_learner(config, 10, 1, "reference", torch.device("cpu"))
        before.load_state_dict(load_checkpoint(checkpoint_path(folder, t - 1)))
        again, _ = generate_replay(before.generator, tasks[:t], per_class, config.batch_size,
                                   task_seed(config.seed, t))
        assert torch.equal(again, images)
    # it learned task 2 on its own replay: the replay of tasks 0 and 1 changed between tasks 1 and 2
    final = build_learner(config, 10, 1, "reference", torch.device("cpu"))
    final.load_state_dict(load_checkpoint(checkpoint_path(folder, 2)))
    old, _ = generate_replay(final.generator, tasks[:1], 8, 8, 0)
    earlier = build_learner(config, 10, 1, "reference", torch.device("cpu"))
    earlier.load_state_dict(load_checkpoint(checkpoint_path(folder, 0)))
    assert not torch.equal(old, generate_replay(earlier.generator, tasks[:1], 8, 8, 0)[0])


def _logged_losses(out, task):
    with open(out / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f) if row["task"] == str(task)]


@pytest.mark.parametrize("method", BASELINES)
def test_resume_continues_as_the_unbroken_run(runs, tmp_path, method):
    run(tiny(tmp_path, method, tasks=2), quiet(tmp_path))
    resumed = run(tiny(tmp_path, method, tasks=3, resume=True), quiet(tmp_path))
    full = runs[method]["metrics"]
    assert resumed["test_counts"] == full["test_counts"]
    assert resumed["generator_params"] == full["generator_params"]
    for task in range(3):
        assert _logged_losses(tmp_path, task) == _logged_losses(runs[method]["out"], task)


def test_every_method_is_a_cli_choice():
    for method in METHODS:
        assert parse_config(["--method", method]).method == method
    with pytest.raises(ValueError, match='method = "merGAN": one of dgmw, '):
        TrainConfig(method="merGAN")
