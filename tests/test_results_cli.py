"""``dgm-results``: runs that differ only in their seed pool into one row (mean ± sample std); runs
that differ in any setting that changes the numbers, tasks and classes per task included, do not;
the same seed twice is refused; a damaged metrics.json is named."""

import json

import pytest

from dgm.cli import results
from dgm.errors import ResultsError


def _write_run(folder, tasks=3, seed=0, a=None, params=None, **config):
    """A metrics.json of ``tasks`` tasks, its ``A`` ``a`` (default: 1.0 falling by 0.2 a task)."""
    folder.mkdir()
    a = list(a or [1.0 - 0.2 * i * (i < 5) - 0.01 * i for i in range(tasks)])
    matrix = [[0.5] * (i + 1) + [None] * (tasks - i - 1) for i in range(tasks)]
    metrics = {"config": {"dataset": "mnist5k", "method": "dgmw", "seed": seed, "out": str(folder), "epochs": 3,
                          "backend": "reference", **config},
               "accuracy_matrix": matrix, "A": a, "forgetting": 0.25,
               "generator_params": list(params or [100 + 40 * i for i in range(tasks)]),
               "generator_units": [[10 + i, 8] for i in range(tasks)],
               "wall_time_s": [60.0] * tasks, "device": "cpu", "backend": config.get("backend", "reference")}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def _rows(text):
    """The summary table's rows, as lists of cells."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| mnist5k")]


def test_seeds_pool_and_methods_do_not(tmp_path, capsys):
    runs = [_write_run(tmp_path / "w0", seed=0, params=(100, 150, 180)),
            _write_run(tmp_path / "w1", seed=1, params=(100, 170, 200), device="cuda", backend="triton",
                       out="elsewhere"),
            _write_run(tmp_path / "j0", method="joint", seed=0, params=(0, 0, 0))]
    assert results.main(runs + ["--matrices"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert len(rows) == 2
    dgmw = rows[0]
    assert dgmw[1:7] == ["dgmw", "reference/triton", "0, 1", "3 × 1", "-", "-"]
    assert dgmw[7:10] == ["0.580 ± 0.000", "0.250 ± 0.000", "100 -> 190"]          # mean of the last task's 180 and 200
    assert dgmw[10] == "3.0 ± 0.0 min"
    assert dgmw[11] == ""                   # no setting tells the rows apart but the method
    assert "| 2 | 0.50 | 0.50 | 0.50 | **0.580** |" in out  # a matrix row and its A
    assert "generator weights per task: 100, 150, 180" in out
    assert rows[1][9] == "-"  # no generator


def test_tasks_and_classes_per_task_are_never_pooled(tmp_path, capsys):
    runs = [_write_run(tmp_path / "t2", tasks=2, a=[0.9, 0.7]),
            _write_run(tmp_path / "t10", tasks=10, seed=1, a=[1 - 0.05 * i for i in range(10)]),
            _write_run(tmp_path / "c2", tasks=5, classes_per_task=2, a=[1, 0.9, 0.8, 0.7, 0.6])]
    assert results.main(runs) == 0
    rows = _rows(capsys.readouterr().out)
    assert [row[4:8] for row in rows] == [["2 × 1", "-", "-", "0.700"],
                                           ["10 × 1", "0.800", "0.550", "0.550"],
                                           ["5 × 2", "0.600", "-", "0.600"]]
    assert {row[11] for row in rows} == {""}  # tasks and classes per task have their own column


def test_the_settings_that_differ_are_shown(tmp_path, capsys):
    runs = [_write_run(tmp_path / "a", lr=0.002), _write_run(tmp_path / "b", lr=0.01),
            _write_run(tmp_path / "c", seed=3)]  # no lr: the default, 0.002
    assert results.main(runs) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(row[3], row[11]) for row in rows] == [("0, 3", "lr=0.002"), ("0", "lr=0.01")]


def test_the_same_seed_twice_is_refused(tmp_path, capsys):
    a, b = _write_run(tmp_path / "a"), _write_run(tmp_path / "b", device="cuda")
    assert results.main([a, b]) == 2
    err = capsys.readouterr().err
    assert err == (f"dgm-results: error: {a} and {b} are runs of the same settings and seed 0: pooling them "
                   "would count one result twice; pass one\n")


def test_a_folder_without_metrics_is_named(tmp_path, capsys):
    assert results.main([str(tmp_path)]) == 2
    assert f"{tmp_path} holds no metrics.json" in capsys.readouterr().err


def test_a_foreign_json_is_refused(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ResultsError, match="metrics.json has no 'config' object"):
        results.load_run(tmp_path)


def test_a_null_dgm_setting_pools_with_the_value_it_stands_for(tmp_path, capsys):
    runs = [_write_run(tmp_path / "null", seed=0, s_max=None, lambda_reg=None, mask_lr=None, lr=0.002),
            _write_run(tmp_path / "set", seed=1, s_max=1e4, lambda_reg=0.08, mask_lr=0.002, lr=0.002),
            _write_run(tmp_path / "dgma", seed=0, method="dgma", s_max=1e4),
            _write_run(tmp_path / "r0", seed=0, method="replay", s_max=1e4, lambda_class=0.0),
            _write_run(tmp_path / "r1", seed=1, method="replay", s_max=1e5, lambda_class=1.0)]
    assert results.main(runs) == 0
    rows = {(row[1], row[3]) for row in _rows(capsys.readouterr().out)}
    assert rows == {("dgmw", "0, 1"), ("dgma", "0"), ("replay", "0, 1")}


def test_a_dgm_setting_that_changes_the_numbers_splits_rows(tmp_path, capsys):
    runs = [_write_run(tmp_path / "a", seed=0, s_max=None), _write_run(tmp_path / "b", seed=1, s_max=400.0)]
    assert results.main(runs) == 0
    rows = _rows(capsys.readouterr().out)
    assert [row[3] for row in rows] == ["0", "1"] and rows[1][-1] == "s_max=400.0"
