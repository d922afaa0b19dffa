"""Dynamic expansion: the growth rule, geometric storage, and growth that never changes what
earlier tasks compute or what the optimiser remembers about old parameters."""

import math

import pytest
import torch
from torch import nn

import dgm
from dgm.expansion import grown_capacity, regrow_parameter, weight_growth
from dgm.optim import ReservedGuard

DT = torch.float64
KINDS = ["weight", "activation"]
LAYERS = {
    "linear": (lambda kind: dgm.MaskedLinear(5, 4, mask=kind, backend="reference", dtype=DT), ()),
    "conv2d": (lambda kind: dgm.MaskedConv2d(3, 4, 3, padding=1, mask=kind, backend="reference", dtype=DT),
               (6, 5)),
    "conv_transpose2d": (lambda kind: dgm.MaskedConvTranspose2d(3, 4, 4, 2, 1, mask=kind, backend="reference",
                                                                dtype=DT), (3, 4)),
}


def _x(name, batch, in_units, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, in_units) + LAYERS[name][1], generator=g, dtype=DT)


def _randomise_logits(layer, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.logits():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT))


def test_weight_growth_hand_example():
    # layer 0: in 10, out 4, 1x1; 7 new reserved weights; nothing gained from below:
    #          d0 = ceil(7 / (10 * 1)) = 1
    # layer 1: in 4 + 1 = 5, out 6, 3x3; the new input unit brought 1 * 6 * 9 = 54 >= 50 weights:
    #          d1 = max(0, ceil((50 - 54) / (5 * 9))) = 0
    # layer 2: in 6 + 0, out 3, 4x4; 100 new reserved: d2 = ceil(100 / (6 * 16)) = ceil(1.04) = 2
    assert weight_growth([7, 50, 100], [10, 4, 6], [4, 6, 3], [1, 9, 16]) == [1, 0, 2]
    # Exactly filled: 96 = 6 * 16 needs one unit, not two; nothing reserved needs none.
    assert weight_growth([0, 0, 96], [10, 4, 6], [4, 6, 3], [1, 9, 16]) == [0, 0, 1]
    # Gained capacity from below short by one weight: layer 1 needs ceil(1 / 45) = 1 more unit.
    assert weight_growth([10, 64, 0], [10, 4, 6], [4, 6, 3], [1, 9, 16]) == [1, 1, 0]


def test_weight_growth_rejects_ragged_lists():
    with pytest.raises(ValueError, match="same length"):
        weight_growth([1, 2], [3], [4, 5], [1, 1])


def test_grown_capacity_at_least_doubles_each_short_dimension():
    assert grown_capacity((4, 3, 3, 3), (5, 3, 3, 3)) == (8, 3, 3, 3)
    assert grown_capacity((4, 3), (12, 4)) == (12, 6)
    assert grown_capacity((8, 6), (5, 6)) == (8, 6)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
def test_storage_grows_geometrically(name, kind):
    layer = LAYERS[name][0](kind)
    out_dim = layer._OUT_DIM
    reallocations, ptr = 0, layer.weight.data_ptr()
    widths = []
    for step in range(8):
        out_before = layer.weight.shape[out_dim]
        layer.expand(out_extra=1, in_extra=1 if step % 2 else 0)
        if layer.weight.data_ptr() != ptr:
            reallocations += 1
            ptr = layer.weight.data_ptr()
        else:
            assert layer.weight.shape[out_dim] == out_before
        widths.append(layer.weight.shape[out_dim])
        assert layer.active_weight().shape[out_dim] == 4 + step + 1
    # out: 4 -> 5 needs 8, 9 needs 16 (steps 0, 4). in grows at steps 1, 3, 5, 7: linear 5 -> 6 needs 10,
    # which holds 9 (one reallocation); conv 3 -> 4 needs 6, 7 needs 12 (steps 1, 7).
    assert widths == [8, 8, 8, 8, 16, 16, 16, 16]
    in_capacity, expected_reallocations = (10, 3) if name == "linear" else (12, 4)
    assert layer.weight.shape[1 - out_dim] == in_capacity
    assert reallocations == expected_reallocations
    if kind == "weight":
        assert layer.mask_logits.shape == layer.weight.shape
    assert layer.bias.shape == (16,)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
def test_expand_keeps_old_values_and_initialises_new_ones(name, kind):
    layer = LAYERS[name][0](kind)
    _randomise_logits(layer, 1)
    layer.consolidate()
    old_w = layer.active_weight().detach().clone()
    old_b = layer.bias.detach().clone()
    layer.expand(out_extra=3, in_extra=2)
    w = layer.active_weight()
    assert torch.equal(w[: old_w.shape[0], : old_w.shape[1]], old_w)
    assert torch.equal(layer.bias[:4], old_b)
    new = torch.ones(w.shape, dtype=torch.bool)
    new[: old_w.shape[0], : old_w.shape[1]] = False
    fan_in = nn.init._calculate_fan_in_and_fan_out(w)[0]
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias share this bound
    assert torch.all(w[new] != 0) and torch.all(w[new].abs() <= bound)
    assert torch.all(layer.bias[4:7] != 0) and torch.all(layer.bias[4:7].abs() <= bound)
    assert all(torch.all(p == 0) for p in layer.logits())


def _train(model, opt, guard, steps, name, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        layer = model[0]
        x = torch.randn((6, layer.in_units) + LAYERS[name][1], generator=g, dtype=DT)
        loss = (layer(x) ** 2).mean() + dgm.masks.sparsity_regularizer([layer.mask_usage()])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
def test_growth_keeps_earlier_tasks_bit_identical(name, kind):
    torch.manual_seed(0)
    layer = LAYERS[name][0](kind)
    model = nn.ModuleList([layer])
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-2)
    guard = ReservedGuard(opt, model)
    recorded = []  # (task, input, output)
    growth = [(3, 2), (1, 1), (6, 2)]  # reallocates, fits in the doubled capacity, reallocates again
    for task, (out_extra, in_extra) in enumerate(growth):
        layer.set_sharpness(1.0)
        _train(model, opt, guard, 4, name, seed=10 + task)
        layer.consolidate()
        guard.refresh()
        x = _x(name, 3, layer.sizes(task)[1], seed=20 + task)
        recorded.append((task, x, layer(x, task=task)))
        ptr = layer.weight.data_ptr()
        before = layer.weight.detach().clone()
        layer.expand(out_extra, in_extra, optimizer=opt)
        guard.refresh()
        if task == 1:
            assert layer.weight.data_ptr() == ptr  # grew inside its capacity
        else:
            assert layer.weight.data_ptr() != ptr
        for t, x, y in recorded:
            assert torch.equal(layer(x, task=t), y), f"task {t} changed by growth after task {task}"
        _train(model, opt, guard, 3, name, seed=30 + task)
        for t, x, y in recorded:
            assert torch.equal(layer(x, task=t), y), f"task {t} changed by training after task {task}"
        region = tuple(slice(0, n) for n in before.shape)
        assert not torch.equal(layer.weight.detach()[region], before)  # training did move free weights


@pytest.mark.parametrize("kind", KINDS)
def test_reallocating_expand_moves_optimizer_state(kind):
    torch.manual_seed(1)
    layer = dgm.MaskedConvTranspose2d(3, 4, 4, 2, 1, mask=kind, backend="reference", dtype=DT)
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    for seed in range(3):
        x = _x("conv_transpose2d", 2, 3, seed)
        opt.zero_grad()
        ((layer(x) ** 2).mean() + layer.mask_usage()[0]).backward()
        opt.step()
    names = [n for n, _ in layer.named_parameters()]
    old = {n: p for n, p in layer.named_parameters()}
    state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in old.items()}
    layer.expand(out_extra=2, in_extra=1, optimizer=opt)
    new = dict(layer.named_parameters())
    params_in_opt = [p for group in opt.param_groups for p in group["params"]]
    for n in names:
        assert new[n] is not old[n] and new[n].shape != old[n].shape
        assert any(p is new[n] for p in params_in_opt) and not any(p is old[n] for p in params_in_opt)
        assert old[n] not in opt.state
        moved = opt.state[new[n]]
        region = tuple(slice(0, s) for s in old[n].shape)
        for k, v in state[n].items():
            if k == "step":
                assert torch.equal(moved[k], v)
                continue
            assert torch.equal(moved[k][region], v), (n, k)
            rest = moved[k].clone()
            rest[region] = 0
            assert torch.all(rest == 0), (n, k)
    # The optimiser keeps working on the regrown parameters.
    opt.zero_grad()
    (layer(_x("conv_transpose2d", 2, 4, 9)) ** 2).mean().backward()
    opt.step()


def test_regrow_parameter_without_state_or_optimizer():
    module = nn.Linear(3, 2)
    old = module.weight.detach().clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    new = regrow_parameter(module, "weight", (5, 4), opt)  # no state yet: nothing to move
    assert module.weight is new and new.shape == (5, 4)
    assert torch.equal(new[:2, :3], old) and torch.all(new[2:] == 0) and torch.all(new[:, 3:] == 0)
    assert new in opt.state or len(opt.state) == 0
    assert any(p is new for p in opt.param_groups[0]["params"])
    bias = regrow_parameter(module, "bias", (4,))
    assert bias.shape == (4,) and module.bias is bias


@pytest.mark.parametrize("kind", KINDS)
def test_expand_keeps_old_mask_logits(kind):
    layer = LAYERS["conv2d"][0](kind)
    _randomise_logits(layer, 2)
    before = [p.detach().clone() for p in layer.logits()]
    layer.expand(out_extra=2, in_extra=1)  # reallocates
    layer.expand(out_extra=1)  # fits
    for p, old in zip(layer.logits(), before):
        region = tuple(slice(0, n) for n in old.shape)
        assert torch.equal(p.detach()[region], old)
        rest = p.detach().clone()
        rest[region] = 0
        assert torch.all(rest == 0)


def _corner(shape, corner):
    """Bool mask of ``shape``, true on its leading ``corner``."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(0, n) for n in corner)] = True
    return mask


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
def test_growth_within_capacity_writes_only_the_new_entries(name, kind):
    torch.manual_seed(3)
    layer = LAYERS[name][0](kind)
    _randomise_logits(layer, 4)
    layer.consolidate()
    layer.expand(out_extra=1, in_extra=1)  # the storage doubles: room to grow
    if kind == "activation":
        layer.set_input_reserved(torch.arange(layer.in_units) % 2 == 0)
    old_shape, old_out = layer.active_weight().shape, layer.out_units
    params = dict(layer.named_parameters())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the current task's logits, and a sentinel in the spare storage
        for p in params.values():
            active = _corner(p.shape, old_shape if p.dim() > 1 else (old_out,))
            p.copy_(torch.where(active, torch.randn(p.shape, generator=g, dtype=DT), 7.0))
    before = {n: p.detach().clone() for n, p in params.items()}
    pointers = {n: p.data_ptr() for n, p in params.items()}
    buffers = dict(layer.policy.named_buffers())
    buffers_before = {n: b.clone() for n, b in buffers.items()}
    layer.expand(out_extra=2, in_extra=1)
    new_shape = layer.active_weight().shape
    for n, p in layer.named_parameters():  # the same storage...
        assert p is params[n] and p.data_ptr() == pointers[n], n
    for n, b in layer.policy.named_buffers():  # ... and the reserved masks, neither repacked nor padded
        assert b is buffers[n] and torch.equal(b, buffers_before[n]), n
    for n, p in params.items():
        new = (_corner(p.shape, new_shape) & ~_corner(p.shape, old_shape) if p.dim() > 1
               else _corner(p.shape, (layer.out_units,)) & ~_corner(p.shape, (old_out,)))
        assert torch.equal(p.detach()[~new], before[n][~new]), f"{n} written outside its new entries"
        if n.startswith("policy."):  # mask logits
            assert torch.all(p[new] == 0), n
        else:
            assert torch.all((p[new] != 7.0) & (p[new] != 0)), n


@pytest.mark.parametrize("kind", KINDS)
def test_default_init_of_new_entries_uses_the_whole_weights_fan_in(kind):
    torch.manual_seed(5)
    layer = dgm.MaskedLinear(4, 3, mask=kind, backend="reference", dtype=DT)
    layer.expand(out_extra=200, in_extra=396)  # fan-in 400: kaiming_uniform(a=sqrt(5)) bound 1/20
    w = layer.active_weight()
    new = w[3:]
    assert new.abs().max() <= 1 / 20 and new.abs().max() > 0.9 / 20
    assert abs(new.mean().item()) < 1e-3 and abs(new.var().item() - (1 / 20) ** 2 / 3) < 1e-5
