"""``ReservedGuard``: across tasks, consolidation and growth, reserved parameters and their optimiser
state stay bit-identical under optimisers with weight decay and momentum; with nothing reserved the
guard changes nothing."""

import copy

import pytest
import torch
from torch import nn

import dgm
from dgm.masks import sparsity_regularizer
from dgm.optim import ReservedGuard, reserved_masks

DT = torch.float64
OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.02, weight_decay=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.02, weight_decay=1e-2),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
}


class Net(nn.Module):
    """Three masked layers: linear -> conv-transpose -> conv, as a tiny generator."""

    def __init__(self, kind):
        super().__init__()
        kw = {"mask": kind, "backend": "reference", "dtype": DT}
        self.fc = dgm.MaskedLinear(6, 8, **kw)
        self.up = dgm.MaskedConvTranspose2d(2, 3, 4, 2, 1, **kw)
        self.out = dgm.MaskedConv2d(3, 2, 3, padding=1, **kw)
        self.layers = [self.fc, self.up, self.out]

    def forward(self, z):
        h = torch.relu(self.fc(z))
        h = h.reshape(z.shape[0], self.up.in_units, -1, 2)[:, :, :2, :2].contiguous()
        h = torch.relu(self.up(h))
        return self.out(h)

    def consolidate(self):
        for layer in self.layers:
            layer.consolidate()
        if self.fc.mask == "activation":  # HAT: a weight is frozen when both its units are reserved
            self.out.set_input_reserved(self.up.reserved_units)

    def grow(self, optimizer):
        # fc's outputs feed up's inputs as (channels, 2, 2) blocks: grow both by whole channels.
        self.fc.expand(out_extra=4, optimizer=optimizer)
        self.up.expand(out_extra=2, in_extra=1, optimizer=optimizer)
        self.out.expand(out_extra=0, in_extra=2, optimizer=optimizer)


def _randomise_logits(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            for p in layer.logits():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT))


def _train(net, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        z = torch.randn(5, net.fc.in_units, generator=g, dtype=DT)
        target = torch.randn(5, net.out.out_units, 4, 4, generator=g, dtype=DT)
        for layer in net.layers:
            layer.set_sharpness(2.0)
        loss = ((net(z) - target) ** 2).mean() + 0.1 * sparsity_regularizer(l.mask_usage() for l in net.layers)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _state_tensors(opt, p):
    return {k: v.detach().clone() for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v) and v.shape == p.shape}


def _snapshot(net, opt):
    snap = {}
    for li, layer in enumerate(net.layers):
        for name, mask in layer.reserved_masks().items():
            p = getattr(layer, name)
            active = torch.zeros_like(mask)
            if name == "weight":
                shape = layer.active_weight().shape
                active[: shape[0], : shape[1]] = True
            else:
                active[: layer.out_units] = True
            snap[(li, name)] = (mask.clone(), active, p.detach().clone(), _state_tensors(opt, p))
    return snap


def _corner(t, shape):
    return t[tuple(slice(0, n) for n in shape)]


@pytest.mark.parametrize("kind", ["weight", "activation"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_reserved_entries_and_their_state_stay_bit_identical(kind, opt_name):
    torch.manual_seed(0)
    net = Net(kind)
    opt = OPTIMIZERS[opt_name](net.parameters())
    guard = ReservedGuard(opt, net)
    _randomise_logits(net, 1)
    _train(net, opt, 4, seed=2)
    net.consolidate()
    guard.refresh()
    task0 = _snapshot(net, opt)
    assert sum(int(m.sum()) for m, *_ in task0.values()) > 0
    for task in (1, 2):
        net.grow(opt)
        guard.refresh()
        _randomise_logits(net, 10 + task)
        _train(net, opt, 4, seed=20 + task)
        net.consolidate()
        guard.refresh()
        for (li, name), (mask, active, value, state) in task0.items():
            layer = net.layers[li]
            p = getattr(layer, name)
            now = _corner(p.detach(), mask.shape)
            assert torch.equal(now[mask], value[mask]), f"task {task}: reserved {li}.{name} moved"
            assert (now[active & ~mask] != value[active & ~mask]).any(), f"free {li}.{name} never trained"
            now_state = _state_tensors(opt, p)
            assert state.keys() == now_state.keys() and state
            for k in state:
                assert torch.equal(_corner(now_state[k], mask.shape)[mask], state[k][mask]), (li, name, k)
    assert net.fc.task == 3


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_without_the_guard_reserved_entries_move(opt_name):
    """Zero gradients alone do not freeze: weight decay and momentum move reserved weights."""
    torch.manual_seed(3)
    net = Net("weight")
    opt = OPTIMIZERS[opt_name](net.parameters())
    guard = ReservedGuard(opt, net)
    _randomise_logits(net, 4)
    _train(net, opt, 3, seed=5)
    net.consolidate()
    guard.remove()
    masks = reserved_masks(net)
    before = {p: p.detach().clone() for p in masks}
    _train(net, opt, 2, seed=6)
    assert any((p.detach()[m] != before[p][m]).any() for p, m in masks.items())


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("consolidated", [False, True])
def test_guard_without_reserved_entries_changes_nothing(opt_name, consolidated):
    torch.manual_seed(7)
    net = Net("weight")
    if consolidated:  # a consolidated task whose mask took nothing: logits all <= 0
        with torch.no_grad():
            for layer in net.layers:
                for p in layer.logits():
                    p.fill_(-1.0)
        net.consolidate()
        assert reserved_masks(net) == {}
    twin = copy.deepcopy(net)
    opt, twin_opt = OPTIMIZERS[opt_name](net.parameters()), OPTIMIZERS[opt_name](twin.parameters())
    ReservedGuard(opt, net)
    for model in (net, twin):
        _randomise_logits(model, 8)
    _train(net, opt, 4, seed=9)
    _train(twin, twin_opt, 4, seed=9)
    for (n, p), (_, q) in zip(net.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), n
        a, b = _state_tensors(opt, p), _state_tensors(twin_opt, q)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), n


def test_fresh_optimizer_keeps_reserved_state_at_zero():
    """A new optimiser per task: the first step creates state; reserved entries get none."""
    torch.manual_seed(11)
    net = Net("weight")
    _randomise_logits(net, 12)
    net.consolidate()
    opt = OPTIMIZERS["adam"](net.parameters())
    ReservedGuard(opt, net)
    masks = reserved_masks(net)
    before = {p: p.detach().clone() for p in masks}
    _randomise_logits(net, 13)
    _train(net, opt, 1, seed=14)
    for p, m in masks.items():
        assert torch.equal(p.detach()[m], before[p][m])
        for v in _state_tensors(opt, p).values():
            assert torch.all(v[m] == 0) and (v[~m] != 0).any()


def test_reserved_masks_covers_masked_layers_with_reserved_entries_only():
    torch.manual_seed(15)
    net = Net("activation")
    assert reserved_masks(net) == {}
    _randomise_logits(net, 16)
    net.consolidate()
    masks = reserved_masks(net)
    expected = {getattr(layer, name) for layer in net.layers for name, m in layer.reserved_masks().items()
                if m.any()}
    assert set(masks) == expected and expected
    # HAT rule on the last layer: weight (i, j) of a conv (out dim 0) is reserved iff both units are.
    m = net.out.reserved_masks()["weight"]
    rule = net.out.reserved_units[:, None] & net.up.reserved_units[None, :]
    assert torch.equal(m, rule[:, :, None, None].expand(m.shape))
