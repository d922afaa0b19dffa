"""The mask schedule, HAT's logit-gradient compensation and the sparsity regulariser, against their
formulas computed by hand."""

import math

import pytest
import torch

import dgm
from dgm import bits, masks


@pytest.mark.parametrize("epoch,epochs,batch,batches,s_max", [
    (0, 1, 0, 10, 400.0), (0, 1, 9, 10, 400.0), (3, 5, 2, 7, 400.0), (4, 5, 6, 7, 400.0), (9, 10, 31, 32, 1e4),
    (1, 3, 0, 1, 2.0),
])
def test_sharpness_equals_documented_formula(epoch, epochs, batch, batches, s_max):
    expected = 1 / s_max + (s_max - 1 / s_max) * batch / max(batches - 1, 1)
    assert math.isclose(masks.sharpness(epoch, epochs, batch, batches, s_max), expected, rel_tol=1e-12)


@pytest.mark.parametrize("epochs", [1, 5])
def test_sharpness_anneals_from_inverse_to_s_max(epochs):
    s_max, batches = 400.0, 8
    assert math.isclose(masks.sharpness(0, epochs, 0, batches, s_max), 1 / s_max, rel_tol=1e-9)
    for e in range(epochs):
        values = [masks.sharpness(e, epochs, b, batches, s_max) for b in range(batches)]
        assert all(a < b for a, b in zip(values, values[1:])), f"s must grow within epoch {e}: {values}"
    assert masks.sharpness(epochs - 1, epochs, batches - 1, batches, s_max) >= 0.9 * s_max


@pytest.mark.parametrize("args", [(0, 1, 0, 10, 0.5), (1, 1, 0, 10, 400), (0, 1, 10, 10, 400), (-1, 2, 0, 1, 4)])
def test_sharpness_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        masks.sharpness(*args)


@pytest.mark.parametrize("s,s_max", [(0.01, 400.0), (3.0, 400.0), (400.0, 400.0), (0.5, 1e4)])
def test_compensate_logit_grad_equals_hat_formula(s, s_max):
    g = torch.Generator().manual_seed(0)
    e = torch.randn(40, generator=g, dtype=torch.float64) * 4  # s*e beyond the clamp for large s
    grad = torch.randn(40, generator=g, dtype=torch.float64)
    logits = e.clone().requires_grad_(True)
    logits.grad = grad.clone()
    masks.compensate_logit_grad_(logits, s, s_max / s)
    expected = []
    for ei, gi in zip(e.tolist(), grad.tolist()):
        se = min(max(s * ei, -50.0), 50.0)
        expected.append(gi * s_max / s * (math.cosh(se) + 1) / (math.cosh(ei) + 1))
    torch.testing.assert_close(logits.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.detach(), e)


def test_compensate_without_grad_is_a_no_op():
    logits = torch.zeros(3, requires_grad=True)
    masks.compensate_logit_grad_(logits, 1.0, 10.0)
    assert logits.grad is None


def test_sparsity_regularizer_rejects_no_layers():
    with pytest.raises(ValueError, match="no masked layers"):
        masks.sparsity_regularizer([])


def _set_logits(layer, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.logits():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _hand_terms(layer):
    """(mask values, reserved flags) of every mask entry of ``layer``, written from its public state."""
    s = float(layer.s)
    if layer.mask == "weight":
        o = layer.out_units
        w_shape = layer.active_weight().shape
        logit = layer.mask_logits[: w_shape[0], : w_shape[1]].detach().reshape(-1)
        res = (torch.zeros(logit.shape, dtype=torch.bool) if layer.reserved_bits is None
               else bits.unpack(layer.reserved_bits, w_shape).reshape(-1))
        if layer.bias is not None:
            logit = torch.cat([logit, layer.bias_logits[:o].detach()])
            rb = torch.zeros(o, dtype=torch.bool) if layer.reserved_bias is None else layer.reserved_bias
            res = torch.cat([res, rb])
    else:
        logit = layer.unit_logits[: layer.out_units].detach()
        res = (torch.zeros(logit.shape, dtype=torch.bool) if layer.reserved_units is None
               else layer.reserved_units)
    m = [1 / (1 + math.exp(-s * v)) for v in logit.tolist()]
    return m, res.tolist()


@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_sparsity_regularizer_equals_hand_formula(kind):
    torch.manual_seed(0)
    layers = [dgm.MaskedLinear(5, 6, mask=kind, backend="reference", dtype=torch.float64),
              dgm.MaskedConvTranspose2d(6, 3, 3, mask=kind, backend="reference", dtype=torch.float64)]
    for k, layer in enumerate(layers):
        _set_logits(layer, 10 + k)
        layer.consolidate()
    layers[0].expand(out_extra=2)
    layers[1].expand(in_extra=2, out_extra=1)
    for k, layer in enumerate(layers):
        _set_logits(layer, 20 + k)
        layer.set_sharpness(0.7)
    assert all(layer.reserved_count() > 0 for layer in layers)
    num = den = 0.0
    for layer in layers:
        m, r = _hand_terms(layer)
        num += sum(mi for mi, ri in zip(m, r) if not ri)
        den += sum(1 for ri in r if not ri)
    reg = masks.sparsity_regularizer(layer.mask_usage() for layer in layers)
    assert math.isclose(reg.item(), num / den, rel_tol=1e-12)
    # The regulariser trains the current logits: d R / d e = s * m * (1 - m) * (1 - r) / den.
    reg.backward()
    for layer in layers:
        m, r = _hand_terms(layer)
        expected = torch.tensor([0.0 if ri else float(layer.s) * mi * (1 - mi) / den for mi, ri in zip(m, r)],
                                dtype=torch.float64)
        if kind == "weight":
            w_shape = layer.active_weight().shape
            got = layer.mask_logits.grad[: w_shape[0], : w_shape[1]].reshape(-1)
            if layer.bias is not None:
                got = torch.cat([got, layer.bias_logits.grad[: layer.out_units]])
        else:
            got = layer.unit_logits.grad[: layer.out_units]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["weight", "activation"])
def test_sparsity_regularizer_of_a_first_task_is_the_mean_mask(kind):
    layers = [dgm.MaskedLinear(4, 3, mask=kind, backend="reference", dtype=torch.float64),
              dgm.MaskedConv2d(3, 2, 2, bias=False, mask=kind, backend="reference", dtype=torch.float64)]
    for k, layer in enumerate(layers):
        _set_logits(layer, 30 + k)
        layer.set_sharpness(2.5)
    values = [mi for layer in layers for mi in _hand_terms(layer)[0]]
    reg = masks.sparsity_regularizer(layer.mask_usage() for layer in layers)
    assert math.isclose(reg.item(), sum(values) / len(values), rel_tol=1e-12)
