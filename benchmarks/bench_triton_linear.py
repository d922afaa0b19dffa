"""Masked linear: reference vs the fused Triton kernels vs ``auto`` (the backend the cost model of
:mod:`dgm.ops.cost` picks per size: Triton, or cuBLAS on the masked weight through the extension)
vs the unmasked limit (``F.linear``).

Shapes are ``(batch, in, out)``: the paper's sizes and one large GEMM-bound case on a GPU, tiny
ones on a CPU. Each shape and pass is one pytest-benchmark group holding the columns, so one run
gives ``triton/limit`` and ``auto/limit`` (the target: <= 1.15 for fwd+bwd at 4096^3). The Triton
and auto columns skip on a CPU: the interpreter runs the kernels in Python and measures nothing,
and auto runs the reference there.
"""

import pytest
import torch
import torch.nn.functional as F

from dgm import bits, ops
from dgm.ops import reference

CPU_SHAPES = [(64, 100, 100), (128, 256, 256)]
GPU_SHAPES = [(64, 100, 100), (256, 512, 512), (256, 1024, 1024), (4096, 4096, 4096)]
IMPLS = ["reference", "triton", "auto", "limit"]
TASKS = 10


class _Auto:
    """``dgm.ops`` with ``backend="auto"``, in the form of a backend module."""

    @staticmethod
    def linear(*args, **kwargs):
        return ops.linear(*args, backend="auto", **kwargs)


def _module(impl):
    if impl in ("triton", "auto") and not torch.cuda.is_available():
        pytest.skip(f"{impl} column: no GPU, and the interpreter is not a speed measure")
    if impl == "triton":
        import dgm.kernels
        return dgm.kernels
    return _Auto if impl == "auto" else reference


def _inputs(shape, device, grad=False):
    batch, n_in, n_out = shape
    storage = torch.randn(n_out + 16, n_in + 16, device=device) / n_in ** 0.5
    w = storage[:n_out, :n_in]
    x = torch.randn(batch, n_in, device=device)
    logits = torch.randn(n_out, n_in, device=device)
    frozen = bits.pack(torch.rand(n_out, n_in, device=device) < 0.3)
    if grad:
        storage.requires_grad_()
        w = storage[:n_out, :n_in]
        x.requires_grad_()
        logits.requires_grad_()
    return storage, w, x, logits, frozen


@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, shape, impl, device, synced):
    benchmark.group = f"linear-forward-{'x'.join(map(str, shape))}"
    _, w, x, logits, frozen = _inputs(shape, device)
    if impl == "limit":
        plain = w.contiguous()
        fn = lambda: F.linear(x, plain)
    else:
        mod = _module(impl)
        fn = lambda: mod.linear(x, w, None, logits=logits, s=2.0, frozen_bits=frozen)
    with torch.no_grad():
        benchmark(synced(fn))


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, shape, impl, device, synced):
    benchmark.group = f"linear-fwd+bwd-{'x'.join(map(str, shape))}"
    storage, w, x, logits, frozen = _inputs(shape, device, grad=True)
    if impl == "limit":
        plain = w.detach().contiguous().requires_grad_()

        def fn():
            y = F.linear(x, plain)
            return torch.autograd.grad(y, (x, plain), torch.ones_like(y))
    else:
        mod = _module(impl)

        def fn():
            y = mod.linear(x, storage[: w.shape[0], : w.shape[1]], None, logits=logits, s=2.0, frozen_bits=frozen)
            return torch.autograd.grad(y, (x, storage, logits), torch.ones_like(y))
    benchmark(synced(fn))


@pytest.mark.parametrize("impl", IMPLS)
def test_replay(benchmark, shape, impl, device, synced):
    """One batch whose rows belong to 10 tasks, each under its own bits; the limit is one
    unmasked forward of the whole batch."""
    benchmark.group = f"linear-replay{TASKS}-{'x'.join(map(str, shape))}"
    _, w, x, _, _ = _inputs(shape, device)
    batch, n_in, n_out = shape
    task_bits = torch.stack([bits.pack(torch.rand(n_out, n_in, device=device) < 0.5) for _ in range(TASKS)])
    row_task = torch.randint(0, TASKS, (batch,), device=device)
    if impl == "limit":
        plain = w.contiguous()
        fn = lambda: F.linear(x, plain)
    else:
        mod = _module(impl)
        fn = lambda: mod.linear(x, w, None, bits=task_bits, row_task=row_task)
    with torch.no_grad():
        benchmark(synced(fn))
