"""Continual-learning metrics of a run: the accuracy matrix, A_t, forgetting, and ``metrics.json``.

The trainer evaluates after every task ``i`` the classifier on the test data of each task
``j <= i`` and keeps exact counts, one ``(correct, total)`` pair per task. From counts every
metric is exact:

- ``accuracy[i][j] = correct[i][j] / total[i][j]``; entries ``j > i`` do not exist (``None``).
- ``A_i`` (:meth:`AccuracyMatrix.average_accuracy`), the paper's "accuracy over all classes seen
  so far" after task ``i``, is **sample-weighted**: all test samples of the classes seen so far
  pooled, ``sum_j correct[i][j] / sum_j total[i][j]``. With equal test sizes per task it equals
  the mean of the row; with unequal sizes (e.g. MNIST classes) it is the accuracy on the union of
  the seen classes' test sets, which is what "accuracy over all classes" measures.
- Forgetting (:meth:`AccuracyMatrix.forgetting`): for each task ``j`` but the last, the best
  accuracy it had after any earlier evaluation ``i < T - 1`` minus its final accuracy, averaged
  over ``j = 0 .. T - 2``.

Task indices are 0-based everywhere; ``A5`` and ``A10`` are ``A`` after 5 and 10 tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

# The paper's headline numbers: accuracy over all classes seen after this many tasks.
HEADLINE_TASKS = (5, 10)


class AccuracyMatrix:
    """Test counts per evaluation: row ``i`` after training task ``i`` holds one
    ``(correct, total)`` pair for each task ``j <= i``."""

    def __init__(self, rows: Sequence[Sequence[tuple[int, int]]] = ()):
        self.correct: list[list[int]] = []
        self.total: list[list[int]] = []
        for row in rows:
            self.add_row(row)

    def add_row(self, counts: Sequence[tuple[int, int]]) -> None:
        """Record the evaluation after the next task: ``(correct, total)`` per task seen so far."""
        i = self.num_tasks
        if len(counts) != i + 1:
            raise ValueError(f"the evaluation after task {i} needs (correct, total) for tasks 0..{i} "
                             f"({i + 1} pairs), got {len(counts)}")
        correct, total = [], []
        for j, pair in enumerate(counts):
            c, n = (int(v) for v in pair)
            if n <= 0 or not 0 <= c <= n:
                raise ValueError(f"task {j} after task {i}: need 0 <= correct <= total and total > 0, "
                                 f"got correct={c}, total={n}")
            correct.append(c)
            total.append(n)
        self.correct.append(correct)
        self.total.append(total)

    @property
    def num_tasks(self) -> int:
        return len(self.correct)

    def accuracy(self, i: int, j: int) -> float:
        """Accuracy on task ``j``'s test classes after training task ``i``."""
        self._check_row(i)
        if not 0 <= j <= i:
            raise IndexError(f"task {j} was not evaluated after task {i} (need 0 <= j <= {i})")
        return self.correct[i][j] / self.total[i][j]

    def rows(self) -> list[list[float | None]]:
        """The square matrix of accuracies, ``None`` above the diagonal (tasks not yet seen)."""
        t = self.num_tasks
        return [[self.accuracy(i, j) if j <= i else None for j in range(t)] for i in range(t)]

    def average_accuracy(self, i: int) -> float:
        """``A_i``: sample-weighted accuracy over the test data of every class seen after task ``i``."""
        self._check_row(i)
        return sum(self.correct[i]) / sum(self.total[i])

    def forgetting(self) -> float | None:
        """Mean over tasks ``0 .. T-2`` of (best earlier accuracy - final accuracy); ``None`` for
        fewer than two tasks."""
        t = self.num_tasks
        if t < 2:
            return None
        drops = [max(self.accuracy(i, j) for i in range(j, t - 1)) - self.accuracy(t - 1, j)
                 for j in range(t - 1)]
        return sum(drops) / len(drops)

    def _check_row(self, i: int) -> None:
        if not 0 <= i < self.num_tasks:
            raise IndexError(f"no evaluation after task {i}: {self.num_tasks} task(s) evaluated")


def build_metrics(config: dict, classes_per_task: Sequence[Sequence[int]], history: dict, *,
                  device: str, backend: str, selection: str) -> dict:
    """The ``metrics.json`` document of a run so far; ``selection``: how each task's epoch was chosen
    (:mod:`dgm.methods.selection`).

    ``history`` holds one entry per finished task under ``"test"`` (the row of ``(correct,
    total)`` pairs), ``"generator_params"`` and ``"wall_time_s"``; optionally ``"val"`` (the same
    rows on validation data, reported when every task has validation data), ``"growth"``
    (the generator's units per layer after each task) and ``"capture"`` (per task, whether its
    training step ran as a CUDA graph, and if not why: :mod:`dgm.step_graph`) and ``"world_size"``
    (per task, how many data-parallel processes learned it: :mod:`dgm.distributed`).
    """
    test = AccuracyMatrix(history["test"])
    t = test.num_tasks
    for key in ("generator_params", "wall_time_s"):
        if len(history[key]) != t:
            raise ValueError(f"history[{key!r}] has {len(history[key])} entries for {t} evaluated task(s)")
    if len(classes_per_task) != t:
        raise ValueError(f"classes_per_task lists {len(classes_per_task)} task(s), history {t}")
    out = {
        "config": config,
        "classes_per_task": [[int(c) for c in classes] for classes in classes_per_task],
        "accuracy_matrix": test.rows(),
        "A": [test.average_accuracy(i) for i in range(t)],
    }
    for n in HEADLINE_TASKS:
        if t >= n:
            out[f"A{n}"] = test.average_accuracy(n - 1)
    out.update({
        "forgetting": test.forgetting(),
        "generator_params": [int(n) for n in history["generator_params"]],
        "wall_time_s": [float(s) for s in history["wall_time_s"]],
        "device": str(device),
        "backend": str(backend),
        "selection": str(selection),
        "test_counts": {"correct": test.correct, "total": test.total},
    })
    val_rows = history.get("val") or []
    if val_rows and all(n > 0 for row in val_rows for _, n in row):
        val = AccuracyMatrix(val_rows)
        out["val_accuracy_matrix"] = val.rows()
        out["val_A"] = [val.average_accuracy(i) for i in range(val.num_tasks)]
    if history.get("growth"):
        out["generator_units"] = [list(units) for units in history["growth"]]
    if history.get("capture"):
        out["step_capture"] = [dict(entry) for entry in history["capture"]]
    if history.get("world_size"):
        out["world_size"] = [int(n) for n in history["world_size"]]
    return out
