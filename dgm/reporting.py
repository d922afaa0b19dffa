"""What a run leaves in its output folder, and what it shows while it runs.

:class:`Reporter` receives the trainer's events and writes, under ``OUT``:

- ``config.json``: the run's settings;
- ``log.csv``: one row per logged step: ``task, epoch, step``, ``time_s`` (seconds since this
  process started reporting) and one column per scalar;
- ``tensorboard/``: the same scalars, the per-task ``A`` and sample grids, when the optional
  ``tensorboard`` package is installed (without it this output is skipped, silently: the CSV
  holds the same numbers);
- ``samples_task{t}.png``: a grid of generated samples after task ``t``;
- ``accuracy_matrix.png``: heatmap of the accuracy matrix so far;
- ``metrics.json``: the document of :func:`dgm.metrics.build_metrics`.

Every file except the appended CSV is replaced atomically, so an interrupted run never leaves a
half-written PNG or JSON. Progress bars (tqdm) go to stderr.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import atomic_write, remove_partial_writes

_FIXED = ["task", "epoch", "step", "time_s"]
_FLUSH_S = 1.0  # longest time logged steps wait in memory before they are written


def _write_json(path: Path, value) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, allow_nan=False).encode() + b"\n"))


def _read_log(log: Path) -> tuple[list[str], list[dict], int]:
    """``log.csv``'s header, its rows, and how many lines at its end are damaged (cut short or
    zero-filled by a crash: the log is appended, not replaced) and left out."""
    lines = log.read_bytes().decode("utf-8", errors="replace").splitlines()
    reader = csv.DictReader(lines)
    rows = []
    for row in reader:
        values = list(row.values())
        if None in row or None in values or "\0" in "".join(values) or not row["task"].isdigit():
            break
        rows.append(row)
    return list(reader.fieldnames or []), rows, len(lines) - 1 - len(rows)


class Reporter:
    """Files and progress of one run in ``out_dir`` (see the module doc).

    ``show_progress=False`` silences progress bars and per-task lines (tests, batch jobs);
    ``tensorboard=False`` skips TensorBoard even when it is installed.
    """

    def __init__(self, out_dir: str | Path, *, show_progress: bool = True, tensorboard: bool = True,
                 stream=None):
        self.out = Path(out_dir)
        self.show_progress = show_progress
        self.use_tensorboard = tensorboard and importlib.util.find_spec("tensorboard") is not None
        self.stream = stream if stream is not None else sys.stderr
        self._csv = None
        self._fields: list[str] = []
        self._writer = None
        self._tb = None
        self._tb_steps: dict[int, int] = {}
        self._pending: list[tuple[dict, dict]] = []
        self._t0 = self._flushed = time.monotonic()

    def start(self, config: dict, resumed_from_task: int | None) -> None:
        """Open the run's outputs. ``resumed_from_task``: the first task this process trains after
        restoring the tasks before it from a checkpoint (``None``: a fresh run). On resume the log
        keeps the rows of the restored tasks and drops any of the interrupted task. Files that a
        killed write left half-made are removed first, each with a note."""
        for path in remove_partial_writes(self.out):
            self.note(f"removed {path}, left by a write that was interrupted")
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(self.out / "config.json", config)
        log = self.out / "log.csv"
        rows: list[dict] = []
        if resumed_from_task is not None and log.is_file():
            self._fields, rows, dropped = _read_log(log)
            rows = [r for r in rows if int(r["task"]) < resumed_from_task]
            if dropped:
                self.note(f"{log}: dropped {dropped} damaged line(s) at its end, left by an interrupted write")
        self._open_csv(self._fields or list(_FIXED), rows)
        if self.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        where = f", resuming at task {resumed_from_task}" if resumed_from_task is not None else ""
        self._say(f"dgm-train: writing to {self.out}{where}")

    def progress(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        """``iterable`` with a progress bar on stderr (refreshed at most twice a second)."""
        return tqdm(iterable, total=total, desc=desc, file=self.stream, mininterval=0.5, leave=False,
                    dynamic_ncols=True, disable=not self.show_progress)

    def log_step(self, task: int, epoch: int, step: int, scalars: dict[str, float | torch.Tensor]) -> None:
        """Log one step's scalars (losses, s, regulariser...) to the CSV and TensorBoard.

        Values may be numbers or one-element tensors. Tensors are read on the host only when the
        buffered rows are written (at most once a second, and at every task end), so logging does
        not make the device wait for each step."""
        if self._csv is None:
            raise RuntimeError("Reporter.log_step before Reporter.start")
        row = {}
        for name, value in scalars.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"scalar {name!r} must be a number or a one-element tensor, "
                                     f"got shape {tuple(value.shape)}")
                value = value.detach()
            row[name] = value
        self._pending.append(({"task": task, "epoch": epoch, "step": step,
                               "time_s": round(time.monotonic() - self._t0, 3)}, row))
        if time.monotonic() - self._flushed >= _FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the buffered step rows."""
        pending, self._pending = self._pending, []
        self._flushed = time.monotonic()
        if not pending or self._csv is None:
            return
        rows = [(keys, {k: float(v) for k, v in values.items()}) for keys, values in pending]
        new = [k for _, values in rows for k in values if k not in self._fields]
        if new:  # a scalar first seen now: widen the header, keeping the rows so far
            self._csv.close()
            with open(self.out / "log.csv", newline="") as f:
                kept = list(csv.DictReader(f))
            self._open_csv(self._fields + list(dict.fromkeys(new)), kept)
        for keys, values in rows:
            self._writer.writerow({**keys, **values})
            if self._tb is not None:
                n = self._tb_steps[keys["task"]] = self._tb_steps.get(keys["task"], -1) + 1
                for name, value in values.items():
                    self._tb.add_scalar(f"task{keys['task']}/{name}", value, n)
        self._csv.flush()

    def task_end(self, task: int, metrics: dict, samples: torch.Tensor | None, sample_nrow: int) -> None:
        """Write the samples grid of ``task`` (``samples``: ``[N, C, H, W]`` in ``[-1, 1]``; ``None``
        for a method without a generator), the accuracy heatmap and ``metrics.json`` (from
        :func:`~dgm.metrics.build_metrics`)."""
        from torchvision.utils import make_grid, save_image

        self.flush()
        grid = None
        if samples is not None:
            if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
                got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
                raise ValueError(f"samples must be a tensor [N, C, H, W] or None, got {got}")
            grid = make_grid(samples.detach().float().cpu(), nrow=sample_nrow, normalize=True, value_range=(-1, 1))
            atomic_write(self.out / f"samples_task{task}.png", lambda f: save_image(grid, f, format="png"))
        png = plot_accuracy_matrix(metrics["accuracy_matrix"], metrics["A"])
        atomic_write(self.out / "accuracy_matrix.png", lambda f: f.write(png))
        _write_json(self.out / "metrics.json", metrics)
        if self._tb is not None:
            self._tb.add_scalar("eval/A", metrics["A"][-1], task)
            if grid is not None:
                self._tb.add_image("samples", grid, task)
            self._tb.flush()
        self._say(f"task {task}: A = {metrics['A'][-1]:.4f} (accuracy over the classes of tasks 0..{task})")

    def close(self) -> None:
        """Write what is buffered and close the files (safe to call twice)."""
        self.flush()
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open_csv(self, fields: list[str], rows: list[dict]) -> None:
        """(Re)write the log with header ``fields`` and ``rows`` atomically, then append to it."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        log = self.out / "log.csv"
        atomic_write(log, lambda f: f.write(text.getvalue().encode()))
        self._fields = fields
        self._csv = open(log, "a", newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=fields)

    def note(self, line: str) -> None:
        """A line the user should see even without progress output (``dgm-train: note: ...``)."""
        tqdm.write(f"dgm-train: note: {line}", file=self.stream)

    def _say(self, line: str) -> None:
        if self.show_progress:
            tqdm.write(line, file=self.stream)


class SilentReporter(Reporter):
    """What a rank other than 0 of a data-parallel run reports: nothing (rank 0 writes the run's
    files and shows its progress)."""

    def __init__(self):
        super().__init__(".", show_progress=False, tensorboard=False)

    def start(self, config: dict, resumed_from_task: int | None) -> None:
        """Opens nothing."""

    def log_step(self, task: int, epoch: int, step: int, scalars: dict) -> None:
        """Keeps nothing."""

    def task_end(self, task: int, metrics: dict, samples, sample_nrow: int) -> None:
        """Writes nothing."""

    def note(self, line: str) -> None:
        """Rank 0 says it."""


def plot_accuracy_matrix(matrix: list[list[float | None]], average: list[float]) -> bytes:
    """PNG bytes of a heatmap of the lower-triangular accuracy matrix, with ``A`` per row."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    t = len(matrix)
    values = np.array([[math.nan if v is None else v for v in row] for row in matrix], dtype=float)
    size = 2.5 + 0.55 * t
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(image, ax=ax, label="accuracy")
    if t <= 20:
        for i in range(t):
            for j in range(i + 1):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if values[i, j] > 0.6 else "white")
    ax.set_xticks(range(t))
    ax.set_yticks(range(t), [f"{i} (A={a:.2f})" for i, a in enumerate(average)])
    ax.set_xlabel("test classes of task")
    ax.set_ylabel("after training task")
    ax.set_title(f"accuracy matrix, A = {average[-1]:.3f} after {t} task(s)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def format_summary(metrics: dict) -> str:
    """The accuracy matrix and the per-task ``A`` of a ``metrics.json`` document, as text."""
    matrix = metrics["accuracy_matrix"]
    t = len(matrix)
    lines = ["accuracy matrix (row i: after task i; column j: test classes of task j)",
             "        " + "".join(f"{j:>7}" for j in range(t))]
    for i, row in enumerate(matrix):
        lines.append(f"{i:>6}  " + "".join(f"{v:7.3f}" for v in row[: i + 1]))
    lines.append("A (accuracy over all classes seen): " + " ".join(f"{a:.4f}" for a in metrics["A"]))
    headline = [f"{k} = {metrics[k]:.4f}" for k in ("A5", "A10") if k in metrics]
    if metrics.get("forgetting") is not None:
        headline.append(f"forgetting = {metrics['forgetting']:.4f}")
    if headline:
        lines.append(", ".join(headline))
    return "\n".join(lines)
