"""Data-parallel runs on the CPU (gloo, 127.0.0.1): the ranks split each global batch and their
averaged gradients are one process's on it; a 2-process run matches a 1-process one, a torchrun
run resumes as unbroken, and a rank that dies or never comes stops the others with a clear error
instead of a hang."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import epoch_batches, step_gradients
from dgm.checkpoint import load_checkpoint
from dgm.config import TrainConfig
from dgm.reporting import Reporter
from dgm.trainer import run

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
# Two tasks of two classes of the offline MNIST subset, two steps a task (32 images / global batch 16).
TINY = {"dataset": "mnist5k", "method": "dgmw", "tasks": 2, "classes_per_task": 2, "epochs": 1, "batch_size": 16,
        "arch": "mlp", "hidden": 16, "nz": 16, "train_per_class": 16, "mask_lr": 0.05, "seed": 3}
FLAGS = [str(w) for k, v in TINY.items() for w in ("--" + k.replace("_", "-"), v)]
LIMIT_S = 240  # the longest a launch may take before the test fails rather than waits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    """torchrun's variables for ``rank`` of ``world`` processes on this machine."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def start(argv: list[str], rank: int, world: int, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], env=rank_env(rank, world, port), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"a rank was still running after {LIMIT_S} s: {proc.args}")
    return proc.returncode, out, err


def torchrun(out: Path) -> None:
    """``torchrun --nproc_per_node 2 -m dgm.cli.train`` of :data:`TINY` into ``out``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "dgm.cli.train", *FLAGS, "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S, env={**os.environ,
                                                                                     "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def launch(argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    """Run one process per ``argv`` as the ranks of one group; their ``(exit status, stdout, stderr)``."""
    port = free_port()
    procs = [start(argv, r, len(argvs), port) for r, argv in enumerate(argvs)]
    return [finish(proc) for proc in procs]


def test_ranks_split_each_global_batch_average_its_gradients_and_check_replicas(tmp_path):
    """Every loss of the step is a mean over rows, and the ranks take equal shares of each global
    batch, so the mean over 2 ranks of their gradients is the gradient of one process on the whole
    batch, up to float32 rounding of sums taken in another order (rtol 1e-5: ~100 ulp)."""
    results = launch([[WORKER, "grads", str(tmp_path / f"rank{r}.pt")] for r in range(2)])
    assert all(code == 0 for code, _, _ in results), results
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = step_gradients(0, 1)
    assert ranks[0]["grads"].keys() == whole.keys() and any(k.endswith("logits") for k in whole)
    for name, grad in whole.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name  # every rank: the same bits
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # 23 samples, global batch 8: one sample left out, batches of 8, 8, 6 split 4 + 4, 4 + 4, 3 + 3.
    one, two = epoch_batches(23, 8), [r["batches"] for r in ranks]
    assert [len(b) for b in two[0]] == [len(b) for b in two[1]] == [4, 4, 3]
    for whole_batch, part0, part1 in zip(one, *two):
        assert sorted(torch.cat([part0, part1]).tolist()) == sorted(whole_batch[: len(part0) * 2].tolist())
    # The replica check after a task: silent when the ranks agree, naming task, rank and tensor when not.
    for said in (r["replicas"] for r in ranks):
        assert said[0] == ""
        assert said[1] == "after task 7 the generator differs between rank 0 and rank 1: weight (masks, weights or " \
                          "norms diverged)"
        assert said[2].startswith("after task 7 the generator has other tensors or shapes on rank(s) 1 than on rank 0")


def test_two_process_joint_run_matches_one_process_with_the_same_global_batch(tmp_path):
    """``joint`` draws nothing but the batch order, which every rank draws alike: the 2-process run
    is the 1-process run with each step's gradient summed in another order. Its accuracies are
    the same and its classifier the same within rtol 1e-4 (float32 rounding, carried through the
    Adam steps of two tasks)."""
    flags = [*FLAGS, "--method", "joint", "--out", str(tmp_path / "two")]
    results = launch([["-m", "dgm.cli.train", *flags]] * 2)
    assert all(code == 0 for code, _, _ in results), results
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    one = run(TrainConfig(**{**TINY, "method": "joint"}, out=str(tmp_path / "one")),
              Reporter(tmp_path / "one", show_progress=False))
    assert two["world_size"] == [2, 2] and one["world_size"] == [1, 1]
    assert two["test_counts"] == one["test_counts"] and two["val_accuracy_matrix"] == one["val_accuracy_matrix"]
    weights = [load_checkpoint(tmp_path / run_dir / "checkpoint_task1.pt")["classifier"] for run_dir in ("two", "one")]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_two_process_dgm_run_under_torchrun_resumes_as_unbroken(tmp_path):
    """A DGMw run of 2 tasks by ``torchrun --nproc_per_node 2``; resumed from its first checkpoint
    by 2 processes with torchrun's environment it ends exactly as unbroken (every draw is seeded per
    task and rank)."""
    two = tmp_path / "two"
    torchrun(two)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == [2, 2] and metrics["config"]["batch_size"] == TINY["batch_size"]
    assert all("data-parallel" not in c["reason"] for c in metrics["step_capture"])  # the CPU's reason comes first
    assert sorted(p.name for p in two.glob("checkpoint_task*.pt")) == ["checkpoint_task0.pt", "checkpoint_task1.pt"]
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    (resumed / "checkpoint_task1.pt").unlink()
    results = launch([["-m", "dgm.cli.train", *FLAGS, "--out", str(resumed), "--resume"]] * 2)  # as torchrun does
    assert all(code == 0 for code, _, _ in results), results
    again = json.loads((resumed / "metrics.json").read_text())
    for key in ("accuracy_matrix", "val_accuracy_matrix", "generator_units", "generator_params", "world_size"):
        assert again[key] == metrics[key], key


def test_a_rank_that_dies_stops_the_run_with_a_clear_error(tmp_path):
    flags = [*FLAGS, "--out", str(tmp_path / "run"), "--dist-timeout", "60"]
    (code, _, err), (dead, _, _) = launch([["-m", "dgm.cli.train", *flags], [WORKER, "die"]])
    assert dead == 3
    assert code == 2 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("dgm-train: error: rank 0 of 2: ") and "another rank stopped" in line, line


def test_a_rank_that_never_comes_times_out_with_a_clear_error(tmp_path):
    proc = start(["-m", "dgm.cli.train", *FLAGS, "--out", str(tmp_path / "run"), "--dist-timeout", "3"],
                 0, 2, free_port())
    code, _, err = finish(proc)
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("dgm-train: error: rank 0 of 2: joining the gloo process group"), err[-3000:]
    assert "within --dist-timeout 3 s" in line, line
