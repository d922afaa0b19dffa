"""Benchmark-wide setup: collect ``bench_*.py``, shapes by machine (small on a CPU, full on a GPU),
the device.

A module sets ``CPU_SHAPES`` and ``GPU_SHAPES`` (tuples of ints); a benchmark that takes the
``shape`` argument runs once per shape of the machine it is on.
"""

import pytest
import torch

ON_GPU = torch.cuda.is_available()


def pytest_collect_file(file_path, parent):
    """``pytest benchmarks/`` collects the ``bench_*.py`` suites (not test files by name)."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):  # a file named on the command line is collected anyway
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        shapes = getattr(metafunc.module, "GPU_SHAPES" if ON_GPU else "CPU_SHAPES")
        metafunc.parametrize("shape", shapes, ids=["x".join(map(str, s)) for s in shapes])


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture
def synced():
    """Wraps a callable so each benchmarked call waits for the GPU to finish."""
    def wrap(fn):
        if not ON_GPU:
            return fn

        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return wrap


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the figures were measured on (read back by ``benchmarks/report.py``)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    machine_info["dgm"] = {
        "device": torch.cuda.get_device_name() if ON_GPU else machine_info.get("cpu", {}).get("brand_raw") or "cpu",
        "device_type": "cuda" if ON_GPU else "cpu",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
