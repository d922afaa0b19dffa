"""Every expected failure of the console scripts is one line on stderr and exit status 2 (130 when
interrupted), never a traceback, and a run that cannot start leaves its --out as it was; only a
bug shows a traceback (exit 1). The cases of issue 11, one by one."""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_SETTINGS, call, finished_run, idx_arrays, one_line_error, snapshot, write_idx_root

from dgm import trainer
from dgm.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from dgm.cli import data, results, train
from dgm.data.datasets import IDX_FILES
from dgm.methods import selection


def refused(argv, *names, out=None):
    """dgm-train refuses ``argv`` in one line naming ``names``, and ``out`` is left as it was."""
    before = snapshot(out) if out is not None else None
    err = one_line_error(call(train.main, argv), "dgm-train", *names)
    if out is not None:
        assert snapshot(out) == before
    return err


@pytest.mark.parametrize("flags, line", [
    (["--classes-per-task", "3"], "--classes-per-task = 3: a divisor of the 10 classes of mnist5k: 1, 2, 5, 10"),
    (["--tasks", "20"], "--tasks = 20: at most 10: mnist5k has 10 classes, 1 per task"),
    (["--beta1", "2"], "--beta1 = 2.0: a finite number in [0, 1)"),
    (["--nz", "4"], "--nz = 4: an integer >= 10: the latent vector carries the one-hot label"),
    (["--train-per-class", "0"], "--train-per-class = 0: an integer >= 1, or null for no cap"),
    (["--replay-per-class", "-1"], "--replay-per-class = -1: an integer >= 1"),
    (["--lr", "inf"], "--lr = inf: a finite number > 0"),
    (["--s-max", "inf"], "--s-max = inf: a finite number >= 1"),
    (["--lambda-gp", "nan"], "--lambda-gp = nan: a finite number >= 0"),
    (["--epochs", "1.5"], '--epochs = "1.5": an integer >= 1'),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--backend", "cuda"], "--backend = \"cuda\": backend 'cuda' is now called 'extension'"),
])
def test_bad_flags(tmp_path, flags, line):
    out = tmp_path / "run"
    assert refused([*TINY, "--out", out, *flags]).startswith(f"dgm-train: error: {line}")
    assert not out.exists()  # not even an empty folder


@pytest.mark.parametrize("values, line", [
    ({"download": "no"}, 'download = "no": true or false'),
    ({"epochs": True}, "epochs = true: an integer >= 1"),
    ({"lr": "fast"}, 'lr = "fast": a finite number > 0'),
    ({"seed": "1"}, 'seed = "1": an integer in 0..4294967295'),
    ({"lr": 1e999}, "lr = inf: a finite number > 0"),
    ({"tasks": 11}, "tasks = 11: at most 10"),
    ({"learning_rate": 0.1}, "learning_rate = 0.1: not a setting; the settings are "),
])
def test_bad_config_file_values(tmp_path, values, line):
    path, out = tmp_path / "run.json", tmp_path / "run"
    path.write_text(json.dumps({**TINY_SETTINGS, "out": str(out), **values}))
    assert refused(["--config", path]).startswith(f"dgm-train: error: {path}: {line}")
    assert not out.exists()


def test_a_flag_wins_over_a_bad_file_value_and_is_checked_itself(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"lr": "fast"}))
    assert refused(["--config", path, "--lr", "0"]) == "dgm-train: error: --lr = 0.0: a finite number > 0\n"


def test_missing_data_root(tmp_path):
    out, root = tmp_path / "run", tmp_path / "nowhere"
    err = refused([*TINY, "--dataset", "mnist", "--data-root", root, "--out", out], root / "MNIST")
    assert "mnist data not found" in err and "--download" in err
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_out_that_is_a_file_or_under_one(tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    refused([*TINY, "--out", out], f'out = "{out}": a folder for the run\'s files', out=tmp_path)


@pytest.fixture
def read_only(monkeypatch):
    """Make folders read-only (mode 555; for root, who may write anyway, os.access says no)."""
    denied = []
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) not in denied and access(p, mode, **kw))
    yield lambda folder: (denied.append(Path(folder)), folder.chmod(0o555))
    for folder in denied:
        folder.chmod(0o755)


def test_out_that_cannot_be_written(tmp_path, read_only):
    (tmp_path / "locked").mkdir()
    read_only(tmp_path / "locked")
    out = tmp_path / "locked" / "run"
    refused([*TINY, "--out", out], f'out = "{out}"', "is read-only", out=tmp_path)


def test_resume_in_a_read_only_run_folder(tmp_path_factory, tmp_path, read_only):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    read_only(out)
    refused([*TINY, "--tasks", "2", "--out", out, "--resume"], "is read-only", out=out)


def test_resume_with_fewer_tasks_than_finished(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    refused([*TINY, "--tasks", "1", "--out", out, "--resume"], "--tasks = 1: at least 2", out=out)


def test_resume_with_other_settings(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    refused([*TINY, "--tasks", "2", "--out", out, "--resume", "--hidden", "8"],
            "--hidden = 8: the run in", "was made with hidden = 16", out=out)


def test_a_new_run_refuses_a_folder_with_checkpoints(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    refused([*TINY, "--tasks", "2", "--out", out], "checkpoint_task1.pt is there", "--resume", out=out)


def _edit(path, change):
    payload = load_checkpoint(path)
    change(payload)
    save_checkpoint(path, payload)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("config"), "holds no settings ('config')"),
    (lambda p: p.update(next_task=99), "says next_task = 99, but it was taken after task 1"),
    (lambda p: p.update(generator=torch.nn.Linear(3, 3).state_dict()), "holds weights that do not fit a dgmw model"),
    (lambda p: p.update(classifier=p.pop("generator")), "holds weights that do not fit a dgmw model"),
    (lambda p: p["history"]["test"].pop(), "lacks a valid history of its 2 finished tasks"),
    (lambda p: p["history"]["test"][1].append((5, 3)), "lacks a valid history of its 2 finished tasks"),
    (lambda p: p["history"].update(wall_time_s="1s"), "lacks a valid history of its 2 finished tasks"),
])
def test_hand_edited_checkpoints(tmp_path_factory, tmp_path, change, message):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    _edit(checkpoint_path(out, 1), change)
    err = refused([*TINY, "--tasks", "2", "--out", out, "--resume"], checkpoint_path(out, 1), message, out=out)
    if "history" in message or "next_task" in message or "config" in message:  # found before loading weights
        assert "newest checkpoint that loads is checkpoint_task0.pt" in err and "--resume-from-valid" in err


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 3], lambda b: b"", lambda b: os.urandom(3000)])
def test_corrupt_latest_checkpoint_offers_the_older_valid_one(tmp_path_factory, tmp_path, damage):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    latest = checkpoint_path(out, 1)
    latest.write_bytes(damage(latest.read_bytes()))
    err = refused([*TINY, "--tasks", "2", "--out", out, "--resume"], latest, "cannot be read", out=out)
    assert "the newest checkpoint that loads is checkpoint_task0.pt (after task 0): pass --resume-from-valid" in err
    assert "weights_only" not in err and "trusted" not in err


def test_a_checkpoint_carrying_code_is_not_loaded_and_no_unsafe_advice(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    checkpoint_path(out, 0).unlink()
    torch.save({"format": "dgm-checkpoint", "version": 1, "payload": {"f": os.getcwd}}, checkpoint_path(out, 1))
    err = refused([*TINY, "--tasks", "2", "--out", out, "--resume"], checkpoint_path(out, 1), out=out)
    assert "holds code (posix.getcwd)" in err and "no checkpoint in" in err and "loads" in err
    assert "weights_only" not in err


def test_resume_from_valid_continues_from_the_older_checkpoint(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    full = json.loads((out / "metrics.json").read_text())
    checkpoint_path(out, 1).write_bytes(b"garbage")
    code, _, err = call(train.main, [*TINY, "--tasks", "2", "--out", out, "--resume-from-valid"])
    assert code == 0, err
    assert f"note: checkpoint {checkpoint_path(out, 1)} cannot be read" in err
    assert "continuing from checkpoint_task0.pt" in err and "resuming at task 1" in err
    assert json.loads((out / "metrics.json").read_text())["test_counts"] == full["test_counts"]
    assert load_checkpoint(checkpoint_path(out, 1))["next_task"] == 2  # the damaged file is replaced


def test_partial_writes_are_removed_at_the_next_start_only(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    partial = out / f".checkpoint_task1.pt.{'a' * 32}.tmp"
    partial.write_bytes(b"PK half")
    refused([*TINY, "--tasks", "2", "--out", out], "--resume", out=out)  # a refused start touches nothing
    code, _, err = call(train.main, [*TINY, "--tasks", "2", "--out", out, "--resume"])
    assert code == 0, err
    assert f"dgm-train: note: removed {partial}, left by a write that was interrupted" in err
    assert not partial.exists()


@pytest.fixture
def mnist_root(tmp_path):
    write_idx_root(tmp_path / "data" / "MNIST" / "raw", idx_arrays())
    return tmp_path / "data"


def _damage_idx(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:-7], "random": os.urandom(len(data)), "trailing": data + b"\0",
                      "labels": data[:8] + bytes([200]) + data[9:]}[how])


@pytest.mark.parametrize("file, how, what", [
    (0, "truncated", "is truncated: its header declares [30, 28, 28]"),
    (0, "random", "is not a uint8 IDX file"),
    (2, "trailing", "has 1 bytes more than the [20, 28, 28] its header declares"),
    (1, "labels", "holds labels 0..200; labels must lie in 0..9"),
])
def test_damaged_idx_files(mnist_root, tmp_path, file, how, what):
    path = mnist_root / "MNIST" / "raw" / IDX_FILES[file]
    _damage_idx(path, how)
    one_line_error(call(data.main, ["info", "--dataset", "mnist", "--root", mnist_root]), "dgm-data", path, what)
    out = tmp_path / "run"
    refused([*TINY, "--dataset", "mnist", "--data-root", mnist_root, "--out", out], path, what)
    assert not out.exists()


def test_truncated_metrics_json(tmp_path_factory, tmp_path):
    out = finished_run(tmp_path_factory, tmp_path / "run")
    metrics = out / "metrics.json"
    metrics.write_text(metrics.read_text()[:100])
    err = one_line_error(call(results.main, [out]), "dgm-results", metrics, "is not valid JSON (truncated or damaged)")
    assert "JSONDecodeError" in err


def test_interrupted_run_exits_130_and_says_how_to_continue(tmp_path_factory, tmp_path, monkeypatch):
    out = finished_run(tmp_path_factory, tmp_path / "run")

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(selection.BestEpoch, "end_epoch", stop)
    code, _, err = call(train.main, [*TINY, "--tasks", "3", "--out", out, "--resume"])
    assert code == 130 and "Traceback" not in err
    assert err.splitlines()[-1] == f"dgm-train: interrupted; continue with --resume --out {out}"


def test_a_bug_shows_its_traceback_and_asks_for_a_report(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(trainer, "split_tasks", bug)
    code, _, err = call(train.main, [*TINY, "--out", tmp_path / "run"])
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err
    assert err.splitlines()[-1].startswith("dgm-train: internal error (ZeroDivisionError): this is a bug in dgm; "
                                           "please report it")


def test_help_and_usage_of_every_script():
    for main in (train.main, data.main, results.main):
        code, out, err = call(main, ["--help"])
        assert code == 0 and "usage:" in out and not err
    one_line_error(call(results.main, []), "dgm-results", "the following arguments are required: RUN_DIR")
    one_line_error(call(data.main, ["info", "--dataset", "mnits"]), "dgm-data", "invalid choice: 'mnits'")
    one_line_error(call(data.main, ["info", "--dataset", "mnist5k", "--image-size", "0"]), "dgm-data",
                   "image_size = 0: an integer >= 1")
