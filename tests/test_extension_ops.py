"""The ``extension`` backend (dgm.ops.extension: fused mask passes around ATen's product): detached
weights, unbatched inputs, argument errors, torch.compile, and grown layers against the reference.
Every mask form and gradient against the reference: tests/test_backend_conformance.py."""

import copy

import pytest
import torch
from conformance import rel_err

import dgm
from dgm import bits as _bits
from dgm import ops
from dgm.ops import extension as ext

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# op -> (input shape, weight shape, op args)
SPECS = {
    "linear": ((6, 13), (9, 13), ()),
    "conv_transpose2d": ((3, 5, 6, 5), (5, 7, 4, 4), (2, 1, 1, 1, 1)),
}


@pytest.mark.parametrize("op", ["linear", "conv_transpose2d"])
def test_weight_without_gradient_and_unbatched_input(op):
    """Consolidated-task calls pass a detached weight: only the input gets a gradient."""
    x_shape, w_shape, args = SPECS[op]
    x = torch.randn(x_shape[1:], requires_grad=True)
    w = torch.randn(w_shape)
    bits = _bits.pack(torch.rand(w_shape) < 0.5)
    grads = []
    for backend in ("reference", "extension"):
        x.grad = None
        y = getattr(ops, op)(x, w, None, *args, bits=bits, backend=backend)
        y.sum().backward()
        grads.append((y.detach(), x.grad.clone()))
    assert y.shape == grads[0][0].shape
    assert rel_err(grads[1][0], grads[0][0]) < 1e-5
    assert rel_err(grads[1][1], grads[0][1]) < 1e-5


def test_bad_mask_arguments_raise():
    x, w = torch.randn(2, 5), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="logits of shape"):
        ops.linear(x, w, logits=torch.randn(3, 4), backend="extension")
    with pytest.raises(RuntimeError, match=r"bits of shape .* expected \(3, 1\)"):
        ops.linear(x, w, bits=torch.zeros(3, 2, dtype=torch.uint8), backend="extension")
    with pytest.raises(RuntimeError, match="not both"):
        ops.linear(x, w, logits=torch.randn(3, 5), bits=torch.zeros(3, 1, dtype=torch.uint8), backend="extension")
    with pytest.raises(ops.UnsupportedInput, match="string padding"):
        ops.conv2d(torch.randn(1, 5, 4, 4), torch.randn(3, 5, 3, 3), padding="same", backend="extension")
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        ext.conv2d(torch.randn(1, 5, 4, 4), torch.randn(3, 5, 3, 3), padding="same")


def test_fused_passes_are_registered_for_torch_compile():
    w, logits = torch.randn(7, 9, 3, 3), torch.randn(7, 9, 3, 3)
    bits = _bits.pack(torch.rand(7, 9, 3, 3) < 0.5)
    out_res, in_res = torch.rand(9) < 0.5, torch.rand(7) < 0.5
    s = torch.tensor(1.5)  # the sharpness as the layers keep it: a 0-d float32 tensor
    torch.library.opcheck(torch.ops.dgm.masked_weight.default, (w, logits, s, None))
    torch.library.opcheck(torch.ops.dgm.masked_weight.default, (w, None, None, bits))
    torch.library.opcheck(torch.ops.dgm.masked_weight_backward.default,
                          (torch.randn_like(w), w, logits, s, None, None, out_res, in_res, 1, True, True))


def test_row_strided_bits_are_read_in_place():
    """A grown layer's reserved bits are a view of the capacity's packing (rows farther apart than
    their bytes): the fused passes read them where they are, with no copy per step."""
    w, logits, grad = torch.randn(5, 14), torch.randn(5, 14), torch.randn(5, 14)
    s = torch.tensor(1.5)  # the sharpness, read from memory
    view = _bits.pack(torch.rand(12, 20) < 0.5)[:5, :2]
    dense = view.contiguous()
    assert not view.is_contiguous()
    with torch.profiler.profile() as prof:
        y = torch.ops.dgm.masked_weight(w, None, None, view)
        gw, gl = torch.ops.dgm.masked_weight_backward(grad, w, logits, s, None, view, None, None, 0, True, True)
    assert not {"aten::contiguous", "aten::clone", "aten::copy_"} & {e.name for e in prof.events()}
    assert torch.equal(y, torch.ops.dgm.masked_weight(w, None, None, dense))
    expected = torch.ops.dgm.masked_weight_backward(grad, w, logits, s, None, dense, None, None, 0, True, True)
    assert torch.equal(gw, expected[0]) and torch.equal(gl, expected[1])


def _randomise_logits(layer, g):
    with torch.no_grad():
        for p in layer.logits():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_grown_layer_matches_reference(mask, device):
    """After consolidations and growth (weights are views of larger storage), the layer gives the
    same outputs and parameter gradients with backend='extension' as with 'reference', for every task form."""
    g = torch.Generator().manual_seed(3)
    layer = dgm.MaskedConvTranspose2d(5, 6, 4, 2, 1, mask=mask, backend="reference", s_max=8.0).to(device)
    _randomise_logits(layer, g)
    layer.consolidate()
    layer.expand(out_extra=3, in_extra=2)
    _randomise_logits(layer, g)
    layer.consolidate()
    layer.expand(out_extra=4, in_extra=1)
    _randomise_logits(layer, g)
    layer.set_sharpness(3.0)
    if mask == "activation":
        layer.set_input_reserved((torch.rand(layer.in_units, generator=g) < 0.5).to(device))
    fused = copy.deepcopy(layer)
    fused.backend = "extension"
    assert layer.weight.shape != layer.active_weight().shape  # strided views of the storage

    x = torch.randn(4, layer.in_units, 5, 5, generator=g).to(device)
    x_task0 = torch.randn(4, 5, 5, 5, generator=g).to(device)
    row_task = torch.tensor([1, 0, 1, 1], device=device)
    for inp, task in ((x, None), (x_task0, 0), (x, row_task)):
        outs = []
        for net in (layer, fused):
            net.zero_grad()
            xi = inp.clone().requires_grad_(True)
            y = net(xi, task)
            (y * torch.linspace(-1, 1, y.numel(), device=device).reshape(y.shape)).sum().backward()
            outs.append((y, xi.grad, {n: p.grad for n, p in net.named_parameters()}))
        (y_ref, gx_ref, gp_ref), (y, gx, gp) = outs
        assert rel_err(y, y_ref) < 1e-5
        assert rel_err(gx, gx_ref) < 1e-5
        for name, grad in gp_ref.items():
            if grad is None:
                assert gp[name] is None, name
            else:
                assert rel_err(gp[name], grad) < 1e-5, name


def test_compiles_in_one_graph():
    """torch.compile traces the autograd function and both fused ops without a graph break."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 6, 5, 5, generator=g, requires_grad=True)
    storage = torch.randn(9, 9, 4, 4, generator=g, requires_grad=True)
    logits = torch.randn(6, 7, 4, 4, generator=g, requires_grad=True)
    frozen = _bits.pack(torch.rand(6, 7, 4, 4, generator=g) < 0.3)

    def loss(x, storage, logits):
        y = ext.conv_transpose2d(x, storage[:6, :7], None, 2, 1, logits=logits, s=2.0, frozen_bits=frozen)
        return y.square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    out, out_ref = compiled(x, storage, logits), loss(x, storage, logits)
    assert rel_err(out, out_ref) < 1e-6
    for a, b in zip(torch.autograd.grad(out, (x, storage, logits)), torch.autograd.grad(out_ref, (x, storage, logits))):
        assert rel_err(a, b) < 1e-6
