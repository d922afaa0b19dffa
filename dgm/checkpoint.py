"""Checkpoints of a continual run: atomic files, a format marker, safe loading, RNG state.

A checkpoint is a ``torch.save`` file holding ``{"format": "dgm-checkpoint", "version": 1,
"payload": ...}``. The payload may hold only tensors, dicts, lists, tuples, ints, floats, bools,
strings and ``None`` (checked on save, naming the offending key), so that loading can use
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file.

Files are written atomically (temporary file in the same folder, fsync, ``os.replace``): a crash
mid-write leaves the previous checkpoint intact. One file per finished task,
``OUT/checkpoint_task{t}.pt`` (:func:`checkpoint_path`); :func:`latest_checkpoint` finds the
newest.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

FORMAT = "dgm-checkpoint"
VERSION = 1
_NAME = re.compile(r"checkpoint_task(\d+)\.pt")
_LEAVES = (str, int, float, bool, type(None), torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not a dgm checkpoint of a known version."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_payload(value, where: str) -> None:
    if isinstance(value, torch.Tensor) or type(value) in _LEAVES:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint payload {where}: keys must be str or int, got {type(key).__name__}")
            _check_payload(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, torch.Size):
        for k, item in enumerate(value):
            _check_payload(item, f"{where}[{k}]")
        return
    raise TypeError(f"checkpoint payload {where} is a {type(value).__module__}.{type(value).__qualname__}; "
                    "only tensors, dicts, lists, tuples, int, float, bool, str and None can be stored "
                    "(convert numpy values with torch.as_tensor or float/int)")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically, with the format marker and version."""
    if not isinstance(payload, dict):
        raise TypeError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    _check_payload(payload, "payload")
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, "payload": payload}, f))


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """The payload saved at ``path``; :class:`CheckpointError` if the file is missing, corrupt, or
    not a dgm checkpoint of this version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, disallowed pickled globals, ...
        raise CheckpointError(f"checkpoint {path} cannot be read (corrupt or truncated file, or not "
                              f"written by save_checkpoint): {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is a torch file but not a dgm checkpoint: expected a dict with "
                              f"format={FORMAT!r}, found {found}")
    if obj.get("version") != VERSION or not isinstance(obj.get("payload"), dict):
        raise CheckpointError(f"checkpoint {path} has version {obj.get('version')!r}; this dgm reads "
                              f"version {VERSION}")
    return obj["payload"]


def checkpoint_path(out_dir: str | Path, task: int) -> Path:
    """Where the checkpoint taken after finishing ``task`` lives."""
    return Path(out_dir) / f"checkpoint_task{task}.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the highest finished task under ``out_dir``, or ``None``."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()]
    return max(found)[1] if found else None


__all__ = ["FORMAT", "VERSION", "CheckpointError", "atomic_write", "save_checkpoint", "load_checkpoint",
           "checkpoint_path", "latest_checkpoint"]
