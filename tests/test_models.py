"""The generator and discriminator: growth keeps earlier tasks intact, replay equals per-task
generation, and state dicts of grown generators load into fresh ones."""

import pytest
import torch

from dgm.models import (
    DCGANGenerator,
    MLPGenerator,
    ResNetGenerator,
    dcgan_discriminator,
    gradient_penalty,
    mlp_discriminator,
    resnet_discriminator,
)

NUM_CLASSES = 6
KINDS = ["dcgan", "resnet", "mlp"]


def make(kind, mask):
    if kind == "dcgan":
        return DCGANGenerator(16, NUM_CLASSES, channels=1, ngf=4, mask=mask, s_max=400, backend="reference")
    if kind == "resnet":
        return ResNetGenerator(16, NUM_CLASSES, channels=3, ngf=3, mask=mask, s_max=400, backend="reference")
    return MLPGenerator(16, NUM_CLASSES, channels=1, hidden=12, mask=mask, s_max=400, backend="reference")


def learn(generator, classes, steps=3):
    """A few real optimiser steps on the current task, then random-sign logits (so the mask
    reserves a good share), then consolidation and growth."""
    generator.prepare_task(classes)
    generator.train()
    opt = torch.optim.Adam(generator.task_parameters(classes), lr=1e-2)
    labels = torch.tensor(classes * 4)
    for _ in range(steps):
        opt.zero_grad()
        generator(generator.noise(labels), labels).square().mean().backward()
        opt.step()
    with torch.no_grad():
        for layer in generator.masked_layers():
            for p in layer.logits():
                p.normal_()
    return generator.consolidate_and_expand()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_growth_keeps_earlier_tasks_bit_identical(kind, mask):
    torch.manual_seed(0)
    g = make(kind, mask)
    tasks = [[0, 1], [2], [3, 4]]
    fixed = {}
    for t, classes in enumerate(tasks):
        growth = learn(g, classes)
        assert len(growth) == len(g.body) and all(d >= 0 for d in growth)
        g.eval()
        for k in range(t + 1):
            labels = torch.tensor(tasks[k] * 3)
            z = g.noise(labels, torch.Generator().manual_seed(k))
            out = g(z, labels, task=k)
            if k in fixed:
                assert torch.equal(out, fixed[k]), f"task {k} changed after task {t}"
            fixed[k] = out
    assert g.units() > g.initial_units  # it grew


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_replay_rows_equal_per_task_generation(kind, mask):
    torch.manual_seed(1)
    g = make(kind, mask)
    tasks = [[0], [1, 2], [3]]
    for classes in tasks:
        learn(g, classes)
    g.prepare_task([4])
    g.eval()
    labels = torch.tensor([3, 0, 1, 2, 0, 3, 2])
    row_task = torch.tensor([2, 0, 1, 1, 0, 2, 1])
    z = g.noise(labels, torch.Generator().manual_seed(3))
    rows = g.generate(labels, row_task, z=z)
    for k in range(3):
        sel = (row_task == k).nonzero(as_tuple=True)[0]
        expected = g(z[sel], labels[sel], task=k)
        torch.testing.assert_close(rows[sel], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_state_dict_of_grown_generator_loads_into_fresh_one(kind, mask):
    torch.manual_seed(2)
    g = make(kind, mask)
    for classes in ([0], [1]):
        learn(g, classes)
    fresh = make(kind, mask)
    fresh.load_state_dict(g.state_dict())
    g.eval(), fresh.eval()
    assert fresh.task == g.task == 2
    assert [layer.sizes() for layer in fresh.body] == [layer.sizes() for layer in g.body]
    for k, classes in enumerate(([0], [1])):
        labels = torch.tensor(classes * 4)
        z = g.noise(labels, torch.Generator().manual_seed(k))
        assert torch.equal(fresh(z, labels, task=k), g(z, labels, task=k))


def test_generator_errors():
    g = make("mlp", "weight")
    with pytest.raises(ValueError, match="never trained"):
        g(torch.zeros(2, 16), torch.tensor([0, 0]))
    g.prepare_task([0])
    with pytest.raises(ValueError, match="no head"):
        g(torch.zeros(2, 16), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, 16\)"):
        g(torch.zeros(2, 15), torch.tensor([0, 0]))
    with pytest.raises(RuntimeError, match="already prepared"):
        g.prepare_task([0])
    with pytest.raises(ValueError, match="nz=4 must be >= num_classes=6"):
        MLPGenerator(4, NUM_CLASSES)


def test_generate_checks_its_rows_on_the_device():
    """Replay never reads the device: bad rows fail on the device (a RuntimeError on the CPU)."""
    fresh = make("mlp", "weight")
    fresh.prepare_task([0])
    with pytest.raises(ValueError, match="no task is consolidated"):
        fresh.generate(torch.tensor([0]), torch.tensor([0]))
    g = make("mlp", "weight")
    learn(g, [0])
    with pytest.raises(RuntimeError, match="class has no head"):
        g.generate(torch.tensor([0, 5]), torch.tensor([0, 0]))
    with pytest.raises(RuntimeError, match=r"must name consolidated tasks: consolidated tasks are 0\.\.0"):
        g.generate(torch.tensor([0, 0]), torch.tensor([0, 1]))


def test_noise_carries_one_hot_label():
    g = make("mlp", "weight")
    labels = torch.tensor([2, 0, 5])
    z = g.noise(labels)
    assert torch.equal(z[:, :NUM_CLASSES], torch.nn.functional.one_hot(labels, NUM_CLASSES).float())


@pytest.mark.parametrize("build", [lambda n: dcgan_discriminator(n, 3, 8), lambda n: resnet_discriminator(n, 3, 4, 16),
                                   lambda n: mlp_discriminator(n, 3, 16)])
def test_discriminator_heads_and_gradient_penalty(build):
    d = build(4)
    x = torch.randn(5, 3, 32, 32)
    critic, logits = d(x)
    assert critic.shape == (5,) and logits.shape == (5, 4)
    # A critic linear in x with weight vector v has gradient norm ||v||: GP = (||v|| - 1)^2 exactly.
    v = torch.randn(3 * 32 * 32, dtype=torch.float64)
    gp = gradient_penalty(lambda t: t.flatten(1) @ v, x.double(), torch.randn(5, 3, 32, 32, dtype=torch.float64))
    torch.testing.assert_close(gp, (v.norm() - 1) ** 2)


@pytest.mark.parametrize("build", [lambda n: dcgan_discriminator(n, 1, 8), lambda n: resnet_discriminator(n, 1, 4, 16),
                                   lambda n: mlp_discriminator(n, 1, 16)])
def test_discriminator_scores_each_sample_on_its_own(build):
    """The cause of the DCGAN collapse: a training-mode batch norm made a sample's class logits
    depend on the rest of its batch (one task's classes only), unlike at evaluation. Scores in a
    batch must equal the scores of each sample alone, in training and evaluation mode."""
    torch.manual_seed(0)
    d = build(3)
    x = torch.randn(6, 1, 32, 32)
    x[:3] += 2.0  # two batches of different statistics, like a task's real images and the replay
    for mode in (d.train, d.eval):
        mode()
        critic, logits = d(x)
        alone = [d(x[i:i + 1]) for i in range(6)]
        torch.testing.assert_close(critic, torch.cat([c for c, _ in alone]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, torch.cat([c for _, c in alone]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_host_known_classes_give_the_same_images_and_gradients(kind, mask):
    """``classes=`` (the trainer's sync-free path) computes what reading the labels computes."""
    torch.manual_seed(0)
    g = make(kind, mask).double()  # float64: summation order alone must not fail the comparison
    learn(g, [0, 1])
    g.prepare_task([2, 3, 4])
    g.train()
    labels = torch.tensor([4, 2, 2, 3, 4, 3, 2])
    z = g.noise(labels)
    images, grads = [], []
    for classes in (None, [2, 3, 4]):
        torch.manual_seed(1)  # the same batch-norm state and draws for both
        out = g(z, labels, classes=classes)
        params = g.task_parameters([2, 3, 4])
        grads.append(torch.autograd.grad(out.square().sum(), params))
        images.append(out.detach())
    torch.testing.assert_close(images[1], images[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_host_known_classes_must_have_heads():
    g = make("mlp", "weight")
    g.prepare_task([0, 1])
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="no head"):
        g(g.noise(labels), labels, classes=[0, 5])
    with pytest.raises(ValueError, match="at least one class"):
        g(g.noise(labels), labels, classes=[])
