"""Masked layers under ``torch.compile``: one graph, and no recompilation as the sharpness anneals.

The sharpness ``s`` changes at every step. Dynamo first specialises on its value, then, at the
second value, marks it dynamic (automatic dynamic shapes): after that no new value may trigger a
compilation, or a compiled training step would recompile every step.

Known limit: the fused ops take ``s`` as a ``float`` in their schema, so a compiled DGMw layer
of the ``triton`` or ``extension`` backend specialises on every value of ``s`` (a guard per value).
The trainer does not compile; the fix is an ``s`` tensor argument (the test is a strict xfail
until then, so it flips when fixed).
"""

import pytest
import torch
from torch._dynamo.utils import counters

from dgm import MaskedConvTranspose2d, MaskedLinear


def _layer(kind: str, mask: str, backend: str):
    if kind == "linear":
        return MaskedLinear(70, 66, mask=mask, backend=backend), torch.randn(65, 70)
    return MaskedConvTranspose2d(9, 7, 4, 2, 1, mask=mask, backend=backend), torch.randn(3, 9, 5, 5)


@pytest.mark.parametrize("mask", ["weight", "activation"])
@pytest.mark.parametrize("kind", ["linear", "conv_transpose"])
def test_annealing_sharpness_compiles_at_most_twice(kind, mask, cpu_backend, request):
    if cpu_backend == "triton" and kind == "conv_transpose":
        pytest.skip("conv kernels under the interpreter: covered by the linear case, too slow here")
    if cpu_backend != "reference" and mask == "weight":
        request.applymarker(pytest.mark.xfail(strict=True, reason="fused ops take s as a float: one "
                                                                  "compilation per value (module doc)"))
    torch.manual_seed(0)
    layer, x = _layer(kind, mask, cpu_backend)
    with torch.no_grad():
        for p in layer.logits():
            p.normal_()
    layer.consolidate()  # a reserved mask: the frozen path is compiled too
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for s in (0.01, 0.5, 3.0, 40.0, 900.0):
        layer.s = s
        got = torch.autograd.grad(compiled(x).square().sum(), layer.weight)[0]
        want = torch.autograd.grad(layer(x).square().sum(), layer.weight)[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
