"""The continual run: learn the tasks in order with the method of ``config.method``
(:mod:`dgm.methods`), evaluate every class seen after each task, report, checkpoint, resume.

A run resumed from the checkpoint after task ``t`` ends with the same metrics as the unbroken run:
each method seeds every task from ``(seed, task)`` (:mod:`dgm.methods.base`).

Launched by torchrun with several processes, the run is data-parallel (:mod:`dgm.distributed`):
each rank trains on its rows of every global batch, evaluation is split across the ranks, the
ranks' models are compared after every task, and rank 0 alone writes the run's files.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import distributed
from .checkpoint import checkpoint_path, save_checkpoint
from .config import TrainConfig, check_device
from .data import load_dataset, split_tasks
from .methods import build_learner
from .methods.selection import evaluate
from .metrics import build_metrics
from .reporting import Reporter, SilentReporter
from .run_folder import restore, resume_point


def run(config: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Train and evaluate a whole continual run; returns the metrics (also in ``out/metrics.json``).
    Every check of the settings, the output folder, the checkpoint and the data comes before the
    first write (``reporter.start``): a run that cannot start leaves ``out`` as it was. Under
    torchrun every rank calls this; rank 0's ``reporter`` writes, the others' is silenced."""
    check_device(config.device)
    device = distributed.init(config.device, config.dist_timeout)
    try:
        return _run(config, reporter, device)
    finally:
        distributed.close()


def _run(config: TrainConfig, reporter: Reporter | None, device: torch.device) -> dict:
    backend = config.backend  # dgm-train resolves --fused into the backend (dgm.cli.train.resolve_fused)
    out = Path(config.out)
    resume = resume_point(config)

    train, test = load_dataset(config.dataset, root=config.data_root, download=config.download,
                               image_size=config.image_size)
    tasks = split_tasks(train, test, config.classes_per_task, config.tasks, config.val_fraction,
                        config.train_per_class, config.seed)
    world = distributed.world_size()
    torch.manual_seed(config.seed)
    learner = build_learner(distributed.rank_config(config), train.num_classes, train.channels, backend, device)
    history = {"test": [], "val": [], "generator_params": [], "growth": [], "wall_time_s": []}

    if not distributed.is_main():
        reporter = SilentReporter()
    reporter = reporter if reporter is not None else Reporter(out)
    start = 0
    if resume is not None:
        restore(learner, resume, config.method)
        history, start = resume.payload["history"], resume.next_task
        for skipped in resume.skipped:
            reporter.note(f"{skipped}; continuing from {resume.path.name}")

    reporter.start(config.to_dict(), start if resume is not None else None)
    metrics = None
    try:
        for t in range(start, len(tasks)):
            began = time.perf_counter()
            discriminator = learner.train_task(tasks[t], tasks[:t], reporter)
            distributed.check_replicas(t, {**learner.replicated(), "classifier": discriminator})
            history["wall_time_s"].append(time.perf_counter() - began)
            history.setdefault("capture", []).append(learner.step_capture())
            history.setdefault("world_size", []).append(world)
            history["test"].append(evaluate(discriminator, tasks[: t + 1], "test", config.batch_size, device))
            history["val"].append(evaluate(discriminator, tasks[: t + 1], "val", config.batch_size, device))
            params, units = learner.generator_size()
            history["generator_params"].append(params)
            if units is not None:
                history["growth"].append(units)
            metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks[: t + 1]], history,
                                    device=str(device), backend=backend, selection=config.selection)
            if distributed.is_main():
                reporter.task_end(t, metrics, learner.samples(tasks[: t + 1]), 8)
                save_checkpoint(checkpoint_path(out, t),
                                {"config": config.to_dict(), "next_task": t + 1, "history": history,
                                 **learner.state_dict()})
        distributed.barrier("waiting for rank 0 to write the run's last files")
    finally:
        reporter.close()
    if metrics is None:  # every task was done before this resume
        metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks], history,
                                device=str(device), backend=backend, selection=config.selection)
    return metrics
