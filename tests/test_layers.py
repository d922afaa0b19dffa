"""Masked layers on the reference backend: drop-in equality with ``torch.nn``, the task lifecycle
(consolidate, per-task and per-row forward, growth), bad input, and state dict round trips."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dgm
from dgm import bits

DT = torch.float64
KINDS = ["weight", "activation"]


class Spec:
    """One layer type: how to build it, its ``torch.nn`` twin, its input and its plain op."""

    def __init__(self, name, masked, plain_module, args, kwargs, spatial, op):
        self.name, self.masked, self.plain_module = name, masked, plain_module
        self.args, self.kwargs, self.spatial, self.op = args, kwargs, spatial, op

    def layer(self, mask, bias=True):
        return self.masked(*self.args, **self.kwargs, bias=bias, mask=mask, backend="reference", dtype=DT)

    def twin(self):
        return self.plain_module(*self.args, **self.kwargs, dtype=DT)

    def x(self, batch, in_units, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn((batch, in_units) + self.spatial, generator=g, dtype=DT)

    def weight_view(self, layer, out_units, in_units):
        """``(out, in)`` corner of the storage, indexed as the op expects."""
        if self.name == "conv_transpose2d":
            return layer.weight[:in_units, :out_units]
        return layer.weight[:out_units, :in_units]

    def unit_shape(self, y):
        return (1, -1) + (1,) * (y.dim() - 2)


SPECS = [
    Spec("linear", dgm.MaskedLinear, nn.Linear, (5, 7), {}, (), lambda layer, x, w, b: F.linear(x, w, b)),
    Spec("conv2d", dgm.MaskedConv2d, nn.Conv2d, (3, 4, 3), {"stride": 2, "padding": 1}, (7, 6),
         lambda layer, x, w, b: F.conv2d(x, w, b, layer.stride, layer.padding)),
    Spec("conv_transpose2d", dgm.MaskedConvTranspose2d, nn.ConvTranspose2d, (3, 4, 4),
         {"stride": 2, "padding": 1, "output_padding": 1}, (5, 4),
         lambda layer, x, w, b: F.conv_transpose2d(x, w, b, layer.stride, layer.padding, layer.output_padding)),
]
IDS = [s.name for s in SPECS]


def _randomise_logits(layer, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.logits():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _perturb_weights(layer, seed):
    """Stand-in for training: move every unreserved weight (what an optimiser step may do)."""
    g = torch.Generator().manual_seed(seed)
    masks = layer.reserved_masks()
    with torch.no_grad():
        for name, m in masks.items():
            p = getattr(layer, name)
            p.copy_(torch.where(m, p, p + torch.randn(p.shape, generator=g, dtype=p.dtype)))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_init_matches_torch_nn(spec, kind):
    torch.manual_seed(3)
    layer = spec.layer(kind)
    torch.manual_seed(3)
    twin = spec.twin()
    assert torch.equal(layer.weight, twin.weight)
    assert torch.equal(layer.bias, twin.bias)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_drop_in_with_all_ones_mask(spec, kind):
    layer, twin = spec.layer(kind), spec.twin()
    with torch.no_grad():
        twin.weight.copy_(layer.weight)
        twin.bias.copy_(layer.bias)
        for p in layer.logits():
            p.fill_(10.0)
    layer.set_sharpness(layer.s_max)
    x = spec.x(3, spec.args[0], seed=1)
    assert torch.equal(layer(x), twin(x))
    assert torch.equal(layer(x[0]), twin(x[0]))  # an unbatched input too


@pytest.mark.parametrize("kind", KINDS)
def test_linear_accepts_leading_dims(kind):
    layer = dgm.MaskedLinear(6, 4, mask=kind, backend="reference", dtype=DT)
    _randomise_logits(layer, 2)
    layer.set_sharpness(1.7)
    x = torch.randn(2, 3, 6, dtype=DT)
    if kind == "weight":
        expected = F.linear(x, layer.weight * torch.sigmoid(1.7 * layer.mask_logits),
                            layer.bias * torch.sigmoid(1.7 * layer.bias_logits))
    else:
        expected = F.linear(x, layer.weight, layer.bias) * torch.sigmoid(1.7 * layer.unit_logits)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_current_task_forward_is_the_soft_masked_op(spec, kind):
    layer = spec.layer(kind)
    _randomise_logits(layer, 4)
    layer.set_sharpness(2.3)
    x = spec.x(2, spec.args[0], seed=5)
    w, b = layer.weight, layer.bias
    if kind == "weight":
        expected = spec.op(layer, x, w * torch.sigmoid(2.3 * layer.mask_logits),
                           b * torch.sigmoid(2.3 * layer.bias_logits))
    else:
        y = spec.op(layer, x, w, b)
        expected = y * torch.sigmoid(2.3 * layer.unit_logits).reshape(spec.unit_shape(y))
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x, task=0), expected, rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_consolidate_stores_the_sign_of_the_logits(spec, kind):
    layer = spec.layer(kind)
    _randomise_logits(layer, 6)
    out_units, in_units = layer.out_units, layer.in_units
    if kind == "weight":
        expected = layer.mask_logits.detach() > 0
        expected_bias = layer.bias_logits.detach() > 0
    else:
        expected = layer.unit_logits.detach() > 0
    layer.consolidate()
    assert layer.task == 1
    assert layer.sizes(0) == (out_units, in_units)
    assert torch.equal(layer.task_bits(0), bits.pack(expected))
    assert torch.equal(bits.unpack(layer.task_bits(0), expected.shape), expected)
    if kind == "weight":
        assert torch.equal(layer.reserved_bias, expected_bias)
        assert layer.reserved_count() == int(expected.sum() + expected_bias.sum())
        assert torch.equal(layer.reserved_masks()["weight"], expected)
    else:
        assert torch.equal(layer.reserved_units, expected)
        assert torch.equal(layer.unit_mask(0), expected.to(DT))
        assert layer.reserved_count() == int(expected.sum())
    assert all(torch.all(p == 0) for p in layer.logits())  # the next task starts from zero logits
    # A second task: the reserved set is the union.
    _randomise_logits(layer, 7)
    second = (layer.mask_logits.detach() > 0) if kind == "weight" else (layer.unit_logits.detach() > 0)
    layer.consolidate()
    assert torch.equal(layer.task_bits(1), bits.pack(second))
    union = expected | second
    if kind == "weight":
        assert torch.equal(bits.unpack(layer.reserved_bits, union.shape), union)
    else:
        assert torch.equal(layer.reserved_units, union)


def _expected_consolidated(spec, layer, kind, x, task, masks):
    """Task ``task``'s output from its recorded bits, on its own width."""
    out_units, in_units = layer.sizes(task)
    w = spec.weight_view(layer, out_units, in_units).detach()
    b = None if layer.bias is None else layer.bias[:out_units].detach()
    if kind == "weight":
        m, mb = masks[task]
        return spec.op(layer, x, w * m.to(DT), None if b is None else b * mb.to(DT))
    y = spec.op(layer, x, w, b)
    return y * masks[task].to(DT).reshape(spec.unit_shape(y))


def _train_three_widths(spec, kind, bias=True):
    """A layer with tasks 0 and 1 consolidated at different widths, learning task 2 at a third."""
    layer = spec.layer(kind, bias)
    masks = []
    for t, (out_extra, in_extra) in enumerate([(2, 3), (3, 1)]):
        _randomise_logits(layer, 10 + t)
        if kind == "weight":
            shape = layer.active_weight().shape
            masks.append((layer.mask_logits[: shape[0], : shape[1]].detach() > 0,
                          None if layer.bias is None else layer.bias_logits[: layer.out_units].detach() > 0))
        else:
            masks.append(layer.unit_logits[: layer.out_units].detach() > 0)
        layer.consolidate()
        layer.expand(out_extra, in_extra)
        _perturb_weights(layer, 20 + t)
    _randomise_logits(layer, 30)
    return layer, masks


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_consolidated_forward_uses_binary_mask_and_own_width(spec, kind, bias):
    layer, masks = _train_three_widths(spec, kind, bias)
    o, i = spec.args[1], spec.args[0]
    assert [layer.sizes(t) for t in range(3)] == [(o, i), (o + 2, i + 3), (o + 5, i + 4)]
    for task in (0, 1):
        x = spec.x(3, layer.sizes(task)[1], seed=40 + task)
        y = layer(x, task=task)
        assert y.shape[1 if spec.name != "linear" else -1] == layer.sizes(task)[0]
        torch.testing.assert_close(y, _expected_consolidated(spec, layer, kind, x, task, masks),
                                   rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="features"):
            layer(spec.x(3, layer.in_units), task=task)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_consolidated_forward_does_not_train(spec, kind):
    layer, _ = _train_three_widths(spec, kind)
    x0 = spec.x(2, layer.sizes(0)[1]).requires_grad_(True)
    xr = spec.x(3, layer.in_units).requires_grad_(True)
    layer(x0, task=0).sum().backward()
    layer(xr, task=torch.tensor([1, 0, 1])).sum().backward()
    assert x0.grad is not None and xr.grad is not None  # the input still gets its gradient
    assert all(p.grad is None for p in layer.parameters())


def _rows_input(spec, layer, row_task, kind, seed):
    x = spec.x(len(row_task), layer.in_units, seed=seed)
    if kind == "activation":  # inside a network the previous layer outputs zeros beyond a task's width
        for r, t in enumerate(row_task.tolist()):
            x[r, layer.sizes(t)[1]:] = 0
    return x


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_per_row_forward_equals_per_task_forward(spec, kind, bias):
    layer, _ = _train_three_widths(spec, kind, bias)
    row_task = torch.tensor([1, 0, 0, 1, 0])
    x = _rows_input(spec, layer, row_task, kind, seed=50)
    y = layer(x, task=row_task)
    unit_dim = -1 if spec.name == "linear" else 1
    assert y.shape[unit_dim] == layer.out_units
    for r, t in enumerate(row_task.tolist()):
        out_units, in_units = layer.sizes(t)
        alone = layer(x[r:r + 1, :in_units], task=t)
        row = y[r:r + 1].narrow(unit_dim, 0, out_units)
        torch.testing.assert_close(row, alone, rtol=1e-12, atol=1e-12)
        assert torch.all(y[r:r + 1].narrow(unit_dim, out_units, layer.out_units - out_units) == 0)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_activation_rows_ignore_inputs_beyond_task_width(spec):
    layer, _ = _train_three_widths(spec, "activation")
    row_task = torch.tensor([0, 1])
    x = spec.x(2, layer.in_units, seed=51)
    y = layer(x, task=row_task)
    unit_dim = -1 if spec.name == "linear" else 1
    for r, t in enumerate(row_task.tolist()):
        out_units, in_units = layer.sizes(t)
        torch.testing.assert_close(y[r:r + 1].narrow(unit_dim, 0, out_units), layer(x[r:r + 1, :in_units], task=t),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_per_row_forward_of_an_empty_batch(spec, kind):
    layer, _ = _train_three_widths(spec, kind)
    x = spec.x(0, layer.in_units)
    assert layer(x, task=torch.zeros(0, dtype=torch.long)).shape == layer(x).shape


def test_row_masks_follow_dtype_changes():
    layer = dgm.MaskedLinear(4, 3, mask="activation", backend="reference", dtype=DT)
    _randomise_logits(layer, 1)
    layer.consolidate()
    rows = torch.tensor([0, 0])
    layer(torch.randn(2, 4, dtype=DT), task=rows)
    layer.float()
    assert layer(torch.randn(2, 4), task=rows).dtype == torch.float32


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_current_task_cannot_move_reserved_weights(spec, kind):
    """The gradient of the task being learned is zero exactly on the reserved entries."""
    layer = spec.layer(kind)
    _randomise_logits(layer, 60)
    layer.consolidate()
    layer.expand(1, 2)
    if kind == "activation":
        layer.set_input_reserved(torch.arange(layer.in_units) % 2 == 0)
    _randomise_logits(layer, 61)
    layer.set_sharpness(1.0)
    g = torch.Generator().manual_seed(62)
    y = layer(spec.x(3, layer.in_units, seed=63))
    (y * torch.randn(y.shape, generator=g, dtype=DT)).sum().backward()
    masks = layer.reserved_masks()
    assert masks["weight"].any() and (~masks["weight"]).any()
    for name, m in masks.items():
        grad = getattr(layer, name).grad
        active = torch.zeros_like(m)
        if name == "weight":
            shape = layer.active_weight().shape
            active[: shape[0], : shape[1]] = True
        else:
            active[: layer.out_units] = True
        assert torch.all(grad[m] == 0)
        assert torch.all(grad[active & ~m] != 0)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip_into_a_fresh_layer(spec, kind, bias):
    layer, _ = _train_three_widths(spec, kind, bias)
    layer.set_sharpness(3.0)
    fresh = spec.layer(kind, bias)
    fresh.load_state_dict(layer.state_dict(), resize=True)
    assert fresh.task == layer.task and [fresh.sizes(t) for t in range(3)] == [layer.sizes(t) for t in range(3)]
    for task in range(layer.task + 1):
        x = spec.x(2, layer.sizes(task)[1], seed=70 + task)
        assert torch.equal(fresh(x, task=task), layer(x, task=task))
    rows = torch.tensor([1, 0])
    x = _rows_input(spec, layer, rows, kind, seed=75)
    assert torch.equal(fresh(x, task=rows), layer(x, task=rows))
    a, b = layer.reserved_masks(), fresh.reserved_masks()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.reserved_count() == layer.reserved_count()
    assert fresh.mask_usage()[1] == layer.mask_usage()[1]


def _as_version_1(layer):
    """``layer``'s state dict as layers wrote it before the mask policy split off (version 1): the
    policy's tensors as the layer's own, the reserved ones at the active size."""
    active = {"weight_reserved": layer.reserved_bits if layer.mask == "weight" else None,
              "bias_reserved": layer.reserved_bias if layer.mask == "weight" else None,
              "out_reserved": layer.reserved_units if layer.mask == "activation" else None,
              "in_reserved": layer.policy.reserved_in_units(layer.in_units) if layer.mask == "activation" else None}
    legacy = {"weight_reserved": "reserved_bits", "bias_reserved": "reserved_bias", "out_reserved": "reserved_units",
              "in_reserved": "reserved_in_units"}
    state = OrderedDict()
    for key, value in layer.state_dict().items():
        name = key.removeprefix("policy.")
        state[legacy.get(name, name)] = active[name].contiguous() if name in active else value
    state._metadata = {"": {"version": 1}}
    return state


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_version_1_state_dict_loads(spec, kind, bias):
    layer, _ = _train_three_widths(spec, kind, bias)
    if kind == "activation":
        layer.set_input_reserved(torch.arange(layer.in_units) % 3 == 0)
    old = _as_version_1(layer)
    assert any(k.startswith("reserved_") for k in old) and not any(k.startswith("policy.") for k in old)
    fresh = spec.layer(kind, bias)
    fresh.load_state_dict(old, resize=True)
    assert fresh.state_dict().keys() == layer.state_dict().keys()
    for key, value in layer.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(fresh.state_dict()[key], value), key
    for task in range(layer.task + 1):
        x = spec.x(2, layer.sizes(task)[1], seed=90 + task)
        assert torch.equal(fresh(x, task=task), layer(x, task=task))
    assert fresh.reserved_count() == layer.reserved_count() and fresh.mask_usage()[1] == layer.mask_usage()[1]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_deferred_unit_mask_leaves_masking_to_the_owner(spec):
    layer, _ = _train_three_widths(spec, "activation")
    layer.set_sharpness(1.3)
    rows = torch.tensor([0, 1, 1])
    cases = [(None, spec.x(2, layer.in_units)), (1, spec.x(2, layer.sizes(1)[1])),
             (rows, _rows_input(spec, layer, rows, "activation", seed=80))]
    masked = [layer(x, task=t) for t, x in cases]
    layer.defer_unit_mask = True
    for (t, x), y in zip(cases, masked):
        raw = layer(x, task=t)
        scale = layer.unit_mask(t)
        shape = [1] * raw.dim()
        unit_dim = raw.dim() - 1 if spec.name == "linear" else 1
        shape[unit_dim] = -1
        if scale.dim() == 2:
            shape[0] = scale.shape[0]
        torch.testing.assert_close(raw * scale.reshape(shape), y, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(raw, y)


def test_extra_repr_mentions_mask_and_task():
    layer = dgm.MaskedConvTranspose2d(3, 4, 4, 2, 1, mask="activation", backend="reference")
    _randomise_logits(layer, 1)
    layer.consolidate()
    text = repr(layer)
    assert "mask='activation'" in text and "task=1" in text and "kernel_size=(4, 4)" in text
    assert "mask='weight'" in repr(dgm.MaskedLinear(2, 3, backend="reference"))


# -- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_rejects_wrong_dtype_device_and_width(spec):
    layer = spec.layer("weight")
    x = spec.x(2, spec.args[0])
    with pytest.raises(TypeError, match="dtype"):
        layer(x.float())
    with pytest.raises(ValueError, match="device|on meta"):
        layer(x.to("meta"))
    with pytest.raises(ValueError, match="features"):
        layer(spec.x(2, spec.args[0] + 1))
    with pytest.raises(TypeError, match="tensor"):
        layer(x.tolist())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_rejects_tasks_never_trained(spec, kind):
    layer = spec.layer(kind)
    x = spec.x(2, spec.args[0])
    with pytest.raises(ValueError, match="task"):
        layer(x, task=1)
    with pytest.raises(ValueError, match="task"):
        layer(x, task=-1)
    with pytest.raises(ValueError, match="never consolidated: no task has been consolidated yet"):
        layer.task_bits(0)
    _randomise_logits(layer, 1)
    layer.consolidate()
    with pytest.raises(ValueError, match="never consolidated"):
        layer.task_bits(1)
    with pytest.raises(ValueError, match="task"):
        layer(x, task=2)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_rejects_bad_per_row_ids(spec, kind):
    layer = spec.layer(kind)
    x = spec.x(2, spec.args[0])
    with pytest.raises(ValueError, match="no task has been consolidated yet"):
        layer(x, task=torch.tensor([0, 0]))
    _randomise_logits(layer, 1)
    layer.consolidate()
    for rows in (torch.tensor([0, 1]), torch.tensor([-1, 0])):  # 1 is the task being learned
        with pytest.raises(RuntimeError, match="consolidated tasks"):  # checked on the device, never read back
            layer(x, task=rows)
    for rows in (torch.tensor([0, 0, 0]), torch.tensor([0.0, 0.0]), torch.tensor([False, False]),
                 torch.zeros(2, 1).long()):
        with pytest.raises(ValueError, match=r"integer tensor of shape \(2,\)"):
            layer(x, task=rows)
    with pytest.raises(ValueError, match="batched input"):
        layer(x[0], task=torch.tensor([0]))


def test_rejects_bad_construction():
    with pytest.raises(ValueError, match="mask must be one of"):
        dgm.MaskedLinear(3, 4, mask="unit", backend="reference")
    with pytest.raises(ValueError, match="backend must be one of"):
        dgm.MaskedLinear(3, 4, backend="nope")
    with pytest.raises(ValueError, match="groups=1"):
        dgm.MaskedConv2d(4, 4, 3, groups=2, mask="activation", backend="reference")
    with pytest.raises(ValueError, match="groups=1"):
        dgm.MaskedConvTranspose2d(4, 4, 3, groups=2, mask="activation", backend="reference")
    with pytest.raises(ValueError, match="groups=3 must divide"):
        dgm.MaskedConv2d(4, 6, 3, groups=3, backend="reference")
    with pytest.raises(ValueError, match="positive"):
        dgm.MaskedLinear(0, 4, backend="reference")
    with pytest.raises(ValueError, match="s_max"):
        dgm.MaskedLinear(3, 4, s_max=0.5, backend="reference")


def test_rejects_bad_growth_and_input_reservation():
    layer = dgm.MaskedLinear(3, 4, mask="activation", backend="reference")
    with pytest.raises(ValueError, match="out_extra must be a non-negative int"):
        layer.expand(-1, 0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        layer.set_input_reserved(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="activation"):
        dgm.MaskedLinear(3, 4, backend="reference").set_input_reserved(None)
    with pytest.raises(ValueError, match="grouped"):
        dgm.MaskedConv2d(4, 4, 3, groups=2, backend="reference").expand(2, 0)


def test_grouped_conv_weight_mask_equals_plain_conv():
    torch.manual_seed(8)
    layer = dgm.MaskedConv2d(4, 6, 3, padding=1, groups=2, backend="reference", dtype=DT)
    torch.manual_seed(8)
    twin = nn.Conv2d(4, 6, 3, padding=1, groups=2, dtype=DT)
    _randomise_logits(layer, 9)
    layer.consolidate()
    x = torch.randn(2, 4, 5, 5, dtype=DT)
    m = bits.unpack(layer.task_bits(0), layer.weight.shape).to(DT)
    torch.testing.assert_close(layer(x, task=0), F.conv2d(x, twin.weight * m, twin.bias * layer.reserved_bias,
                                                          padding=1, groups=2), rtol=1e-12, atol=1e-12)


# -- the layer API as torch.nn's: sizes on load, atomic failures, strict arguments -------------------

def _state(layer):
    """Everything a failed call must leave as it was: the state dict (tensors cloned, extra state
    copied), the parameter objects an optimiser holds, the version."""
    state = {k: v.clone() if isinstance(v, torch.Tensor) else dict(v) for k, v in layer.state_dict().items()}
    return state, [id(p) for p in layer.parameters()], layer.version


def _assert_same_state(layer, before):
    state, params, version = _state(layer)
    assert state.keys() == before[0].keys()
    for key, value in state.items():
        same = torch.equal(value, before[0][key]) if isinstance(value, torch.Tensor) else value == before[0][key]
        assert same, key
    assert params == before[1] and version == before[2]


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_load_of_other_sizes_raises_unless_asked_to_resize(spec, kind):
    grown, _ = _train_three_widths(spec, kind)
    fresh = spec.layer(kind)
    before = _state(fresh)
    with pytest.raises(RuntimeError, match=r"size mismatch for weight(.|\n)*resize=True"):
        fresh.load_state_dict(grown.state_dict())
    _assert_same_state(fresh, before)
    model = nn.Sequential(spec.layer(kind))
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.weight"):
        model.load_state_dict(nn.Sequential(grown).state_dict())
    with dgm.layers.resizing(model), dgm.layers.resizing(model):  # blocks nest
        model.load_state_dict(nn.Sequential(grown).state_dict())
    assert model[0].sizes() == grown.sizes() and not model[0]._resize_on_load
    x = spec.x(2, grown.in_units)
    assert torch.equal(model[0](x), grown(x))


@pytest.mark.parametrize("kind", KINDS)
def test_load_of_the_same_sizes_with_more_tasks_needs_no_resize(kind):
    layer = dgm.MaskedLinear(5, 7, mask=kind, backend="reference", dtype=DT)
    _randomise_logits(layer, 1)
    layer.consolidate()
    fresh = dgm.MaskedLinear(5, 7, mask=kind, backend="reference", dtype=DT)
    params = list(fresh.parameters())
    fresh.load_state_dict(layer.state_dict())
    assert fresh.task == 1 and all(p is q for p, q in zip(fresh.parameters(), params))
    x = torch.randn(3, 5, dtype=DT)
    assert torch.equal(fresh(x, task=0), layer(x, task=0))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_failed_calls_leave_the_layer_as_it_was(spec, kind):
    layer, _ = _train_three_widths(spec, kind)
    other = spec.layer(kind).state_dict()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    calls = {
        "expand(out_extra=2.5)": (TypeError, "out_extra must be a non-negative int",
                                  lambda: layer.expand(out_extra=2.5)),
        "expand(True)": (TypeError, "out_extra", lambda: layer.expand(True, optimizer=opt)),
        "expand(in_extra=-1)": (ValueError, "in_extra must be a non-negative int", lambda: layer.expand(1, -1)),
        "expand(optimizer=...)": (TypeError, "optimizer must be", lambda: layer.expand(1, 1, optimizer="adam")),
        "s = nan": (ValueError, "s must be a finite positive number", lambda: layer.set_sharpness(float("nan"))),
        "s = -1": (ValueError, "s must be a finite positive number", lambda: layer.set_sharpness(-1.0)),
        "s = 0": (ValueError, "s must be a finite positive number", lambda: layer.set_sharpness(0)),
        "s = inf": (ValueError, "s must be a finite positive number", lambda: layer.set_sharpness(float("inf"))),
        "s = True": (TypeError, "s must be a finite positive number", lambda: layer.set_sharpness(True)),
        "defer_unit_mask = 1": (TypeError, "defer_unit_mask must be a bool",
                                lambda: setattr(layer, "defer_unit_mask", 1)),
        "load of other sizes": (RuntimeError, "size mismatch", lambda: layer.load_state_dict(other)),
        "bad extra state": (ValueError, "out_units must be a positive int",
                            lambda: layer.set_extra_state({"task": 2, "in_units": 4, "out_units": 0, "s": 1.0})),
    }
    if kind == "activation":
        calls["set_input_reserved(ints)"] = (ValueError, "bool tensor of shape",
                                             lambda: layer.set_input_reserved(torch.ones(layer.in_units)))
    before = _state(layer)
    for error, message, call in calls.values():
        with pytest.raises(error, match=message):
            call()
        _assert_same_state(layer, before)
    with torch.no_grad():
        for p in layer.logits():
            p.zero_()
    before = _state(layer)
    with pytest.raises(ValueError, match="nothing was learned for task 2"):
        layer.consolidate()
    _assert_same_state(layer, before)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_task_ids_are_ints_or_integer_tensors(spec, kind):
    layer, _ = _train_three_widths(spec, kind)
    x = spec.x(3, layer.in_units)
    for task in (True, 1.0, "1", torch.tensor(1)):
        with pytest.raises((TypeError, ValueError), match="task"):
            layer(x, task=task)
    for call in (lambda: layer.sizes(True), lambda: layer.active_weight(1.0), lambda: layer.task_bits(False)):
        with pytest.raises(TypeError, match="must be"):
            call()
    if kind == "activation":
        with pytest.raises(TypeError, match="task must be"):
            layer.unit_mask(True)
        rows = torch.tensor([1, 0])
        assert torch.equal(layer.unit_mask(rows.to(torch.int16)), layer.unit_mask(rows))
    rows = torch.tensor([1, 0, 1])
    x = _rows_input(spec, layer, rows, kind, seed=3)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(layer(x, task=rows.to(dtype)), layer(x, task=rows))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_as_torch_nn(spec, kind):
    layer, _ = _train_three_widths(spec, kind)
    layer.set_sharpness(2.0)
    for task in (None, 1):
        x = spec.x(2, layer.sizes(task)[1], seed=4)
        y = layer(x[0], task=task)
        assert y.shape == layer(x, task=task).shape[1:]
        torch.testing.assert_close(y, layer(x[:1], task=task)[0], rtol=1e-12, atol=1e-12)
    bad = spec.x(2, layer.in_units)[None] if spec.name != "linear" else torch.zeros((), dtype=DT)
    with pytest.raises(ValueError, match="unbatched"):
        layer(bad)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("kind", KINDS)
def test_empty_batches_in_every_mode_on_every_backend(spec, kind, cpu_backend):
    """Forward and backward of an empty batch: the task being learned, an earlier task, per-row."""
    dtype = torch.float32 if cpu_backend == "triton" else DT
    layer = spec.masked(*spec.args, **spec.kwargs, mask=kind, backend=cpu_backend, dtype=dtype)
    _randomise_logits(layer, 1)
    layer.consolidate()
    layer.expand(1, 1)
    _randomise_logits(layer, 2)
    for task in (None, 0, torch.zeros(0, dtype=torch.long)):
        in_units = layer.sizes(task if isinstance(task, int) else None)[1]
        x = spec.x(0, in_units).to(dtype).requires_grad_()
        y = layer(x, task=task)
        one = torch.zeros(1, dtype=torch.long) if isinstance(task, torch.Tensor) else task
        full = layer(spec.x(1, in_units).to(dtype), task=one)
        assert y.shape == (0,) + full.shape[1:]
        y.sum().backward()
        assert x.grad.shape == x.shape
