"""DGM's training step as a CUDA graph (:mod:`dgm.step_graph`): captured once per task and replayed,
with the eager step's numbers; on a CPU, never captured, and ``metrics.json`` says so."""

import functools

import pytest
import torch

from dgm import ops
from dgm.config import TrainConfig
from dgm.methods.dgm import train_step
from dgm.reporting import Reporter
from dgm.step_audit import consolidated_task
from dgm.step_graph import CapturedStep, unavailable_reason
from dgm.trainer import run


def _tiny(out, **kw):
    return TrainConfig(dataset="mnist5k", method="dgmw", tasks=2, epochs=3, batch_size=16, arch="mlp", hidden=16,
                       nz=16, train_per_class=24, out=str(out), mask_lr=0.05, **kw)


def test_why_a_step_is_not_captured():
    assert unavailable_reason(torch.device("cuda"), True) is None
    assert "CUDA device" in unavailable_reason(torch.device("cpu"), True)
    assert "--no-capture" in unavailable_reason(torch.device("cuda"), False)


@pytest.mark.parametrize("capture", [True, False])
def test_metrics_say_the_cpu_step_was_not_captured(tmp_path, capture):
    metrics = run(_tiny(tmp_path, capture=capture), Reporter(tmp_path, show_progress=False))
    reason = unavailable_reason(torch.device("cpu"), capture)
    assert metrics["step_capture"] == [{"captured": False, "reason": reason}] * 2


def _losses(method: str, capture: bool, steps: int) -> list[dict]:
    device = torch.device("cuda")
    config = TrainConfig(method=method, arch="dcgan", batch_size=16, nz=16, ngf=4, ndf=8, seed=0)
    state, x, y = consolidated_task(config, ops.fastest_backend(device), device, 2, classes_per_task=2, density=0.3)
    step = functools.partial(train_step, state)
    if capture:
        step = CapturedStep(step, generators=(state.replay_rng,))
    out = [step(x, y) for _ in range(steps)]
    if capture:
        assert step.report() == {"captured": True, "reason": None}
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dgmw", "dgma"])
def test_captured_step_gives_the_eager_steps_losses(method):
    """Three eager warm-up steps, the capture, then replays: every step's losses as the eager run's
    (the same seeds, so the same random draws)."""
    eager = _losses(method, capture=False, steps=8)
    captured = _losses(method, capture=True, steps=8)
    for want, got in zip(eager, captured):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_a_gpu_run_captures_every_task(tmp_path):
    metrics = run(_tiny(tmp_path, device="cuda", backend="auto"), Reporter(tmp_path, show_progress=False))
    assert metrics["step_capture"] == [{"captured": True, "reason": None}] * 2
