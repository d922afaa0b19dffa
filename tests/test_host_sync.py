"""A training step never makes the host wait for the device.

On a GPU, every read of a device value on the host (``.item()``, ``bool(t)``, ``.tolist()``,
ops whose output shape depends on the data such as ``nonzero`` or ``unique``, a copy to the
host) stalls the launch queue until the device catches up. This test runs whole steps of
:func:`dgm.methods.dgm.train_step` (both networks, replay, optimisers) on the CPU under a
``TorchFunctionMode`` that records every such call made *by the package's own code* (calls that
PyTorch makes inside its modules and optimisers are PyTorch's business), so it fails wherever a
sync creeps into the step, GPU or not; the same holds for replay (``MaskedGenerator.generate``). On
a GPU, ``test_step_on_gpu_never_syncs`` asks CUDA itself.
"""

from __future__ import annotations

import pytest
import torch

from dgm import ops
from dgm.config import TrainConfig
from dgm.methods.dgm import build_generator, train_step
from dgm.step_audit import HostReads, consolidated_task


def test_the_audit_sees_a_sync_in_package_code():
    """The mode must catch what it is there to catch, or the real test proves nothing."""
    generator = build_generator(_config("mlp", "dgmw"), 4, 1, "reference")
    generator.prepare_task([0, 1])
    labels = torch.tensor([0, 1, 1])
    with HostReads() as reads:
        generator(generator.noise(labels), labels)  # no host classes: reads the labels back
    assert any(name == "unique" and caller.startswith("generator.py") for name, caller in reads.calls), reads.calls


def _config(arch: str, method: str) -> TrainConfig:
    return TrainConfig(method=method, arch=arch, batch_size=16, nz=16, hidden=64, ngf=4, ndf=8, seed=0)


def test_training_step_never_reads_the_device(dgm_task):
    state, x, y = dgm_task
    with HostReads() as reads:
        for _ in range(2):
            losses = train_step(state, x, y)
    assert reads.calls == []
    assert all(torch.isfinite(v) for v in losses.values())


def test_replay_never_reads_the_device(dgm_task):
    generator = dgm_task[0].generator.eval()
    row_task = torch.tensor([1, 0, 1, 1, 0])
    labels = 2 * row_task + torch.tensor([0, 1, 1, 0, 0])  # task k learned classes 2k and 2k + 1
    with HostReads() as reads:
        images = generator.generate(labels, row_task)
    assert reads.calls == []
    assert images.shape == (5, 1, 32, 32) and torch.isfinite(images).all()


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dgmw", "dgma"])
def test_step_on_gpu_never_syncs(method):
    device = torch.device("cuda")
    state, x, y = consolidated_task(_config("dcgan", method), ops.fastest_backend(device), device, 2,
                                    classes_per_task=2, density=0.3)
    train_step(state, x, y)  # first calls: autotuning, allocator warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            train_step(state, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
