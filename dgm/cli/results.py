"""``dgm-results``: Markdown tables of finished runs, from their ``metrics.json``.

``dgm-results RUN_DIR...`` prints one summary table: a row per experiment, with the mean and
spread over its runs, which differ only in their seed. An experiment is every setting that
changes the numbers (every :class:`~dgm.config.TrainConfig` field but the run-only ones, such as
``out``, ``device`` and ``backend``, and the seed; a key an older file lacks counts as its
default), with the number of tasks the run finished: a 2-task run is never averaged with a
10-task one. Columns: tasks x classes per task, A5 and A10 (for runs with that many tasks), the
final accuracy ``A_T``, forgetting, generator weights after the first and the last task, wall
time, and the settings that tell the rows apart. Two runs of one experiment with the same seed
are refused (the same numbers twice are not two samples). ``--matrices`` adds each run's
accuracy matrix and its generator's growth per task. ``docs/results.md`` is made with it.

Exit status (:mod:`dgm.cli.boundary`): 0 done; 2 a bad command line, or a run folder without a
readable ``metrics.json`` (one line ``dgm-results: error: ...`` naming the file and what is wrong
with it); 130 interrupted; 1 a bug (traceback).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

from ..config import TrainConfig, rule
from ..errors import ResultsError, one_line
from ..methods import LEARNERS
from ..methods.dgm import DGMLearner
from .boundary import Parser, console_script

# Shown in columns of their own rather than among the settings that tell rows apart.
_COLUMNS = ("dataset", "method", "tasks", "classes_per_task")
# Read by DGM's learner only.
_DGM_ONLY = ("mask_lr", "s_max", "lambda_reg", "lambda_class")


def load_run(folder: str | Path) -> dict:
    """The ``metrics.json`` of a run folder, with the folder's name under ``"run"``;
    :class:`ResultsError` naming the file when it is missing, unreadable or not what
    ``dgm-train`` writes."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise ResultsError(f"{folder} holds no metrics.json: not a dgm-train output folder")
    try:
        metrics = json.loads(path.read_bytes())
    except OSError as exc:
        raise ResultsError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ResultsError(f"{path} is not valid JSON (truncated or damaged): {one_line(exc)}") from exc
    problem = _problem(metrics)
    if problem:
        raise ResultsError(f"{path} {problem}: not a dgm-train metrics file, or a damaged one")
    return {**metrics, "run": Path(folder).name, "folder": str(folder)}


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _problem(metrics) -> str | None:
    """What makes ``metrics`` unlike a ``metrics.json`` of :func:`dgm.metrics.build_metrics`, or ``None``."""
    if not isinstance(metrics, dict):
        return f"holds a JSON {type(metrics).__name__}, not an object"
    config, matrix, average = metrics.get("config"), metrics.get("accuracy_matrix"), metrics.get("A")
    if not isinstance(config, dict):
        return "has no 'config' object"
    for key, types in (("dataset", (str,)), ("method", (str,)), ("seed", (int,))):
        if type(config.get(key)) not in types:
            return f"has no config.{key}"
    if not isinstance(average, list) or not average or not all(_number(a) for a in average):
        return "has no 'A' list of numbers"
    t = len(average)
    if not isinstance(matrix, list) or len(matrix) != t or not all(
            isinstance(row, list) and len(row) == t and all(_number(v) for v in row[:i + 1])
            and all(v is None for v in row[i + 1:]) for i, row in enumerate(matrix)):
        return f"has no {t}x{t} lower-triangular 'accuracy_matrix' of numbers"
    for key in ("A5", "A10", "forgetting"):
        if metrics.get(key) is not None and not _number(metrics[key]):
            return f"has a {key!r} that is not a number"
    for key in ("generator_params", "wall_time_s"):
        if key in metrics and not (isinstance(metrics[key], list) and len(metrics[key]) == t
                                   and all(_number(v) for v in metrics[key])):
            return f"has a {key!r} that is not a list of {t} numbers"
    units = metrics.get("generator_units")
    if units is not None and not (isinstance(units, list) and len(units) == t and all(isinstance(u, list)
                                                                                      for u in units)):
        return f"has a 'generator_units' that is not a list of {t} lists"
    for key in ("device", "backend"):
        if key in metrics and not isinstance(metrics[key], str):
            return f"has a {key!r} that is not a string"
    return None


def experiment(run: dict) -> dict:
    """The settings that make ``run``'s numbers what they are (see the module doc): a DGM setting
    counts as the value it stands for (null ``s_max`` as the method's default, a ``mask_lr`` equal
    to ``lr`` as null), and a baseline's DGM settings, which it never reads, as absent."""
    config = run["config"]
    settings = {f.name: config.get(f.name, f.default) for f in dataclasses.fields(TrainConfig)
                if not rule(f.name).run_only and f.name != "seed"}
    if LEARNERS.get(settings["method"]) is DGMLearner:
        resolved = TrainConfig(method=settings["method"], s_max=settings["s_max"], lambda_reg=settings["lambda_reg"])
        settings.update(s_max=resolved.resolved_s_max, lambda_reg=resolved.resolved_lambda_reg,
                        mask_lr=None if settings["mask_lr"] == settings["lr"] else settings["mask_lr"])
    else:
        settings.update(dict.fromkeys(_DGM_ONLY))
    return {**settings, "tasks": len(run["A"])}


def group_runs(runs: list[dict]) -> list[tuple[dict, list[dict]]]:
    """``(experiment, its runs)`` in the order first seen; :class:`ResultsError` naming both
    folders when two runs of an experiment share a seed."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for run in runs:
        settings = experiment(run)
        _, group = groups.setdefault(json.dumps(settings, sort_keys=True), (settings, []))
        twin = next((r for r in group if r["config"]["seed"] == run["config"]["seed"]), None)
        if twin is not None:
            raise ResultsError(f"{twin['folder']} and {run['folder']} are runs of the same settings and seed "
                               f"{run['config']['seed']}: pooling them would count one result twice; pass one")
        group.append(run)
    return list(groups.values())


def _stat(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summary_table(runs: list[dict]) -> str:
    """One row per experiment, seeds pooled: mean ± sample standard deviation."""
    groups = group_runs(runs)
    differ = [k for k in groups[0][0]
              if k not in _COLUMNS and len({json.dumps(s[k]) for s, _ in groups if s[k] is not None}) > 1]
    lines = [("| dataset | method | backend | seeds | tasks × classes | A5 | A10 | A_T (final) | forgetting "
              "| generator weights (task 0 -> last) | wall time / run | settings |"),
             "|---" * 12 + "|"]
    for settings, group in groups:
        t = settings["tasks"]
        params = [r["generator_params"] for r in group if any(r.get("generator_params") or [])]
        growth = "-" if not params else (f"{statistics.fmean(p[0] for p in params):,.0f} -> "
                                         f"{statistics.fmean(p[-1] for p in params):,.0f}")
        minutes = [sum(r.get("wall_time_s") or []) / 60 for r in group]
        backends = sorted({str(r.get("backend", r["config"].get("backend", "?"))) for r in group})
        headline = [_stat([r["A"][n - 1] for r in group]) if t >= n else "-" for n in (5, 10)]
        lines.append(
            f"| {settings['dataset']} | {settings['method']} | {'/'.join(backends)} "
            f"| {', '.join(str(r['config']['seed']) for r in group)} | {t} × {settings['classes_per_task']} "
            f"| {' | '.join(headline)} | {_stat([r['A'][-1] for r in group])} "
            f"| {_stat([r['forgetting'] for r in group if r.get('forgetting') is not None])} | {growth} "
            f"| {_stat(minutes, 1)} min | {', '.join(f'{k}={json.dumps(settings[k])}' for k in differ if settings[k] is not None)} |")
    return "\n".join(lines)


def matrix_section(run: dict) -> str:
    """A run's accuracy matrix (row i: after task i) and its generator's growth per task."""
    matrix, average = run["accuracy_matrix"], run["A"]
    config = run["config"]
    t = len(matrix)
    lines = [f"**{run['run']}**: {config['dataset']}, {config['method']}, seed {config['seed']}, "
             f"{run.get('device', '?')}, backend {run.get('backend', '?')}", "",
             "| after task | " + " | ".join(str(j) for j in range(t)) + " | A |",
             "|---" * (t + 2) + "|"]
    for i, row in enumerate(matrix):
        cells = " | ".join("" if v is None else f"{v:.2f}" for v in row[:t])
        lines.append(f"| {i} | {cells} | **{average[i]:.3f}** |")
    if any(run.get("generator_params") or []):
        lines += ["", "generator weights per task: " + ", ".join(f"{p:,}" for p in run["generator_params"])]
    if run.get("generator_units"):
        lines.append(f"units per layer: {run['generator_units'][0]} after task 0 -> {run['generator_units'][-1]} "
                     f"after task {t - 1}")
    return "\n".join(lines)


@console_script("dgm-results")
def main(argv: list[str] | None) -> None:
    """Run ``dgm-results`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = Parser(prog="dgm-results", description="Markdown tables of dgm-train runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="dgm-train --out folders")
    parser.add_argument("--matrices", action="store_true", help="add every run's accuracy matrix")
    args = parser.parse_args(argv)
    runs = [load_run(folder) for folder in args.runs]
    parts = [summary_table(runs)]
    if args.matrices:
        parts += [matrix_section(run) for run in runs]
    print("\n\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
