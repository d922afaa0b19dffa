"""``dgm-results``: runs that differ only in their seed pool into one row (mean ± sample std)."""

import json

import pytest

from dgm.cli import results
from dgm.errors import ResultsError


def _write_run(folder, method="dgmw", seed=0, a=(1.0, 0.8, 0.6), params=(100, 150, 180)):
    folder.mkdir()
    matrix = [[1.0, None, None], [0.7, 0.9, None], [0.5, 0.6, 0.7]]
    metrics = {"config": {"dataset": "mnist5k", "method": method, "seed": seed, "out": str(folder), "epochs": 3,
                          "backend": "reference"},
               "accuracy_matrix": matrix, "A": list(a), "A5": None, "forgetting": 0.25,
               "generator_params": list(params), "generator_units": [[10, 8], [12, 9], [13, 9]],
               "wall_time_s": [60.0, 60.0, 60.0], "device": "cpu", "backend": "reference"}
    metrics.pop("A5")
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_seeds_pool_and_methods_do_not(tmp_path, capsys):
    runs = [_write_run(tmp_path / "w0", seed=0, params=(100, 150, 180)),
            _write_run(tmp_path / "w1", seed=1, params=(100, 170, 200)),
            _write_run(tmp_path / "j0", method="joint", seed=0, params=(0, 0, 0))]
    assert results.main([str(r) for r in runs] + ["--matrices"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mnist5k")]
    assert len(rows) == 2
    dgmw = rows[0].split(" | ")
    assert dgmw[1:5] == ["dgmw", "reference", "0, 1", "3"]
    assert dgmw[8] == "100 -> 190"          # mean of the last task's 180 and 200
    assert dgmw[9] == "3.0 ± 0.0 min |"
    assert "| 2 | 0.50 | 0.60 | 0.70 | **0.600** |" in out  # a matrix row and its A
    assert "generator weights per task: 100, 150, 180" in out
    assert rows[1].split(" | ")[8] == "-"  # no generator


def test_a_folder_without_metrics_is_named(tmp_path, capsys):
    assert results.main([str(tmp_path)]) == 2
    assert f"{tmp_path} holds no metrics.json" in capsys.readouterr().err


def test_a_foreign_json_is_refused(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ResultsError, match="metrics.json has no 'config' object"):
        results.load_run(tmp_path)
