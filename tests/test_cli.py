"""dgm-train: settings precedence, usage errors (exit 2), --fused fallback, and short real runs."""

import csv
import dataclasses
import io
import json
import sys
from pathlib import Path

import pytest
import torch

from dgm.checkpoint import checkpoint_path, load_checkpoint
from dgm.cli.train import build_parser, main, parse_config
from dgm.config import TrainConfig


def _write(tmp_path, values, name="run.json"):
    path = tmp_path / name
    path.write_text(json.dumps(values))
    return str(path)


def test_every_setting_has_a_flag():
    flags = {s for action in build_parser()._actions for s in action.option_strings}
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in flags, field.name


def test_defaults_are_the_config_defaults():
    assert parse_config([]) == TrainConfig()


def test_flags_override_the_config_file(tmp_path):
    path = _write(tmp_path, {"method": "dgma", "epochs": 3, "lr": 0.01, "batch-size": 16, "fused": True,
                             "s_max": 500.0})
    config = parse_config(["--config", path, "--epochs", "5", "--no-fused", "--lambda-reg", "0.5"])
    assert (config.method, config.epochs, config.lr, config.batch_size) == ("dgma", 5, 0.01, 16)
    assert (config.fused, config.backend, config.s_max, config.lambda_reg) == (False, "reference", 500.0, 0.5)
    assert config.ngf == TrainConfig().ngf  # neither file nor flag: the default


def test_shipped_configs_parse(tmp_path):
    shipped = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.json"))
    assert len(shipped) >= 10
    for path in shipped:
        config = parse_config(["--config", str(path), "--device", "cpu", "--no-fused"])
        dataset, method = path.stem.split("_")[:2]
        assert (config.dataset, config.method) == (dataset, method)


def _usage_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1
    return err


def test_unknown_config_key(tmp_path, capsys):
    err = _usage_error(["--config", _write(tmp_path, {"epochs": 2, "learning_rate": 0.1})], capsys)
    assert err.startswith(f"dgm-train: error: {tmp_path / 'run.json'}: learning_rate = 0.1: not a setting; ")


def test_bad_dataset_name(tmp_path, capsys):
    err = _usage_error(["--dataset", "mnits"], capsys)
    assert err.startswith('dgm-train: error: --dataset = "mnits": one of mnist, ')
    err = _usage_error(["--config", _write(tmp_path, {"dataset": "mnits"})], capsys)
    assert 'run.json: dataset = "mnits": one of mnist, ' in err


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "two"], '--epochs = "two": an integer >= 1'),
    (["--batch-size", "0"], "--batch-size = 0: an integer >= 1"),
    (["--config", "/nonexistent/run.json"], ('config = "/nonexistent/run.json": a readable JSON or YAML file of '
                                             "settings (no such file)")),
    (["--device", "meta"], '--device = "meta": cpu, cuda or cuda:INDEX: only CPU and CUDA devices are supported'),
    (["--device", "tpu"], '--device = "tpu": cpu, cuda or cuda:INDEX'),
    (["--device", "cuda:x"], '--device = "cuda:x": cpu, cuda or cuda:INDEX'),
])
def test_usage_errors_name_the_problem(argv, message, capsys):
    assert message in _usage_error(argv, capsys)


def test_malformed_config_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text("{epochs: 2")
    assert f'config = "{path}": a readable JSON or YAML file of settings (not valid JSON: ' in \
        _usage_error(["--config", str(path)], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu(capsys):
    assert '--device = "cuda": cpu: torch sees no CUDA GPU here' in _usage_error(["--device", "cuda"], capsys)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "--classes-per-task" in capsys.readouterr().out


def test_fused_on_cpu_falls_back_to_reference_with_one_warning(capsys):
    config = parse_config(["--fused", "--device", "cpu", "--backend", "triton"])
    assert config.backend == "reference" and not config.fused  # resolved into the backend it chose
    err = capsys.readouterr().err
    assert err.count("warning: --fused") == 1 and "falling back to the reference backend" in err


# End-to-end: real (tiny) runs of the CLI on mnist5k.

RUN = ["--dataset", "mnist5k", "--arch", "mlp", "--hidden", "32", "--nz", "16", "--epochs", "1",
       "--batch-size", "32", "--train-per-class", "20", "--seed", "3"]


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run2")
    capture = pytest.MonkeyPatch()
    err, stdout = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stderr", err)
    capture.setattr(sys, "stdout", stdout)
    try:
        code = main(RUN + ["--tasks", "2", "--out", str(out), "--fused"])
    finally:
        capture.undo()
    return out, code, stdout.getvalue(), err.getvalue()


def test_run_writes_metrics_and_outputs(two_task_run):
    out, code, stdout, err = two_task_run
    assert code == 0, err
    assert err.count("warning: --fused") == 1  # the trainer does not warn again
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes_per_task"] == [[0], [1]]
    assert m["config"]["tasks"] == 2 and m["config"]["epochs"] == 1 and m["config"]["seed"] == 3
    assert m["config"]["backend"] == m["backend"] == "reference"
    matrix = m["accuracy_matrix"]
    assert len(matrix) == 2 and matrix[0][1] is None
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row if v is not None)
    correct, total = m["test_counts"]["correct"], m["test_counts"]["total"]
    assert matrix[1][0] == correct[1][0] / total[1][0]
    assert m["A"][1] == pytest.approx(sum(correct[1]) / sum(total[1]))
    assert m["A"][0] == matrix[0][0]
    assert m["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
    assert "A5" not in m
    assert len(m["generator_params"]) == 2 and all(n > 0 for n in m["generator_params"])
    assert len(m["wall_time_s"]) == 2 and m["device"] == "cpu"
    for name in ("samples_task0.png", "samples_task1.png", "accuracy_matrix.png", "log.csv", "config.json"):
        assert (out / name).is_file(), name
    assert load_checkpoint(checkpoint_path(out, 1))["next_task"] == 2
    assert {line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()[1:]} == {"0", "1"}
    assert "accuracy matrix" in stdout
    assert "A (accuracy over all classes seen): " + " ".join(f"{a:.4f}" for a in m["A"]) in stdout


def _logged_losses(out, task):
    """The logged scalars of ``task``'s steps, without the wall-clock column."""
    with open(out / "log.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["task"] == str(task)]
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


def test_resume_continues_as_the_unbroken_run(two_task_run, tmp_path, capsys):
    full_out = two_task_run[0]
    full = json.loads((full_out / "metrics.json").read_text())
    assert main(RUN + ["--tasks", "1", "--out", str(tmp_path)]) == 0
    capsys.readouterr()

    # same out without --resume: refused, nothing overwritten
    err = _usage_error(RUN + ["--tasks", "2", "--out", str(tmp_path)], capsys)
    assert "--resume" in err and str(tmp_path) in err

    assert main(RUN + ["--tasks", "2", "--out", str(tmp_path), "--resume"]) == 0
    assert "resuming at task 1" in capsys.readouterr().err
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    assert resumed["classes_per_task"] == full["classes_per_task"]
    for task in (0, 1):
        assert _logged_losses(tmp_path, task) == _logged_losses(full_out, task)
    assert resumed["test_counts"] == full["test_counts"]
    assert resumed["generator_params"] == full["generator_params"]
    assert resumed["generator_units"] == full["generator_units"]


def test_resume_from_a_corrupt_checkpoint_names_it(tmp_path, capsys):
    checkpoint_path(tmp_path, 0).write_bytes(b"not a checkpoint")
    err = _usage_error(RUN + ["--tasks", "2", "--out", str(tmp_path), "--resume"], capsys)
    assert str(checkpoint_path(tmp_path, 0)) in err and "cannot be read" in err and "weights_only" not in err
