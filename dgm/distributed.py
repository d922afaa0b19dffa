"""Data-parallel training across processes: ``torchrun --nproc_per_node N -m dgm.cli.train ...``.

A run launched by torchrun (``WORLD_SIZE`` > 1 in the environment) joins the process group that
torchrun's variables describe (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): NCCL when the run's device is a GPU (rank ``r`` of a node takes ``cuda:LOCAL_RANK``),
gloo on CPUs, with ``--dist-timeout`` as the longest wait of any collective, so a rank that dies
ends the others with a :class:`~dgm.errors.DistributedError` naming what they were waiting for.
Without torchrun (or with one process) nothing here changes what a run does.

Every rank holds the same models and data; each takes every ``N``-th row of each global batch of
``--batch-size`` (:func:`dgm.methods.base.minibatches`), and the gradients are averaged over the
ranks before every optimiser step, so a step learns from the global batch. How:

- DGM and the replay baseline average the gradients explicitly (:func:`sync_gradients`: one flat
  all-reduce per optimiser): DistributedDataParallel cannot wrap their steps. The discriminator is
  called three or four times before one backward (real, fake, the replay batch, and the gradient
  penalty's interpolates inside ``torch.autograd.grad(create_graph=True)``, which DDP does not
  support), and the generator's forward depends on the task and its parameters grow in place
  after every task (DDP's buckets would have to be rebuilt each time). The explicit all-reduce
  reads the parameter list at every step, so growth needs nothing.
- ``joint`` and ``finetune`` (one forward and one backward of the classifier a step) wrap their
  classifier in DistributedDataParallel (:func:`wrap`), rebuilt every task (the classifier is
  new, or its head wider).

Random draws that should differ between ranks (the step's noise and gradient-penalty
interpolates, the replay and its picks) take rank-distinct seeds (:func:`rank_seed`); model
initialisations use the run's seed on every rank, so all ranks start from the same weights. After
every task the ranks compare a checksum of every model they hold (:func:`check_replicas`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import zlib
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, DistributedError, one_line

__all__ = ["DistributedError", "barrier", "broadcast_buffers", "check_replicas", "checksum", "close", "collective",
           "gradient_sync", "init", "is_main", "launched_rank", "launched_world_size", "rank", "rank_config",
           "rank_seed", "share", "sum_", "sync_gradients", "world_size", "wrap"]

_RANK_SEED_SHIFT = 53  # rank r's seeds are the run's + r * 2**53: every task seed (< 2**53) stays distinct
MAX_RANKS = 2 ** (64 - _RANK_SEED_SHIFT)  # torch seeds are 64-bit
_timeout_s: float | None = None  # --dist-timeout of the process group joined, for the error messages


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE = {text!r} in the environment: torchrun sets it to the number of "
                               "processes, a positive integer") from None
    if not 1 <= size <= MAX_RANKS:
        raise DistributedError(f"WORLD_SIZE = {size} in the environment: 1..{MAX_RANKS} processes are supported")
    return size


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); readable after :func:`close`."""
    return int(os.environ.get("RANK", "0"))


def init(device: str, timeout_s: float) -> torch.device:
    """Join torchrun's process group when it started several processes; returns this rank's device
    (``device`` itself in a single process)."""
    dev = torch.device(device)
    if launched_world_size() == 1:
        return dev
    if dev.type == "cuda":
        if dev.index is not None:
            raise ConfigError("device", device, "cuda: under torchrun each rank takes cuda:LOCAL_RANK")
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    global _timeout_s
    _timeout_s = timeout_s
    with collective(f"joining the {backend} process group at {where}"):
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return dev


def close() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """``seed`` made distinct per rank (``seed`` itself on rank 0 and in a single process)."""
    return seed + (rank() << _RANK_SEED_SHIFT)


def share(n: int) -> int:
    """This rank's share of ``n`` items drawn by every rank alike (rounded up: at least ``n`` in all)."""
    return math.ceil(n / world_size())


def rank_config(config):
    """``config`` as one rank runs it: ``batch_size`` and ``replay_per_class`` its share (the settings
    saved with the run stay the global ones). :class:`ConfigError` unless the batch splits evenly."""
    size = world_size()
    if size == 1:
        return config
    if config.batch_size % size:
        raise ConfigError("batch_size", config.batch_size, f"a multiple of the {size} processes: the global batch "
                                                           "is split evenly across them")
    per_class = None if config.replay_per_class is None else share(config.replay_per_class)
    return dataclasses.replace(config, batch_size=config.batch_size // size, replay_per_class=per_class)


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective inside the block (a rank died, or did not answer within the timeout)
    into a :class:`DistributedError` that names ``what`` this rank was doing; gloo reports a dead
    peer as a plain ``RuntimeError``. In a single process errors pass unchanged."""
    try:
        yield
    except (RuntimeError, ValueError, TimeoutError) as exc:  # dist.DistError is a RuntimeError
        if isinstance(exc, DistributedError) or launched_world_size() == 1:
            raise
        limit = f" within --dist-timeout {_timeout_s:g} s" if _timeout_s is not None else ""
        raise DistributedError(f"rank {launched_rank()} of {launched_world_size()}: {what} failed: another rank "
                               f"stopped or did not answer{limit} ({one_line(exc)}); the run stops (continue it "
                               "with --resume once every rank can run)") from exc


def sync_gradients(params: Iterable[nn.Parameter], what: str) -> None:
    """Average the gradients of ``params`` over the ranks, in place: one all-reduce of all of them
    flattened together (per dtype). Parameters without a gradient are skipped; every rank runs the
    same graph, so they are the same on every rank."""
    grads = [p.grad for p in params if p.grad is not None]
    size = world_size()
    by_kind: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.dtype, g.device), []).append(g)
    for group in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        with collective(f"the all-reduce of the {what}'s gradients"):
            dist.all_reduce(flat)
        flat.div_(size)
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def gradient_sync():
    """:func:`sync_gradients` in a data-parallel run, ``None`` in a single process (whose step is
    left exactly as it is)."""
    return sync_gradients if world_size() > 1 else None


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel in a data-parallel run (its buckets built now: wrap it
    again after it changes shape), ``module`` itself in a single process. Parameters that a step
    does not use (the critic head of a classifier) are allowed."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    with collective("DistributedDataParallel's broadcast of the model from rank 0"):
        return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                       find_unused_parameters=True)


def sum_(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (nothing in a single process); returns it."""
    if world_size() > 1:
        with collective(f"the all-reduce of {what}"):
            dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(module: nn.Module, what: str) -> None:
    """Rank 0's buffers of ``module`` (batch-norm running statistics) on every rank, as
    DistributedDataParallel's ``broadcast_buffers``; nothing in a single process."""
    if world_size() == 1:
        return
    with collective(f"the broadcast of the {what}'s buffers"):
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def checksum(module: nn.Module) -> tuple[list[str], int, torch.Tensor]:
    """``(names, layout, values)`` of ``module``'s state: its tensors' names, a hash of their names
    and shapes, and per tensor its sum and a position-weighted sum in float64 (a permutation
    changes the second), on the module's device."""
    state = [(k, v) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)]
    layout = zlib.crc32(repr([(k, tuple(v.shape), str(v.dtype)) for k, v in state]).encode())
    rows = []
    for _, v in state:
        flat = v.detach().reshape(-1).to(torch.float64)
        weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64).remainder_(101).add_(1)
        rows.append(torch.stack([flat.sum(), (flat * weights).sum()]))
    device = state[0][1].device if state else torch.device("cpu")
    values = torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64, device=device)
    return [k for k, _ in state], layout, values


def check_replicas(task: int, modules: dict[str, nn.Module]) -> None:
    """:class:`DistributedError` unless every rank holds the same ``modules`` (masks, weights and
    shapes) after ``task``, compared by :func:`checksum`; nothing in a single process."""
    size = world_size()
    if size == 1:
        return
    for what, module in modules.items():
        names, layout, values = checksum(module)
        shape = torch.tensor([layout, values.shape[0]], dtype=torch.int64, device=values.device)
        shapes = [torch.empty_like(shape) for _ in range(size)]
        with collective(f"the comparison of the {what} across ranks after task {task}"):
            dist.all_gather(shapes, shape)
        differ = [r for r, s in enumerate(shapes) if not torch.equal(s, shapes[0])]
        if differ:
            raise DistributedError(f"after task {task} the {what} has other tensors or shapes on rank(s) "
                                   f"{', '.join(map(str, differ))} than on rank 0 (consolidation or growth "
                                   "differed between ranks)")
        gathered = [torch.empty_like(values) for _ in range(size)]
        with collective(f"the comparison of the {what} across ranks after task {task}"):
            dist.all_gather(gathered, values)
        for r, other in enumerate(gathered):
            rows = (other != gathered[0]).any(1).nonzero().flatten().tolist()
            if rows:
                raise DistributedError(f"after task {task} the {what} differs between rank 0 and rank {r}: "
                                       f"{', '.join(names[i] for i in rows[:4])}"
                                       f"{' ...' if len(rows) > 4 else ''} (masks, weights or norms diverged)")


def barrier(what: str) -> None:
    """Wait for every rank (nothing in a single process)."""
    if world_size() > 1:
        with collective(what):
            dist.barrier()
