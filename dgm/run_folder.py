"""The output folder at a run's start: can it be written, and which checkpoint does the run
continue from. Nothing here writes, so a run whose start fails leaves ``--out`` as it was.

``--resume`` continues from the newest checkpoint. When that one is damaged, foreign or
inconsistent, the run stops, names it and the newest older checkpoint that loads, if any;
``--resume-from-valid`` continues from that older one instead (the run then redoes the tasks after
it and replaces the damaged files as it goes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import checkpoints, load_checkpoint
from .config import TrainConfig
from .errors import CheckpointError, ConfigError, one_line
from .metrics import build_metrics


@dataclass
class Resume:
    """The checkpoint a run continues from, and the newer ones skipped because they did not load."""

    path: Path
    payload: dict
    skipped: list[CheckpointError] = field(default_factory=list)

    @property
    def next_task(self) -> int:
        return self.payload["next_task"]


def check_writable(out: Path) -> None:
    """:class:`ConfigError` on ``out`` unless it is a folder, or can be made one, that this process
    can write."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == out and not out.is_dir():
        raise ConfigError("out", str(out), "a folder for the run's files (this path is a file)")
    if not existing.is_dir():
        raise ConfigError("out", str(out), f"a folder for the run's files ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("out", str(out), f"a folder for the run's files that this user can write ({existing} "
                                           "is read-only)")


def resume_point(config: TrainConfig) -> Resume | None:
    """Check ``config.out`` and choose the checkpoint to continue from (``None``: a fresh run);
    :class:`ConfigError` or :class:`CheckpointError` when the run cannot start there."""
    out = Path(config.out)
    check_writable(out)
    found = checkpoints(out)
    if not found:
        return None
    if not (config.resume or config.resume_from_valid):
        raise ConfigError("out", config.out, f"a folder without an earlier run's checkpoints ({found[0][1].name} is "
                                             "there): pass --resume to continue that run, or choose another --out")
    skipped = []
    for task, path in found:
        try:
            payload = _load(path, task, config)
        except CheckpointError as exc:
            skipped.append(exc)
            continue
        if skipped and not config.resume_from_valid:
            raise CheckpointError(f"{skipped[0]}; the newest checkpoint that loads is {path.name} (after task "
                                  f"{task}): pass --resume-from-valid to continue from it")
        config.check_resumable(payload["config"], payload["next_task"], str(out))
        return Resume(path, payload, skipped)
    raise CheckpointError(f"{skipped[0]}; no checkpoint in {out} loads: remove them to start over, or choose "
                          "another --out")


def _load(path: Path, task: int, config: TrainConfig) -> dict:
    """The payload of the checkpoint after ``task``, checked for what resuming reads from it."""
    payload = load_checkpoint(path, map_location=config.device)
    history, next_task = payload.get("history"), payload.get("next_task")
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} holds no settings ('config'): not written by dgm-train")
    if type(next_task) is not int or next_task != task + 1:
        raise CheckpointError(f"checkpoint {path} says next_task = {next_task!r}, but it was taken after task {task} "
                              f"(next_task = {task + 1}): a damaged or edited file")
    try:  # the metrics of the finished tasks are made from their history
        if not isinstance(history, dict) or len(history.get("val", ())) != next_task:
            raise ValueError("no validation rows")
        build_metrics({}, [[]] * next_task, history, device="", backend="", selection="")
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} lacks a valid history of its {next_task} finished tasks "
                              f"({one_line(exc)}): a damaged or edited file") from exc
    return payload


def restore(learner, resume: Resume, method: str) -> None:
    """Load the learner's state from ``resume``; :class:`CheckpointError` when it does not fit."""
    try:
        learner.load_state_dict(resume.payload)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {resume.path} holds weights that do not fit a {method} model of these "
                              f"settings ({one_line(exc)}): a damaged or edited file") from exc
