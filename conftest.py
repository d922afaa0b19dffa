"""Test-wide setup: without a GPU, Triton kernels run under the interpreter (set before any kernel
is defined), and the GPU-only tests skip."""

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
