"""The continual run: learn the tasks in order with the method of ``config.method``
(:mod:`dgm.methods`), evaluate every class seen after each task, report, checkpoint, resume.

A run resumed from the checkpoint after task ``t`` ends with the same metrics as the unbroken run:
each method seeds every task from ``(seed, task)`` (:mod:`dgm.methods.base`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .checkpoint import CheckpointError, checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import load_dataset, split_tasks
from .methods import build_learner
from .methods.selection import evaluate
from .metrics import build_metrics
from .reporting import Reporter

# Config keys that may differ between a run and its resumption.
_RESUMABLE_CHANGES = {"out", "resume", "tasks", "device", "backend", "fused", "capture", "data_root", "download"}


def _check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    differ = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
    if differ:
        raise CheckpointError(f"{path} was written by a run with other settings ({', '.join(differ)}); "
                              f"resume with the same settings or choose another --out")


def run(config: TrainConfig, reporter: Reporter | None = None) -> dict:
    """Train and evaluate a whole continual run; returns the metrics (also in ``out/metrics.json``)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but no CUDA GPU is available")
    backend = config.backend  # dgm-train resolves --fused into the backend (dgm.cli.train.resolve_fused)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = load_dataset(config.dataset, root=config.data_root, download=config.download,
                               image_size=config.image_size)
    tasks = split_tasks(train, test, config.classes_per_task, config.tasks, config.val_fraction,
                        config.train_per_class, config.seed)
    torch.manual_seed(config.seed)
    learner = build_learner(config, train.num_classes, train.channels, backend, device)
    history = {"test": [], "val": [], "generator_params": [], "growth": [], "wall_time_s": []}

    start = 0
    path = latest_checkpoint(out)
    if path is not None and not config.resume:
        raise CheckpointError(f"{out} holds a checkpoint of an earlier run ({path.name}); pass --resume to "
                              f"continue it or choose another --out")
    if path is not None:
        state = load_checkpoint(path, map_location=device)
        _check_resumable(state["config"], config, path)
        learner.load_state_dict(state)
        history, start = state["history"], state["next_task"]

    reporter = reporter if reporter is not None else Reporter(out)
    reporter.start(config.to_dict(), start if path is not None else None)
    metrics = None
    try:
        for t in range(start, len(tasks)):
            began = time.perf_counter()
            discriminator = learner.train_task(tasks[t], tasks[:t], reporter)
            history["wall_time_s"].append(time.perf_counter() - began)
            history.setdefault("capture", []).append(learner.step_capture())
            history["test"].append(evaluate(discriminator, tasks[: t + 1], "test", config.batch_size, device))
            history["val"].append(evaluate(discriminator, tasks[: t + 1], "val", config.batch_size, device))
            params, units = learner.generator_size()
            history["generator_params"].append(params)
            if units is not None:
                history["growth"].append(units)
            metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks[: t + 1]], history,
                                    device=str(device), backend=backend, selection=config.selection)
            reporter.task_end(t, metrics, learner.samples(tasks[: t + 1]), 8)
            save_checkpoint(checkpoint_path(out, t),
                            {"config": config.to_dict(), "next_task": t + 1, "history": history,
                             **learner.state_dict()})
    finally:
        reporter.close()
    if metrics is None:  # every task was done before this resume
        metrics = build_metrics(config.to_dict(), [list(task.classes) for task in tasks], history,
                                device=str(device), backend=backend, selection=config.selection)
    return metrics
