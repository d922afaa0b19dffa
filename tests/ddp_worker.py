"""A rank of the data-parallel tests (tests/test_distributed.py), started by them with torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``):

- ``python tests/ddp_worker.py grads OUT``: one DGM step's gradients on this rank's rows of a fixed
  global batch, averaged over the ranks, this rank's minibatch indices of an epoch, and what the
  replica check says of models that agree and of models that differ on rank 1, saved to ``OUT``;
- ``python tests/ddp_worker.py die``: a rank that joins the group and exits abruptly (``os._exit``),
  as a crashed or killed process would, while the others train.
"""

from __future__ import annotations

import os
import sys

import torch

from dgm import distributed
from dgm.masks import sparsity_regularizer
from dgm.config import TrainConfig
from dgm.methods.base import discriminator_loss, generator_loss, minibatches
from dgm.reporting import SilentReporter
from dgm.models import MLPGenerator, mlp_discriminator

BATCH, CLASSES, SIDE, NZ = 8, 4, 8, 8


def step_gradients(rank: int, world: int) -> dict[str, torch.Tensor]:
    """The gradients of DGMw's discriminator loss (critic, classifier on real + replay rows) and
    generator loss (critic, class term, sparsity) on rows ``rank::world`` of one fixed batch,
    averaged over the ranks (:func:`dgm.distributed.sync_gradients`) when ``world > 1``. The
    gradient penalty's weight is 0 (its interpolates are random draws, rank-distinct by design);
    the generator runs in eval mode (batch norm couples the rows of a batch)."""
    torch.manual_seed(0)
    discriminator = mlp_discriminator(CLASSES, 1, 16, SIDE)
    generator = MLPGenerator(NZ, CLASSES, 1, 16, mask="weight", backend="reference", image_size=SIDE)
    generator.prepare_task([0, 1])
    generator.eval()
    data = torch.Generator().manual_seed(1)
    x, fake, replay = (torch.rand(BATCH, 1, SIDE, SIDE, generator=data) * 2 - 1 for _ in range(3))
    y, replay_y = torch.tensor([0, 1] * (BATCH // 2)), torch.tensor([2, 3] * (BATCH // 2))
    z = torch.randn(BATCH, NZ, generator=data)
    rows = slice(rank, None, world)

    loss_d, _, _ = discriminator_loss(discriminator, x[rows], y[rows], fake[rows], 0.0, (replay[rows], replay_y[rows]))
    loss_d.backward()
    if world > 1:
        distributed.sync_gradients(discriminator.parameters(), "discriminator")
    grads = {f"discriminator.{k}": p.grad.clone() for k, p in discriminator.named_parameters()}
    discriminator.zero_grad(set_to_none=True)

    adversarial, g_class = generator_loss(discriminator, generator(z[rows], y[rows], classes=[0, 1]), y[rows])
    reg = sparsity_regularizer(layer.mask_usage() for layer in generator.masked_layers())
    (adversarial + 0.1 * reg + g_class).backward()
    if world > 1:
        distributed.sync_gradients(generator.parameters(), "generator")
    grads.update({f"generator.{k}": p.grad.clone() for k, p in generator.named_parameters() if p.grad is not None})
    return grads


def epoch_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    """This rank's indices of each minibatch of one epoch over ``n`` samples (global batch
    ``batch_size``), as the task loop draws them (:func:`dgm.methods.base.minibatches`)."""
    config = distributed.rank_config(TrainConfig(epochs=1, batch_size=batch_size))
    rng = torch.Generator().manual_seed(5)
    task = type("Task", (), {"index": 0})
    return [idx for _, _, _, idx in minibatches(n, config, rng, SilentReporter(), task, torch.device("cpu"))]


def replica_checks(rank: int) -> list[str]:
    """The errors of :func:`dgm.distributed.check_replicas` (``""``: none) for a model equal on
    every rank, one whose weight differs on rank 1, and one whose shape differs on rank 1."""
    said = []
    for change in (None, "weight", "shape"):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2 if change == "shape" and rank == 1 else 4)
        if change == "weight" and rank == 1:
            with torch.no_grad():
                model.weight[1, 2] += 1e-6
        try:
            distributed.check_replicas(7, {"generator": model})
            said.append("")
        except distributed.DistributedError as exc:
            said.append(str(exc))
    return said


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "grads":
        distributed.init("cpu", 60.0)
        try:
            torch.save({"grads": step_gradients(distributed.rank(), distributed.world_size()),
                        "batches": epoch_batches(23, 8), "replicas": replica_checks(distributed.rank())}, args[0])
        finally:
            distributed.close()
    elif mode == "die":
        distributed.init("cpu", 60.0)
        os._exit(3)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
