"""The masked layers on ``backend="triton"`` against the same layers on the reference, through a
task's life: train under the soft mask with reserved entries, a consolidated task's forward, and
replay of mixed task rows after the layer grew (weights are views of a larger storage)."""

import copy

import pytest
import torch

from dgm import MaskedConvTranspose2d, MaskedLinear
from conformance import TOL, rel_err


def _two_tasks(layer):
    with torch.no_grad():
        for p in layer.logits():
            p.normal_()
    layer.consolidate()
    layer.expand(out_extra=5, in_extra=3)
    if layer.mask == "activation":
        layer.set_input_reserved(torch.rand(layer.in_units) < 0.5)
    with torch.no_grad():
        for p in layer.logits():
            p.normal_()
    layer.set_sharpness(2.5)
    return layer


def _compare(ref, fast, x_shape):
    x = torch.randn(*x_shape[:1], fast.in_units, *x_shape[1:])
    params = [p for p in fast.parameters()]
    ref_params = [p for p in ref.parameters()]
    for task in (None, 0):
        xin = x if task is None else x[:, : fast.sizes(0)[1]]
        y, y_ref = fast(xin, task), ref(xin, task)
        assert rel_err(y, y_ref) < TOL[torch.float32]
        if task is None:
            dy = torch.randn_like(y)
            got = torch.autograd.grad(y, params, dy, allow_unused=True)
            want = torch.autograd.grad(y_ref, ref_params, dy, allow_unused=True)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if w is not None:
                    assert rel_err(g, w) < TOL[torch.float32]
    rows = torch.zeros(x.shape[0], dtype=torch.long)
    assert rel_err(fast(x, rows), ref(x, rows)) < TOL[torch.float32]


@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_masked_linear_on_triton(mask):
    torch.manual_seed(0)
    ref = _two_tasks(MaskedLinear(70, 67, mask=mask, backend="reference"))
    fast = copy.deepcopy(ref)
    fast.backend = "triton"
    _compare(ref, fast, (33,))


def test_generator_first_layer_on_triton():
    torch.manual_seed(1)
    ref = _two_tasks(MaskedConvTranspose2d(20, 12, 4, 1, 0, mask="weight", backend="reference"))
    fast = copy.deepcopy(ref)
    fast.backend = "triton"
    _compare(ref, fast, (9, 1, 1))
