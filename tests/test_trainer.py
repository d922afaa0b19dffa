"""The continual run end to end on the offline MNIST subset: a finished run resumes to the same
result, and a run neither overwrites an earlier one nor resumes one of other settings."""

import pytest

from dgm.config import TrainConfig
from dgm.reporting import Reporter
from dgm.trainer import run


def tiny(out, method="dgmw", tasks=3, **kw):
    return TrainConfig(dataset="mnist5k", method=method, tasks=tasks, epochs=1, batch_size=16, arch="mlp",
                       hidden=16, nz=16, train_per_class=24, out=str(out), mask_lr=0.05, **kw)


def quiet(out):
    return Reporter(out, show_progress=False)


def test_resume_of_a_finished_run_returns_its_metrics(tmp_path):
    config = tiny(tmp_path, tasks=2)
    first = run(config, quiet(tmp_path))
    config.resume = True
    again = run(config, quiet(tmp_path))
    assert again["accuracy_matrix"] == first["accuracy_matrix"] and again["A"] == first["A"]


def test_a_run_refuses_to_overwrite_an_earlier_one(tmp_path):
    run(tiny(tmp_path, tasks=1), quiet(tmp_path))
    with pytest.raises(ValueError, match="--resume"):
        run(tiny(tmp_path, tasks=1), quiet(tmp_path))


def test_resume_refuses_other_settings(tmp_path):
    run(tiny(tmp_path, tasks=1), quiet(tmp_path))
    changed = tiny(tmp_path, tasks=2, resume=True)
    changed.hidden = 8
    with pytest.raises(ValueError, match="hidden = 8: the run in .* was made with hidden = 16"):
        run(changed, quiet(tmp_path))
