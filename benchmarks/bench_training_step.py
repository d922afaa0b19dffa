"""One training step of DGM (:mod:`dgm.methods.dgm`), whole: the discriminator's step (critic on
real and fake, gradient penalty, classifier on real and replay, Adam) and the generator's (forward
under the soft mask, sparsity regulariser, HAT compensation, FrozenAdam), in the middle of task 5
(four tasks consolidated, replay of their classes).

Columns: ``reference`` (``--backend reference``), ``fused`` (what ``--fused`` picks,
:func:`dgm.ops.fastest_backend`), both eager, and ``captured`` (the fused step captured as a CUDA
graph and replayed, as ``dgm-train`` runs it on a GPU: :mod:`dgm.step_graph`); group
``train-step-<config>``. The configs are the shipped
ones: on a GPU the paper's MNIST and CIFAR-10 sizes; on a CPU the small MLP config at batch 16
(the fused and captured columns skip there: ``--fused`` runs the reference on a CPU, and CUDA
graphs need a GPU).

It calls the method's own :func:`~dgm.methods.dgm.begin_task` and :func:`~dgm.methods.dgm.train_step`.
"""

import functools
from pathlib import Path

import pytest
import torch

from dgm import ops
from dgm.config import TrainConfig, load_config_file
from dgm.methods.dgm import train_step
from dgm.step_audit import consolidated_task
from dgm.step_graph import WARMUP, CapturedStep

ON_GPU = torch.cuda.is_available()
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# (shipped config, settings changed)
CONFIG_RUNS = ([("mnist_dgmw", ()), ("mnist_dgma", ()), ("cifar10_dgmw", ())] if ON_GPU
               else [("mnist5k_dgmw_small", (("batch_size", 16),))])
CHANNELS = {"mnist": 1, "mnist5k": 1, "fashion-mnist": 1, "svhn": 3, "cifar10": 3, "imagenet50": 3}
DONE = 4  # tasks consolidated before the measured step (one class each)


def _config(name: str, overrides, device: torch.device) -> TrainConfig:
    values = {**load_config_file(CONFIGS / f"{name}.json"), **dict(overrides), "device": str(device)}
    return TrainConfig.from_dict(values)


def _run_id(run) -> str:
    name, overrides = run
    return name + "".join(f"-{k}{v}" for k, v in overrides)


@pytest.mark.parametrize("impl", ["reference", "fused", "captured"])
@pytest.mark.parametrize("run", CONFIG_RUNS, ids=_run_id)
def test_training_step(benchmark, run, impl, device, synced):
    name, overrides = run
    benchmark.group = f"train-step-{_run_id(run)}"
    backend = "reference"
    if impl != "reference":
        backend = ops.fastest_backend(device)
        if backend == "reference":
            pytest.skip(f"{impl} column: --fused runs the reference here ({ops.fused_unavailable_reason(device)})")
    config = _config(name, overrides, device)
    state, x, y = consolidated_task(config, backend, device, DONE, channels=CHANNELS[config.dataset])
    step = functools.partial(train_step, state)
    if impl == "captured":
        step = CapturedStep(step, generators=(state.replay_rng,))
    for _ in range(WARMUP + 1):  # optimiser state, kernel caches and the capture outside the timing
        step(x, y)
    benchmark(synced(lambda: step(x, y)))
