"""Continual metrics on small hand-computed cases."""

import json
import math

import pytest

from dgm.metrics import AccuracyMatrix, build_metrics

# Three tasks; task sizes 10, 20, 40 so that sample-weighted and per-task means differ.
ROWS = [
    [(9, 10)],
    [(6, 10), (18, 20)],
    [(3, 10), (15, 20), (28, 40)],
]


def test_accuracy_entries_and_square_matrix():
    m = AccuracyMatrix(ROWS)
    assert m.num_tasks == 3
    assert m.accuracy(2, 1) == 0.75
    assert m.rows() == [[0.9, None, None], [0.6, 0.9, None], [0.3, 0.75, 0.7]]
    with pytest.raises(IndexError, match="task 2 was not evaluated after task 1"):
        m.accuracy(1, 2)
    with pytest.raises(IndexError, match="no evaluation after task 3"):
        m.average_accuracy(3)


def test_average_accuracy_is_sample_weighted_over_seen_classes():
    m = AccuracyMatrix(ROWS)
    assert m.average_accuracy(0) == 0.9
    assert m.average_accuracy(1) == pytest.approx(24 / 30)
    assert m.average_accuracy(2) == pytest.approx(46 / 70)
    # not the per-task mean (0.3 + 0.75 + 0.7) / 3
    assert abs(m.average_accuracy(2) - 1.75 / 3) > 0.05


def test_forgetting_is_mean_drop_from_best_earlier_accuracy():
    m = AccuracyMatrix(ROWS)
    # task 0: best of (0.9, 0.6) - 0.3 = 0.6; task 1: 0.9 - 0.75 = 0.15
    assert m.forgetting() == pytest.approx((0.6 + 0.15) / 2)
    assert AccuracyMatrix(ROWS[:1]).forgetting() is None
    # an old task that improves later counts as negative forgetting
    assert AccuracyMatrix([[(5, 10)], [(8, 10), (1, 1)]]).forgetting() == pytest.approx(-0.3)


def test_best_earlier_accuracy_excludes_the_final_row():
    # task 0 peaks only in the final evaluation: forgetting uses rows 0..T-2
    m = AccuracyMatrix([[(2, 10)], [(4, 10), (5, 10)], [(10, 10), (5, 10), (5, 10)]])
    assert m.forgetting() == pytest.approx(((0.4 - 1.0) + (0.5 - 0.5)) / 2)


@pytest.mark.parametrize("row, message", [
    ([(1, 2), (1, 2)], r"tasks 0..0 \(1 pairs\), got 2"),
    ([(3, 2)], "0 <= correct <= total"),
    ([(0, 0)], "total > 0"),
    ([(-1, 4)], "correct=-1"),
])
def test_bad_rows_are_rejected(row, message):
    with pytest.raises(ValueError, match=message):
        AccuracyMatrix().add_row(row)


def _history(rows):
    t = len(rows)
    return {"test": rows, "generator_params": [100 * (i + 1) for i in range(t)],
            "wall_time_s": [1.5] * t}


def test_build_metrics_schema_and_headline_numbers():
    # every task: 10 correct of 10 + j samples
    rows = [[(10, 10 + j) for j in range(i + 1)] for i in range(10)]
    history = {**_history(rows), "val": [[(1, 2)] * (i + 1) for i in range(10)],
               "growth": [[4 + i, 2] for i in range(10)]}
    classes = [[c] for c in range(10)]
    out = build_metrics({"method": "dgmw"}, classes, history, device="cpu", backend="reference", selection="current")
    assert out["config"] == {"method": "dgmw"}
    assert out["classes_per_task"] == classes
    assert out["A5"] == pytest.approx(50 / 60)
    assert out["A10"] == pytest.approx(100 / 145)
    assert out["A"][4] == out["A5"] and out["A"][9] == out["A10"] and len(out["A"]) == 10
    assert out["accuracy_matrix"][3][:4] == [10 / 10, 10 / 11, 10 / 12, 10 / 13]
    assert out["accuracy_matrix"][3][4:] == [None] * 6
    assert out["forgetting"] == pytest.approx(0.0)
    assert out["generator_params"] == [100 * (i + 1) for i in range(10)]
    assert out["wall_time_s"] == [1.5] * 10
    assert (out["device"], out["backend"], out["selection"]) == ("cpu", "reference", "current")
    assert out["test_counts"]["total"][2] == [10, 11, 12]
    assert out["val_A"] == [0.5] * 10
    assert out["generator_units"][9] == [13, 2]
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_build_metrics_before_five_tasks_has_no_headline_and_skips_empty_validation():
    rows = ROWS
    history = {**_history(rows), "val": [[(0, 0)] * (i + 1) for i in range(3)]}
    out = build_metrics({}, [[0], [1], [2]], history, device="cpu", backend="auto", selection="official")
    assert "A5" not in out and "A10" not in out
    assert "val_A" not in out
    assert math.isclose(out["A"][-1], 46 / 70)


def test_build_metrics_rejects_inconsistent_history():
    history = _history(ROWS)
    history["wall_time_s"] = [1.0]
    with pytest.raises(ValueError, match="wall_time_s"):
        build_metrics({}, [[0], [1], [2]], history, device="cpu", backend="reference", selection="last")
    with pytest.raises(ValueError, match="classes_per_task lists 2"):
        build_metrics({}, [[0], [1]], _history(ROWS), device="cpu", backend="reference", selection="last")
