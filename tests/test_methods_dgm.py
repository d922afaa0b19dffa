"""DGM end to end on the offline MNIST subset: earlier tasks' generators stay bit-identical
through later tasks, and replay is labelled per class, each under its own task's mask; with the
AC-GAN class term each class's head draws its own class of a task."""

import pytest
import torch

from dgm.checkpoint import checkpoint_path, load_checkpoint
from dgm.config import TrainConfig
from dgm.data import ImageDataset, Task, load_dataset, split_tasks
from dgm.methods import build_learner
from dgm.methods.base import generate_replay
from dgm.methods.dgm import build_generator
from dgm.reporting import Reporter
from dgm.trainer import run


def tiny(out, method="dgmw", tasks=3, **kw):
    return TrainConfig(dataset="mnist5k", method=method, tasks=tasks, epochs=1, batch_size=16, arch="mlp",
                       hidden=16, nz=16, train_per_class=24, out=str(out), mask_lr=0.05, **kw)


def quiet(out):
    return Reporter(out, show_progress=False)


def load_generator(config, path):
    train, _ = load_dataset(config.dataset)
    generator = build_generator(config, train.num_classes, train.channels, "reference")
    generator.load_state_dict(load_checkpoint(path)["generator"])
    return generator.eval()


@pytest.mark.parametrize("method", ["dgmw", "dgma"])
def test_earlier_tasks_generate_bit_identically_after_later_tasks(tmp_path, method):
    config = tiny(tmp_path, method)
    metrics = run(config, quiet(tmp_path))
    assert len(metrics["accuracy_matrix"]) == 3
    after_task0 = load_generator(config, checkpoint_path(tmp_path, 0))
    final = load_generator(config, checkpoint_path(tmp_path, 2))
    assert final.units() >= after_task0.units()
    labels = torch.zeros(10, dtype=torch.long)
    z = final.noise(labels, torch.Generator().manual_seed(0))
    assert torch.equal(final(z, labels, task=0), after_task0(z, labels, task=0))


def test_replay_covers_every_old_class_with_its_own_task(tmp_path):
    config = tiny(tmp_path, tasks=3)
    run(config, quiet(tmp_path))
    generator = load_generator(config, checkpoint_path(tmp_path, 2))
    train, test = load_dataset("mnist5k")
    tasks = split_tasks(train, test, 1, 3)
    images, labels = generate_replay(generator, tasks[:2], per_class=5, batch_size=4, seed=1)
    assert images.shape == (10, 1, 32, 32) and labels.tolist() == [0] * 5 + [1] * 5
    assert images.abs().max() <= 1  # tanh images
    # the same rows, generated task by task, agree with the one-pass replay
    z_rng = torch.Generator().manual_seed(1)
    again = torch.cat([generator.generate(labels[i:i + 4], labels[i:i + 4], generator=z_rng) for i in (0, 4, 8)])
    torch.testing.assert_close(again, images)


SIDE = 8  # the two-class task's images are SIDE x SIDE


def _halves(n: int, bright_top: bool, rng: torch.Generator) -> torch.Tensor:
    """``n`` noisy images whose top (class 0) or bottom (class 1) half is bright."""
    x = torch.full((n, 1, SIDE, SIDE), -0.8)
    (x[:, :, : SIDE // 2] if bright_top else x[:, :, SIDE // 2:]).fill_(0.8)
    return (x + 0.1 * torch.randn(x.shape, generator=rng)).clamp(-1, 1)


def _own_class_share(tmp_path, method: str, lambda_class: float, seed: int) -> list[float]:
    """Learn one task of two clearly distinct classes (60 steps), then per class: the share of its
    head's samples that show that class, judged by which half of the image is brighter (the
    classes' definition, so a classifier independent of the discriminator)."""
    rng = torch.Generator().manual_seed(seed)

    def data(n):
        return ImageDataset(torch.cat([_halves(n, True, rng), _halves(n, False, rng)]),
                            torch.arange(2).repeat_interleave(n), 2)

    task = Task(0, (0, 1), data(64), data(8), data(8))
    # nz >= the 10 classes of the config's data set (mnist5k), which TrainConfig checks
    config = TrainConfig(method=method, arch="mlp", image_size=SIDE, nz=10, hidden=32, batch_size=32, epochs=15,
                         mask_lr=0.05, seed=seed, lambda_class=lambda_class, selection="last", out=str(tmp_path))
    learner = build_learner(config, 2, 1, "reference", torch.device("cpu"))
    reporter = quiet(tmp_path)
    reporter.start(config.to_dict(), None)
    learner.train_task(task, [], reporter)
    reporter.close()
    images, labels = generate_replay(learner.generator, [task], 100, 100, seed)
    drawn = (images[:, 0, SIDE // 2:].mean((1, 2)) > images[:, 0, : SIDE // 2].mean((1, 2))).long()
    return [(drawn[labels == c] == c).float().mean().item() for c in (0, 1)]


@pytest.fixture
def one_thread():
    """Tiny networks run faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["dgmw", "dgma"])
def test_each_head_draws_its_own_class_of_the_task(tmp_path, method, one_thread):
    assert min(_own_class_share(tmp_path, method, 1.0, seed=0)) >= 0.9


@pytest.mark.parametrize("method", ["dgmw", "dgma"])
def test_without_the_class_term_heads_draw_the_other_class(tmp_path, method, one_thread):
    """The control: with ``lambda_class=0`` only the critic trains the heads, and a head draws
    whichever class of the task it settles on (5 of 6 seeds had a head drawing the other class)."""
    shares = [_own_class_share(tmp_path / str(seed), method, 0.0, seed) for seed in (0, 1)]
    assert any(min(share) < 0.5 for share in shares), shares
