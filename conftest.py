"""Test-wide setup: without a GPU, Triton kernels run under the interpreter (set before any kernel
is defined), and the GPU-only tests skip; the ``cpu_backend`` parameter and the ``dgm_task``
fixture of the step audits."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """``cpu_backend``: each masked-op backend, skipped where it does not run on the CPU (Triton
    without the interpreter, the extension when it is not built)."""
    if "cpu_backend" not in metafunc.fixturenames:
        return
    from dgm import ops

    cpu = torch.device("cpu")
    metafunc.parametrize("cpu_backend", [
        pytest.param(b, marks=pytest.mark.skipif(ops.unavailable_reason(b, "linear", cpu) is not None,
                                                 reason=f"backend {b} does not run on this CPU"))
        for b in ops.BACKENDS])


@pytest.fixture(params=[(method, arch) for method in ("dgmw", "dgma") for arch in ("mlp", "dcgan", "resnet")],
                ids="-".join)
def dgm_task(request, cpu_backend):
    """``(state, x, y)``: DGM's training state for task 2 on the CPU, per method and architecture on
    each ``cpu_backend`` (resnet: on the reference one) with two tasks of two classes consolidated
    with random masks before, so replay and reserved masks are in play
    (:func:`dgm.step_audit.consolidated_task`)."""
    from dgm.config import TrainConfig
    from dgm.step_audit import consolidated_task

    method, arch = request.param
    if cpu_backend == "triton" and arch != "mlp":
        pytest.skip("conv kernels under the interpreter: covered by the mlp case, too slow here")
    if cpu_backend != "reference" and arch == "resnet":
        pytest.skip("the residual body on the reference backend only (the backends are covered by mlp and dcgan): "
                    "25-42 s a case of test_step_replayable here, against 7-9 s for dcgan")
    config = TrainConfig(method=method, arch=arch, batch_size=8, nz=16, hidden=32, ngf=4, ndf=8, seed=0)
    return consolidated_task(config, cpu_backend, torch.device("cpu"), 2, classes_per_task=2, density=0.3)
