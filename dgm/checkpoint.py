"""Checkpoints of a continual run: atomic files, a format marker, safe loading, RNG state.

A checkpoint is a ``torch.save`` file holding ``{"format": "dgm-checkpoint", "version": 1,
"payload": ...}``. The payload may hold only tensors, dicts, lists, tuples, ints, floats, bools,
strings and ``None`` (checked on save, naming the offending key), so that loading can use
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file.

Files are written atomically (temporary file in the same folder, fsync, ``os.replace``): a crash
mid-write leaves the previous checkpoint intact, and at worst its temporary file, which
:func:`remove_partial_writes` recognises by name. One file per finished task,
``OUT/checkpoint_task{t}.pt`` (:func:`checkpoint_path`); :func:`checkpoints` lists them newest first.

A file that cannot be loaded raises :class:`~dgm.errors.CheckpointError` naming it and why, in one
line; never with advice to load it unsafely (PyTorch's own message suggests ``weights_only=False``,
which would run whatever code a damaged or foreign file carries).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import CheckpointError, one_line

FORMAT = "dgm-checkpoint"
VERSION = 1
_NAME = re.compile(r"checkpoint_task(\d+)\.pt")
_PARTIAL = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # atomic_write's temporary files
_LEAVES = (str, int, float, bool, type(None), torch.dtype, torch.device)


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
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, disallowed pickled globals, ...
        raise CheckpointError(f"checkpoint {path} cannot be read: {_unreadable(exc)}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is a torch file but not a dgm checkpoint: expected a dict with "
                              f"format={FORMAT!r}, found {found}")
    if obj.get("version") != VERSION or not isinstance(obj.get("payload"), dict):
        raise CheckpointError(f"checkpoint {path} has version {obj.get('version')!r}; this dgm reads "
                              f"version {VERSION}")
    return obj["payload"]


def _unreadable(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line and without PyTorch's advice."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        found = re.search(r"unsupported GLOBAL (\S+)", text)
        return ("it holds " + (f"code ({found.group(1)})" if found else "objects other than tensors and plain data")
                + ", which a dgm checkpoint never does: a foreign or damaged file; it was not loaded")
    zip_error = re.match(r"PytorchStreamReader failed reading zip archive: ([^.]*)", text)
    if zip_error:
        return f"not a complete torch file ({zip_error.group(1)}): truncated or damaged"
    if isinstance(exc, EOFError):
        return "the file ends early (empty or truncated)"
    return f"damaged or not a torch file ({one_line(exc)})"


def checkpoint_path(out_dir: str | Path, task: int) -> Path:
    """Where the checkpoint taken after finishing ``task`` lives."""
    return Path(out_dir) / f"checkpoint_task{task}.pt"


def checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """``(task, path)`` of every checkpoint under ``out_dir``, the highest finished task first."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_file()),
                  reverse=True)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint of the highest finished task under ``out_dir``, or ``None``."""
    found = checkpoints(out_dir)
    return found[0][1] if found else None


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` calls killed mid-write left in
    ``folder``; returns their paths."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if _PARTIAL.fullmatch(p.name) and p.is_file()] if folder.is_dir() else []
    for path in found:
        path.unlink()
    return found


__all__ = ["FORMAT", "VERSION", "CheckpointError", "atomic_write", "checkpoint_path", "checkpoints",
           "latest_checkpoint", "load_checkpoint", "remove_partial_writes", "save_checkpoint"]
