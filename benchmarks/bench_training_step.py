"""One training step of :func:`dgm.trainer.train_task`, whole: the discriminator's step (critic on
real and fake, gradient penalty, classifier on real and replay, Adam) and the generator's (forward
under the soft mask, sparsity regulariser, HAT compensation, FrozenAdam), in the middle of task 5
(four tasks consolidated, replay of their classes).

Columns: ``reference`` (``--backend reference``) and ``fused`` (what ``--fused`` picks,
:func:`dgm.ops.fastest_backend`); group ``train-step-<config>``. The configs are the shipped
ones: on a GPU the paper's MNIST and CIFAR-10 sizes; on a CPU the small MLP config at batch 16
(the fused column skips there: ``--fused`` runs the reference on a CPU).

:func:`_step` is a copy of the loop body of ``train_task`` (the trainer exposes no step function);
keep the two in step.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dgm import ops
from dgm.config import TrainConfig, load_config_file
from dgm.masks import compensate_logit_grad_, sparsity_regularizer
from dgm.models import gradient_penalty
from dgm.optim import FrozenAdam, reserved_masks
from dgm.trainer import build_discriminator, build_generator, generate_replay, generator_backend

ON_GPU = torch.cuda.is_available()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# (shipped config, settings changed)
CONFIG_RUNS = ([("mnist_dgmw", ()), ("mnist_dgma", ()), ("cifar10_dgmw", ())] if ON_GPU
               else [("mnist5k_dgmw_small", (("batch_size", 16),))])
CHANNELS = {"mnist": 1, "mnist5k": 1, "fashion-mnist": 1, "svhn": 3, "cifar10": 3, "imagenet50": 3}
NUM_CLASSES = 10
DONE = 4  # tasks consolidated before the measured step (one class each)


def _config(name: str, overrides, device: torch.device) -> TrainConfig:
    values = {**load_config_file(CONFIGS / f"{name}.json"), **dict(overrides), "device": str(device)}
    return TrainConfig.from_dict(values)


def _task_state(config: TrainConfig, backend: str, device: torch.device):
    """Everything ``train_task`` sets up before its loop, for task ``DONE`` after ``DONE`` tasks
    learned with random masks (task k: class k)."""
    torch.manual_seed(config.seed)
    channels = CHANNELS[config.dataset]
    generator = build_generator(config, NUM_CLASSES, channels, backend).to(device)
    for k in range(DONE):
        generator.prepare_task([k])
        with torch.no_grad():
            for layer in generator.masked_layers():
                for p in layer.logits():
                    p.copy_(torch.where(torch.rand_like(p) < 0.2, 1.0, -1.0))
        generator.consolidate_and_expand()
    discriminator = build_discriminator(config, DONE + 1, channels).to(device)
    generator.prepare_task([DONE])
    generator.train()
    old_tasks = [SimpleNamespace(index=k, classes=(k,)) for k in range(DONE)]
    replay_x, replay_y = generate_replay(generator, old_tasks, config.batch_size, config.batch_size, config.seed)
    betas = (config.beta1, 0.999)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    logits = [p for layer in generator.masked_layers() for p in layer.logits()]
    weights = [p for p in generator.task_parameters([DONE]) if all(p is not q for q in logits)]
    opt_g = FrozenAdam([{"params": weights}, {"params": logits, "lr": config.mask_lr or config.lr}],
                       lr=config.lr, betas=betas, backend="reference" if generator_backend(generator) == "reference"
                       else "auto")
    opt_g.set_reserved(reserved_masks(generator))
    return SimpleNamespace(
        g=generator, d=discriminator, opt_g=opt_g, opt_d=opt_d, logits=logits, replay_x=replay_x, replay_y=replay_y,
        w_real=1 / (DONE + 1), s_max=config.resolved_s_max, s=config.resolved_s_max / 2,
        lambda_reg=config.resolved_lambda_reg * generator.units() / generator.initial_units,
        lambda_gp=config.lambda_gp, rng=torch.Generator().manual_seed(config.seed),
        x=torch.rand(config.batch_size, channels, config.image_size, config.image_size, device=device) * 2 - 1,
        y=torch.full((config.batch_size,), DONE, dtype=torch.long, device=device))


def _step(st) -> None:
    """The loop body of ``train_task`` (less the reporter's logging)."""
    g, d, x, y = st.g, st.d, st.x, st.y
    g.set_sharpness(st.s)

    st.opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = g(g.noise(y), y)
    critic_real, class_real = d(x)
    critic_fake, _ = d(fake)
    gp = gradient_penalty(lambda v: d(v)[0], x, fake)
    pick = torch.randint(0, st.replay_y.shape[0], (y.shape[0],), generator=st.rng).to(x.device)
    _, class_replay = d(st.replay_x[pick])
    loss_class = st.w_real * F.cross_entropy(class_real, y) + \
        (1 - st.w_real) * F.cross_entropy(class_replay, st.replay_y[pick])
    loss_d = critic_fake.mean() - critic_real.mean() + st.lambda_gp * gp + loss_class
    loss_d.backward()
    st.opt_d.step()

    st.opt_g.zero_grad(set_to_none=True)
    critic_gen, _ = d(g(g.noise(y), y))
    reg = sparsity_regularizer(layer.mask_usage() for layer in g.masked_layers())
    loss_g = -critic_gen.mean() + st.lambda_reg * reg
    loss_g.backward()
    for p in st.logits:
        compensate_logit_grad_(p, st.s, st.s_max)
    st.opt_g.step()


def _run_id(run) -> str:
    name, overrides = run
    return name + "".join(f"-{k}{v}" for k, v in overrides)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("run", CONFIG_RUNS, ids=_run_id)
def test_training_step(benchmark, run, impl, device, synced):
    name, overrides = run
    benchmark.group = f"train-step-{_run_id(run)}"
    backend = "reference"
    if impl == "fused":
        backend = ops.fastest_backend(device)
        if backend == "reference":
            pytest.skip(f"fused column: --fused runs the reference here ({ops.fused_unavailable_reason(device)})")
    st = _task_state(_config(name, overrides, device), backend, device)
    _step(st)  # optimiser state and kernel caches outside the timing
    benchmark(synced(lambda: _step(st)))
