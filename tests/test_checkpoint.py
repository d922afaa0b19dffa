"""Checkpoints: atomic writes, safe loading with clear errors, RNG state round trips."""

import os
import uuid

import numpy as np
import pytest
import torch

from dgm import checkpoint as ckpt
from dgm.checkpoint import CheckpointError, checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint


def _payload(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "next_task": 3,
            "history": {"test": [[(9, 10)], [(7, 10), (8, 9)]], "wall_time_s": [1.25, 2.5]},
            "config": {"method": "dgmw", "s_max": None, "out": "runs/x"}}


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip(tmp_path):
    payload = _payload()
    path = tmp_path / "c.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path, map_location="cpu")
    _assert_same(payload, loaded)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    model.load_state_dict(loaded["model"])


def test_crash_at_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload(0))
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, _payload(1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left


def test_crash_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload(0))
    expected = load_checkpoint(path)

    def half_write(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _payload(1))
    monkeypatch.undo()
    _assert_same(expected, load_checkpoint(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=f"checkpoint {path} does not exist"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_corrupt_file(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload())
    data = path.read_bytes()
    bad = {"truncated": data[: len(data) // 2],
           "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
           "empty": b""}[damage]
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "weights_only" not in message and "trusted" not in message  # no advice to load it unsafely
    assert isinstance(info.value, ValueError)


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match="not a dgm checkpoint.*format='dgm-checkpoint'.*'weight'") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="found Tensor"):
        load_checkpoint(path)


def test_file_with_code_is_refused_not_run(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dgm-checkpoint", "version": 1, "payload": {"f": os.getcwd}}, path)
    with pytest.raises(CheckpointError, match=r"cannot be read: it holds code \(posix.getcwd\)") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)


def test_other_version(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"format": "dgm-checkpoint", "version": 99, "payload": {}}, path)
    with pytest.raises(CheckpointError, match="version 99; this dgm reads version 1"):
        load_checkpoint(path)


@pytest.mark.parametrize("value, where", [
    (np.zeros(3), r"payload\['a'\]\[1\] is a numpy.ndarray"),
    (np.float64(1.0), r"payload\['a'\]\[1\] is a numpy.float64"),
    (object(), r"payload\['a'\]\[1\] is a builtins.object"),
])
def test_save_rejects_what_safe_loading_cannot_read(tmp_path, value, where):
    with pytest.raises(TypeError, match=where):
        save_checkpoint(tmp_path / "c.pt", {"a": [1, value]})
    assert not list(tmp_path.iterdir())


def test_latest_checkpoint_orders_tasks_numerically(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "absent") is None
    for t in (2, 9, 10):
        save_checkpoint(checkpoint_path(tmp_path, t), {"next_task": t + 1})
    (tmp_path / ".checkpoint_task11.pt.abc.tmp").write_bytes(b"")
    (tmp_path / "checkpoint_task12.pt.old").write_bytes(b"")
    latest = latest_checkpoint(tmp_path)
    assert latest == checkpoint_path(tmp_path, 10)
    assert load_checkpoint(latest)["next_task"] == 11


def test_remove_partial_writes_takes_only_atomic_writes_leftovers(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": 1})
    partial = tmp_path / f".c.pt.{uuid.uuid4().hex}.tmp"
    partial.write_bytes(b"PK half")
    kept = [tmp_path / ".notes.tmp", tmp_path / "c.pt.tmp"]
    for other in kept:
        other.write_bytes(b"")
    assert ckpt.remove_partial_writes(tmp_path) == [partial]
    assert all(p.exists() for p in (path, *kept)) and not partial.exists()
    assert ckpt.remove_partial_writes(tmp_path / "absent") == []


def test_atomic_write_creates_folders_and_replaces(tmp_path):
    path = tmp_path / "a" / "b.txt"
    ckpt.atomic_write(path, lambda f: f.write(b"one"))
    ckpt.atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]
