"""The ``cuda`` backend (dgm.ops.extension: fused mask passes around ATen's product) against the
reference ops, for every mask form, every gradient, strided weight views and grown layers."""

import copy

import pytest
import torch

import dgm
from dgm import bits as _bits
from dgm import ops
from dgm.ops import extension as ext

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# op -> (input shape, weight shape, storage shape the weight is a corner view of, op args, out_dim)
SPECS = {
    "linear": ((6, 13), (9, 13), (11, 17), (), 0),
    "conv2d": ((3, 5, 9, 7), (7, 5, 3, 3), (9, 8, 3, 3), (2, 1, 1, 1), 0),
    "conv_transpose2d": ((3, 5, 6, 5), (5, 7, 4, 4), (8, 9, 4, 4), (2, 1, 1, 1, 1), 1),
}
FORMS = ("soft", "soft_frozen", "bits", "rows", "units", "units_rows")
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_case(op, form, device, dtype, seed):
    """Fresh random leaves (weights as corners of larger storage) and the fixed mask arguments."""
    x_shape, w_shape, store_shape, _, out_dim = SPECS[op]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    def coin(*shape, p=0.5):
        return (torch.rand(*shape, generator=g) < p).to(device)

    out_units, in_units, batch = w_shape[out_dim], w_shape[1 - out_dim], x_shape[0]
    leaves = {"x": rnd(*x_shape), "w_store": rnd(*store_shape), "bias": rnd(out_units)}
    fixed = {}
    if form in ("soft", "soft_frozen"):
        leaves["l_store"] = rnd(*store_shape)
        fixed["s"] = 2.5
    if form == "soft_frozen":
        fixed["frozen_bits"] = _bits.pack(coin(*w_shape))
    if form == "bits":
        fixed["bits"] = _bits.pack(coin(*w_shape, p=0.7))
    if form == "rows":
        fixed["bits"] = torch.stack([_bits.pack(coin(*w_shape, p=0.7)) for _ in range(3)])
        fixed["row_task"] = torch.randint(0, 3, (batch,), generator=g).to(device)
    if form == "units":
        leaves["unit_scale"] = torch.rand(out_units, generator=g, dtype=torch.float64).to(device, dtype)
        fixed["frozen_units"] = (coin(out_units), coin(in_units))
    if form == "units_rows":
        leaves["unit_scale"] = torch.rand(batch, out_units, generator=g, dtype=torch.float64).to(device, dtype)
        fixed["frozen_units"] = (coin(out_units), None)
    return leaves, fixed


def run(op, backend, leaves, fixed, grad_out=None):
    """Output and the gradient of every leaf for ``sum(y * grad_out)``."""
    _, w_shape, _, args, _ = SPECS[op]
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    kwargs = dict(fixed)
    corner = (slice(0, w_shape[0]), slice(0, w_shape[1]))
    if "l_store" in leaves:
        kwargs["logits"] = leaves["l_store"][corner]
    if "unit_scale" in leaves:
        kwargs["unit_scale"] = leaves["unit_scale"]
    y = getattr(ops, op)(leaves["x"], leaves["w_store"][corner], leaves["bias"], *args, backend=backend, **kwargs)
    if grad_out is None:
        grad_out = torch.randn_like(y)
    (y * grad_out).sum().backward()
    return y, {k: v.grad for k, v in leaves.items()}, grad_out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("op", list(SPECS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(op, form, dtype, device):
    leaves, fixed = make_case(op, form, device, dtype, seed=hash((op, form)) % 10_000)
    y_ref, grads_ref, gy = run(op, "reference", leaves, fixed)
    y, grads, _ = run(op, "cuda", leaves, fixed, gy)
    assert rel_err(y, y_ref) < TOL[dtype]
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert grads[name] is not None and grads_ref[name] is not None, name
        assert rel_err(grads[name], grads_ref[name]) < TOL[dtype], name
    # Exactly zero where frozen, and outside the weight's corner of the storage.
    _, w_shape, _, _, _ = SPECS[op]
    gw = grads["w_store"]
    assert not gw[w_shape[0]:].any() and not gw[:, w_shape[1]:].any()
    if "frozen_bits" in fixed:
        frozen = _bits.unpack(fixed["frozen_bits"], w_shape)
        assert not gw[: w_shape[0], : w_shape[1]][frozen].any()


@pytest.mark.parametrize("op", ["linear", "conv_transpose2d"])
def test_weight_without_gradient_and_unbatched_input(op):
    """Consolidated-task calls pass a detached weight: only the input gets a gradient."""
    x_shape, w_shape, _, args, _ = SPECS[op]
    x = torch.randn(x_shape[1:], requires_grad=True)
    w = torch.randn(w_shape)
    bits = _bits.pack(torch.rand(w_shape) < 0.5)
    grads = []
    for backend in ("reference", "cuda"):
        x.grad = None
        y = getattr(ops, op)(x, w, None, *args, bits=bits, backend=backend)
        y.sum().backward()
        grads.append((y.detach(), x.grad.clone()))
    assert y.shape == grads[0][0].shape
    assert rel_err(grads[1][0], grads[0][0]) < 1e-5
    assert rel_err(grads[1][1], grads[0][1]) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", list(SPECS))
def test_half_precision_on_gpu(op, dtype):
    leaves, fixed = make_case(op, "soft_frozen", "cuda", dtype, seed=7)
    y_ref, grads_ref, gy = run(op, "reference", leaves, fixed)
    y, grads, _ = run(op, "cuda", leaves, fixed, gy)
    assert rel_err(y, y_ref) < TOL[dtype]
    for name in grads:
        assert rel_err(grads[name], grads_ref[name]) < TOL[dtype], name


def test_bad_mask_arguments_raise():
    x, w = torch.randn(2, 5), torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="logits of shape"):
        ops.linear(x, w, logits=torch.randn(3, 4), backend="cuda")
    with pytest.raises(RuntimeError, match=r"bits of shape .* expected \(3, 1\)"):
        ops.linear(x, w, bits=torch.zeros(3, 2, dtype=torch.uint8), backend="cuda")
    with pytest.raises(RuntimeError, match="not both"):
        ops.linear(x, w, logits=torch.randn(3, 5), bits=torch.zeros(3, 1, dtype=torch.uint8), backend="cuda")
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        ops.conv2d(torch.randn(1, 5, 4, 4), torch.randn(3, 5, 3, 3), padding="same", backend="cuda")


def test_fused_passes_are_registered_for_torch_compile():
    w, logits = torch.randn(7, 9, 3, 3), torch.randn(7, 9, 3, 3)
    bits = _bits.pack(torch.rand(7, 9, 3, 3) < 0.5)
    out_res, in_res = torch.rand(9) < 0.5, torch.rand(7) < 0.5
    torch.library.opcheck(torch.ops.dgm.masked_weight.default, (w, logits, 1.5, None))
    torch.library.opcheck(torch.ops.dgm.masked_weight.default, (w, None, 1.0, bits))
    torch.library.opcheck(torch.ops.dgm.masked_weight_backward.default,
                          (torch.randn_like(w), w, logits, 1.5, None, None, out_res, in_res, 1, True, True))


def _randomise_logits(layer, g):
    with torch.no_grad():
        for p in layer.logits():
            p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_grown_layer_matches_reference(mask, device):
    """After consolidations and growth (weights are views of larger storage), the layer gives the
    same outputs and parameter gradients with backend='cuda' as with 'reference', for every task form."""
    g = torch.Generator().manual_seed(3)
    layer = dgm.MaskedConvTranspose2d(5, 6, 4, 2, 1, mask=mask, backend="reference", s_max=8.0).to(device)
    _randomise_logits(layer, g)
    layer.consolidate()
    layer.expand(out_extra=3, in_extra=2)
    _randomise_logits(layer, g)
    layer.consolidate()
    layer.expand(out_extra=4, in_extra=1)
    _randomise_logits(layer, g)
    layer.s = 3.0
    if mask == "activation":
        layer.set_input_reserved((torch.rand(layer.in_units, generator=g) < 0.5).to(device))
    fused = copy.deepcopy(layer)
    fused.backend = "cuda"
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
