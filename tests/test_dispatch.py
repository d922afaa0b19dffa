"""The dispatch of dgm.ops: one registry of names, ``auto`` per call with its reasons, explicit
requests refused with theirs, a broken backend reported, backends imported lazily, and backend
modules that never import the dispatcher."""

import ast
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import dgm
from dgm import ops
from dgm.cli.train import build_parser
from dgm.config import TrainConfig
from dgm.frozen_adam import BACKENDS as ADAM_BACKENDS
from dgm.frozen_adam import FrozenAdam
from dgm.ops import backends, cost, reference

ROOT = Path(__file__).resolve().parents[1]


def test_one_list_of_names():
    assert ops.BACKENDS == tuple(b.name for b in backends.REGISTRY)
    assert ops.CHOICES == ops.BACKENDS + ("auto",)
    flag = next(a for a in build_parser()._actions if a.dest == "backend")  # checked by TrainConfig, not argparse
    assert flag.metavar == "{" + ",".join(ops.CHOICES) + "}"
    for name in ops.CHOICES:
        assert TrainConfig(backend=name).backend == name
        assert dgm.MaskedLinear(3, 2, backend=name).backend == name
    assert set(ADAM_BACKENDS) == {"auto", "reference", "extension"}


@pytest.mark.parametrize("make", [
    lambda: dgm.MaskedLinear(3, 2, backend="cuda"),
    lambda: ops.linear(torch.randn(2, 3), torch.randn(2, 3), backend="cuda"),
    lambda: TrainConfig(backend="cuda"),
    lambda: FrozenAdam([torch.zeros(2, requires_grad=True)], backend="cuda"),
], ids=["layer", "op", "config", "frozen_adam"])
def test_the_old_extension_name_says_the_new_one(make):
    with pytest.raises(ValueError, match="backend 'cuda' is now called 'extension'"):
        make()


def test_explicit_backend_refuses_an_input_it_does_not_serve():
    x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
    message = "backend 'triton' does not serve this conv2d input: a grouped convolution (groups > 1) is not served"
    if ops.unavailable_reason("triton", "conv2d", x.device) is not None:
        pytest.skip("triton does not run here")
    with pytest.raises(ops.UnsupportedInput) as info:
        ops.conv2d(x, w, None, 1, 1, 1, 2, backend="triton")
    assert str(info.value) == message
    assert isinstance(info.value, ops.BackendUnavailable) and isinstance(info.value, ValueError)
    assert ops.reasons("conv2d", x, w, None, 1, 1, 1, 2, backend="triton") == {"triton": message}


def test_auto_passes_over_backends_per_call_and_says_why(monkeypatch, caplog):
    """A float64 conv with string padding: Triton computes no float64, the extension takes no string
    padding; auto runs the reference and logs (and :func:`dgm.ops.reasons` lists) why."""
    monkeypatch.setitem(backends.AUTO_PREFERENCE["cpu"], "conv2d", ("triton", "extension", "reference"))
    x, w = torch.randn(2, 5, 6, 6, dtype=torch.float64), torch.randn(7, 5, 3, 3, dtype=torch.float64)
    why = ops.reasons("conv2d", x, w, padding="same", backend="auto")
    assert list(why) == ["triton", "extension", "reference"] and why["reference"] is None
    if ops.unavailable_reason("triton", "conv2d", x.device) is None:
        assert "input dtype float64 (it computes in bfloat16, float16, float32)" in why["triton"]
    if ops.unavailable_reason("extension", "conv2d", x.device) is None:
        assert "string padding ('same' or 'valid') is not served" in why["extension"]
    with caplog.at_level(logging.DEBUG, logger="dgm.ops"):
        y = ops.conv2d(x, w, padding="same", backend="auto")
    assert torch.equal(y, reference.conv2d(x, w, padding="same"))
    assert [r.getMessage() for r in caplog.records] == [f"auto conv2d: passing over {why[b]}" for b in why if why[b]]
    # Per call: a float32 input without string padding goes to the first backend.
    if ops.unavailable_reason("triton", "conv2d", x.device) is None:
        assert ops.reasons("conv2d", x.float(), w.float(), backend="auto") == {"triton": None}


def test_a_broken_backend_is_reported_once_and_listed(monkeypatch):
    """A backend whose import raises: a BackendImportWarning with the error, listed as unusable by
    available(), refused by name with the error, passed over by auto."""
    def broken(name, *args, **kwargs):
        if name == "dgm.ops.extension":
            raise OSError("undefined symbol: _ZN3dgm4fakeEv")
        return real(name, *args, **kwargs)

    real = ops.importlib.import_module
    monkeypatch.setattr(ops, "_MODULES", {"reference": reference})
    monkeypatch.setattr(ops, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(ops, "_DEVICE_REASONS", {})
    monkeypatch.setattr(ops.importlib, "import_module", broken)
    with pytest.warns(ops.BackendImportWarning, match="'extension' is unusable: import of dgm.ops.extension "
                                                      "failed: OSError: undefined symbol"):
        rows = {r.backend: r for r in ops.available("cpu")}
    assert not rows["extension"].usable and "undefined symbol" in rows["extension"].reason
    assert rows["reference"].usable and rows["reference"].reason == backends.BY_NAME["reference"].summary
    with pytest.raises(ops.BackendUnavailable, match="undefined symbol"):
        ops.linear(torch.randn(2, 3), torch.randn(4, 3), backend="extension")
    assert ops.resolve("auto", "frozen_adam", torch.device("cpu")) == "reference"
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        ops.available("cpu")
        assert ops.load("extension") is None
    assert not [w for w in again if w.category is ops.BackendImportWarning]  # reported once


def test_available_lists_every_backend_with_a_reason():
    rows = ops.available("cpu")
    assert [r.backend for r in rows] == list(ops.BACKENDS)
    assert all(r.reason for r in rows)
    assert rows[0] == ("reference", True, backends.BY_NAME["reference"].summary)


def test_importing_dgm_and_the_cli_loads_no_backend():
    code = ("import sys\nimport dgm, dgm.cli.train\n"
            "loaded = [m for m in ('triton', 'dgm.kernels', 'dgm._C', 'dgm.ops.extension') if m in sys.modules]\n"
            "assert not loaded, loaded\n"
            "dgm.MaskedLinear(3, 2, backend='reference')\n"
            "assert 'dgm.kernels' not in sys.modules and 'dgm._C' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_kernels_never_import_the_dispatcher():
    """Backends are leaves: no module of kernels/ imports dgm.ops (or anything of dgm outside it)."""
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("dgm"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("dgm") for a in node.names), f"{path.name} imports dgm"


def test_linear_cost_model_orders_the_fused_backends_per_size():
    """The model of dgm.ops.cost: at the paper's sizes the launches decide (Triton's fused epilogues
    take fewer), at 4096^3 the GEMM rate (cuBLAS's assumed higher efficiency), and a replay over
    10 tasks the extension's 10 products; ``auto``'s order follows it, the reference staying last."""
    order = ("triton", "extension", "reference")
    cost_of = lambda b, *shape, **kw: cost.linear_step_cost(b, *shape, torch.float32, **kw)  # noqa: E731
    assert cost_of("triton", 64, 100, 100, soft=True) < cost_of("extension", 64, 100, 100, soft=True)
    assert cost_of("extension", 4096, 4096, 4096, soft=True) < cost_of("triton", 4096, 4096, 4096, soft=True)
    assert cost_of("triton", 256, 512, 512, soft=False, tasks=10) < cost_of("extension", 256, 512, 512, soft=False,
                                                                             tasks=10)
    small, large = torch.empty(64, 100), torch.empty(4096, 4096)
    assert cost.linear_order(order, small, torch.empty(100, 100), {"logits": small}) == order
    assert cost.linear_order(order, large, torch.empty(4096, 4096), {"logits": large}) == ("extension", "triton",
                                                                                           "reference")
    assert cost.linear_order(("triton", "reference"), large, torch.empty(4096, 4096), {}) == ("triton", "reference")
    with pytest.raises(ValueError, match="backend must be 'triton' or 'extension'"):
        cost.linear_step_cost("reference", 1, 1, 1, torch.float32, soft=False)
