"""One training step of DGM (:mod:`dgm.methods.dgm`), whole: the discriminator's step (critic on
real and fake, gradient penalty, classifier on real and replay, Adam) and the generator's (forward
under the soft mask, sparsity regulariser, HAT compensation, FrozenAdam), in the middle of task 5
(four tasks consolidated, replay of their classes).

Columns: ``reference`` (``--backend reference``) and ``fused`` (what ``--fused`` picks,
:func:`dgm.ops.fastest_backend`); group ``train-step-<config>``. The configs are the shipped
ones: on a GPU the paper's MNIST and CIFAR-10 sizes; on a CPU the small MLP config at batch 16
(the fused column skips there: ``--fused`` runs the reference on a CPU).

It calls the method's own :func:`~dgm.methods.dgm.begin_task` and :func:`~dgm.methods.dgm.train_step`.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dgm import ops
from dgm.config import TrainConfig, load_config_file
from dgm.methods.dgm import begin_task, build_generator, train_step

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
    """:func:`~dgm.methods.dgm.begin_task` of task ``DONE`` after ``DONE`` tasks learned with random
    masks (task k: class k), and a real-sized batch."""
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
    train = SimpleNamespace(channels=channels)
    task = SimpleNamespace(index=DONE, classes=(DONE,), train=train)
    old_tasks = [SimpleNamespace(index=k, classes=(k,)) for k in range(DONE)]
    state = begin_task(generator, task, old_tasks, config.batch_size, config, device)
    x = torch.rand(config.batch_size, channels, config.image_size, config.image_size, device=device) * 2 - 1
    y = torch.full((config.batch_size,), DONE, dtype=torch.long, device=device)
    return state, x, y, config.resolved_s_max / 2


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
    state, x, y, s = _task_state(_config(name, overrides, device), backend, device)
    train_step(state, x, y, s)  # optimiser state and kernel caches outside the timing
    benchmark(synced(lambda: train_step(state, x, y, s)))
