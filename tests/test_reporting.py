"""Reporter outputs: CSV log, sample grid, accuracy heatmap and metrics.json that parse back."""

import csv
import io
import json

import pytest
import torch
from PIL import Image

from dgm.metrics import build_metrics
from dgm.reporting import Reporter, format_summary, plot_accuracy_matrix


def _metrics(rows):
    t = len(rows)
    history = {"test": rows, "generator_params": [10] * t, "wall_time_s": [0.5] * t}
    return build_metrics({"method": "dgmw"}, [[c] for c in range(t)], history, device="cpu", backend="reference",
                         selection="official")


def _read_log(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_step_log_is_a_csv_that_widens_for_new_scalars(tmp_path):
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({"method": "dgmw"}, None)
        rep.log_step(0, 0, 0, {"loss_d": torch.tensor(1.5, requires_grad=True) * 1, "s": 0.25})
        rep.log_step(0, 0, 1, {"loss_d": 2.0, "s": 0.5})
        rep.flush()
        rep.log_step(0, 1, 0, {"loss_d": torch.tensor([3.0]), "s": 1.0, "reg": 0.125})
    rows = _read_log(tmp_path)
    assert [(r["task"], r["epoch"], r["step"]) for r in rows] == [("0", "0", "0"), ("0", "0", "1"), ("0", "1", "0")]
    assert [float(r["loss_d"]) for r in rows] == [1.5, 2.0, 3.0]
    assert [r["reg"] for r in rows] == ["", "", "0.125"]
    assert list(rows[0]) == ["task", "epoch", "step", "time_s", "loss_d", "s", "reg"]
    assert all(float(r["time_s"]) >= 0 for r in rows)
    assert json.loads((tmp_path / "config.json").read_text()) == {"method": "dgmw"}
    assert not (tmp_path / "tensorboard").exists()


def test_log_step_rejects_non_scalars_and_needs_start(tmp_path):
    rep = Reporter(tmp_path, show_progress=False, tensorboard=False)
    with pytest.raises(RuntimeError, match="before Reporter.start"):
        rep.log_step(0, 0, 0, {"x": 1.0})
    rep.start({}, None)
    with pytest.raises(ValueError, match=r"scalar 'loss' must be a number or a one-element tensor, got shape \(2,\)"):
        rep.log_step(0, 0, 0, {"loss": torch.zeros(2)})
    rep.close()


def test_resume_keeps_the_log_of_restored_tasks_only(tmp_path):
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({}, None)
        for task in (0, 1):
            for step in range(3):
                rep.log_step(task, 0, step, {"loss": float(10 * task + step)})
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({}, 1)  # the run died in task 1: its rows go, task 0's stay
        rep.log_step(1, 0, 0, {"loss": 99.0})
    rows = _read_log(tmp_path)
    assert [(r["task"], float(r["loss"])) for r in rows] == [("0", 0.0), ("0", 1.0), ("0", 2.0), ("1", 99.0)]


def test_task_end_writes_samples_heatmap_and_metrics(tmp_path):
    metrics = _metrics([[(9, 10)], [(6, 10), (18, 20)]])
    samples = torch.cat([-torch.ones(4, 3, 8, 8), torch.ones(4, 3, 8, 8)])  # 8 images, 4 per row
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({"method": "dgmw"}, None)
        rep.log_step(1, 0, 0, {"loss": 1.0})
        rep.task_end(1, metrics, samples, 4)
        assert len(_read_log(tmp_path)) == 1  # task_end writes the buffered steps

    grid = Image.open(tmp_path / "samples_task1.png")
    assert grid.format == "PNG"
    assert grid.size == (4 * (8 + 2) + 2, 2 * (8 + 2) + 2)  # make_grid pads 2 pixels
    rgb = grid.convert("RGB")
    assert rgb.getpixel((2, 2)) == (0, 0, 0)          # first row: images at -1 -> black
    assert rgb.getpixel((2, 12)) == (255, 255, 255)   # second row: images at +1 -> white

    heat = Image.open(tmp_path / "accuracy_matrix.png")
    assert heat.format == "PNG" and min(heat.size) >= 200
    assert len(heat.convert("RGB").getcolors(1 << 16)) > 10  # drawn, not blank

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_task_end_rejects_samples_that_are_not_image_batches(tmp_path):
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({}, None)
        with pytest.raises(ValueError, match=r"samples must be a tensor \[N, C, H, W\] or None, got \(3, 8, 8\)"):
            rep.task_end(0, _metrics([[(1, 1)]]), torch.zeros(3, 8, 8), 4)


def test_task_end_without_samples_writes_no_grid(tmp_path):
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({}, None)
        rep.task_end(0, _metrics([[(1, 1)]]), None, 4)
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "samples_task0.png").exists()


def test_heatmap_handles_many_tasks():
    rows = [[(j % 20 + 1, 20) for j in range(i + 1)] for i in range(25)]
    metrics = _metrics(rows)
    png = plot_accuracy_matrix(metrics["accuracy_matrix"], metrics["A"])
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_progress_wraps_the_iterable(tmp_path):
    stream = io.StringIO()
    rep = Reporter(tmp_path, stream=stream)
    assert list(rep.progress(range(5), 5, "task 0")) == [0, 1, 2, 3, 4]
    assert "task 0" in stream.getvalue()


def test_format_summary_prints_matrix_and_a():
    rows = [[(10, 10 + j) for j in range(i + 1)] for i in range(5)]
    text = format_summary(_metrics(rows))
    lines = text.splitlines()
    assert lines[2].split() == ["0", "1.000"]
    assert lines[6].split()[1:] == [f"{10 / (10 + j):.3f}" for j in range(5)]
    assert f"A5 = {50 / 60:.4f}" in text
    assert "forgetting = " in text


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    with Reporter(tmp_path, show_progress=False) as rep:
        rep.start({}, None)
        rep.log_step(0, 0, 0, {"loss": 1.0})
        rep.task_end(0, _metrics([[(1, 2)]]), torch.zeros(2, 1, 4, 4), 2)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("tail", [b"\0" * 64, b"1,0,2,0.5", b"1,0,2,0.5,7.0,extra\n\0\0"])
def test_resume_drops_a_damaged_log_tail(tmp_path, tail):
    with Reporter(tmp_path, show_progress=False, tensorboard=False) as rep:
        rep.start({}, None)
        for task in (0, 1):
            rep.log_step(task, 0, 0, {"loss": float(task)})
    with open(tmp_path / "log.csv", "ab") as f:
        f.write(tail)  # what a crash can leave after the last whole row
    stream = io.StringIO()
    with Reporter(tmp_path, show_progress=False, tensorboard=False, stream=stream) as rep:
        rep.start({}, 2)
        rep.log_step(2, 0, 0, {"loss": 2.0})
    assert [(r["task"], float(r["loss"])) for r in _read_log(tmp_path)] == [("0", 0.0), ("1", 1.0), ("2", 2.0)]
    assert "damaged" in stream.getvalue()
