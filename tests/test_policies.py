"""The mask policies on their own, without a layer: what each passes to the op, consolidation into
bits and the reserved union, usage, reserved masks, growth within and beyond the capacity, and
the conversion of a version-1 layer's state."""

import math

import pytest
import torch

from dgm import bits
from dgm.expansion import padded
from dgm.layers import MaskPolicy, UnitMask, WeightMask
from dgm.layers.policy import per_row
from dgm.layers.weight_mask import packed_shape

DT = torch.float64
CAPACITY = (6, 5, 3)          # a conv-like storage: 6 rows x 5 columns x a kernel of 3
ACTIVE = (4, 3, 3)


def op_recorder():
    """An op that returns its arguments instead of computing."""
    def op(x, weight, bias, **masks):
        return {"x": x, "weight": weight, "bias": bias, **masks}
    return op


def _logits(policy, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.logits():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT))


def _consolidated(p, shapes):
    """``p`` with task ``k`` consolidated at ``shapes[k]``, each from random logits."""
    for task, shape in enumerate(shapes):
        _logits(p, task)
        p.consolidate(task, shape, bits)
    return p


def _second_task(p):
    """``p`` with task 0 consolidated at ``ACTIVE`` and random logits for task 1."""
    _logits(p, 0)
    p.consolidate(0, ACTIVE, bits)
    _logits(p, 1)
    return p


def weight_mask(bias=True):
    return WeightMask(CAPACITY, out_dim=0, unit_dim=1, bias=bias, dtype=DT)


def unit_mask(out_dim=0):
    return UnitMask(CAPACITY, out_dim=out_dim, unit_dim=1, bias=True, dtype=DT)


def test_policy_base_is_abstract_and_kinds_are_named():
    with pytest.raises(TypeError):
        MaskPolicy(0, -1)
    assert (WeightMask.kind, UnitMask.kind) == ("weight", "activation")


def test_per_row_broadcasts_on_the_unit_dim():
    t = torch.arange(6.0).view(2, 3)
    assert per_row(t, torch.zeros(2, 5, 3), -1).shape == (2, 1, 3)
    assert per_row(t, torch.zeros(2, 3, 4, 4), 1).shape == (2, 3, 1, 1)


# -- WeightMask ---------------------------------------------------------------------------------

def test_weight_mask_starts_undecided_at_the_capacity():
    p = weight_mask()
    assert p.mask_logits.shape == CAPACITY and p.bias_logits.shape == (6,)
    assert all(torch.all(q == 0) for q in p.logits())
    assert p.reserved_bits(ACTIVE) is None and p.reserved_bias(4) is None and p.reserved_count(bits) == 0
    assert p.entries(ACTIVE) == 4 * 3 * 3 + 4 and weight_mask(bias=False).entries(ACTIVE) == 36
    with pytest.raises(ValueError, match="activation"):
        p.unit_mask(None, 1.0, ACTIVE, [], bits)
    with pytest.raises(ValueError, match="activation"):
        p.set_input_reserved(None, 3, 5)


def test_weight_mask_consolidates_into_bits_and_the_reserved_union():
    p = weight_mask()
    masks = []
    for task in range(2):
        _logits(p, task)
        m = p.mask_logits[:4, :3].detach() > 0
        b = p.bias_logits[:4].detach() > 0
        p.consolidate(task, ACTIVE, bits)
        masks.append((m, b))
        assert torch.equal(p.task_bits(task), bits.pack(m))
        assert torch.equal(p.mask_bits_0 if task == 0 else p.mask_bits_1, bits.pack(m))
        assert torch.equal(getattr(p, f"bias_bits_{task}"), bits.pack(b))
        assert all(torch.all(q == 0) for q in p.logits())
    union = masks[0][0] | masks[1][0]
    bias_union = masks[0][1] | masks[1][1]
    assert p.weight_reserved.shape == packed_shape(CAPACITY)  # packed at the capacity
    assert torch.equal(p.reserved_bits(ACTIVE), bits.pack(union))
    assert torch.equal(bits.unpack(p.weight_reserved, CAPACITY), padded(union, CAPACITY))
    assert torch.equal(p.reserved_bias(4), bias_union) and not p.bias_reserved[4:].any()
    assert p.reserved_count(bits) == int(union.sum() + bias_union.sum())
    masks = p.reserved_masks(ACTIVE, CAPACITY, bits)
    assert torch.equal(masks["weight"], padded(union, CAPACITY))
    assert torch.equal(masks["bias"], padded(bias_union, (6,)))


def test_weight_mask_op_arguments():
    """The op gets the bias with its mask and freeze: the layer masks nothing itself."""
    p = _second_task(weight_mask())
    op, x = op_recorder(), torch.zeros(1)
    weight = torch.randn(CAPACITY, dtype=DT)[:4, :3].requires_grad_()
    bias = torch.randn(4, dtype=DT, requires_grad=True)
    got = p.forward_current(op, x, weight, bias, 2.5)
    assert got["logits"].shape == ACTIVE and got["logits"].data_ptr() == p.mask_logits.data_ptr()
    assert got["s"] == 2.5 and torch.equal(got["frozen_bits"], p.reserved_bits(ACTIVE))
    assert got["bias"] is bias and got["bias_logits"].data_ptr() == p.bias_logits.data_ptr()
    assert got["bias_logits"].shape == (4,) and torch.equal(got["frozen_bias_bits"], bits.pack(p.reserved_bias(4)))
    assert p.forward_current(op, x, weight, bias, 2.5)["frozen_bias_bits"] is not None
    assert p.forward_current(op, x, weight, None, 2.5).keys() == {"x", "weight", "bias", "logits", "s", "frozen_bits"}

    got = p.forward_task(op, x, 0, weight.detach(), bias.detach(), bits)
    assert torch.equal(got["bits"], p.task_bits(0)) and got["bias_bits"] is p.bias_bits_0
    assert p.forward_task(op, x, 0, weight.detach(), None, bits)["bias_bits"] is None


def test_weight_mask_packs_the_reserved_bias_once_per_change():
    p = _second_task(weight_mask())
    op, x, weight = op_recorder(), torch.zeros(1), torch.zeros(ACTIVE, dtype=DT)
    first = p.forward_current(op, x, weight, torch.zeros(4, dtype=DT), 1.0)["frozen_bias_bits"]
    again = p.forward_current(op, x, weight, torch.zeros(4, dtype=DT), 1.0)["frozen_bias_bits"]
    assert again.data_ptr() == first.data_ptr()  # cached, not packed per step
    wider = p.forward_current(op, x, weight, torch.zeros(5, dtype=DT), 1.0)["frozen_bias_bits"]
    assert wider.shape == (5, 1) and wider.data_ptr() == first.data_ptr()  # the active rows of one packing
    _logits(p, 2)
    p.consolidate(1, ACTIVE, bits)
    p.changed()
    after = p.forward_current(op, x, weight, torch.zeros(4, dtype=DT), 1.0)["frozen_bias_bits"]
    assert torch.equal(after, bits.pack(p.reserved_bias(4)))


def test_weight_mask_rows_widen_old_bits_by_padding_bytes():
    shapes = [(3, 2, 3), ACTIVE]
    p = _consolidated(weight_mask(bias=False), shapes)
    calls = []

    def op(x, weight, bias, **masks):
        calls.append(masks)
        return torch.zeros(x.shape[0], 4, 1, 1, dtype=DT)

    row_task = torch.tensor([1, 0, 1])
    p.forward_rows(op, torch.zeros(3, 3, 1, 1, dtype=DT), row_task, torch.zeros(ACTIVE, dtype=DT), None, shapes, bits)
    stacked = calls[0]["bits"]
    for task, shape in enumerate(shapes):  # the byte padding is the bit padding
        assert torch.equal(stacked[task], bits.pack(padded(bits.unpack(p.task_bits(task), shape), ACTIVE)))
    assert calls[0]["row_task"] is row_task and calls[0]["bias_bits"] is None


def test_weight_mask_rows_pass_each_tasks_bias_bits_at_the_current_width():
    shapes = [(3, 2, 3), ACTIVE]
    p = _consolidated(weight_mask(), shapes)
    got = p.forward_rows(op_recorder(), torch.zeros(2, 3, 1, 1, dtype=DT), torch.tensor([0, 1]),
                         torch.zeros(ACTIVE, dtype=DT), torch.zeros(4, dtype=DT), shapes, bits)
    assert got["bias_bits"].shape == (2, 4, 1)
    assert torch.equal(got["bias_bits"][0], padded(p.bias_bits_0, (4, 1))) and not got["bias_bits"][0, 3:].any()
    assert torch.equal(got["bias_bits"][1], p.bias_bits_1)


def test_weight_mask_usage_is_the_free_share_of_the_soft_mask():
    p = _second_task(weight_mask())
    m = torch.sigmoid(0.7 * p.mask_logits[:4, :3])
    mb = torch.sigmoid(0.7 * p.bias_logits[:4])
    free = ~bits.unpack(p.reserved_bits(ACTIVE), ACTIVE)
    expected = (m * free).sum() + (mb * ~p.reserved_bias(4)).sum()
    torch.testing.assert_close(p.usage(ACTIVE, 0.7, bits), expected, rtol=1e-12, atol=0)


def test_weight_mask_growth_within_capacity_writes_only_new_logits():
    p = _second_task(weight_mask())
    logits, reserved = p.mask_logits, p.weight_reserved
    before, reserved_before, bias_before = logits.detach().clone(), reserved.clone(), p.bias_logits.detach().clone()
    new = (5, 5, 3)
    p.grow(ACTIVE, new, CAPACITY, None)
    assert p.mask_logits is logits and p.weight_reserved is reserved  # no reallocation
    assert torch.equal(reserved, reserved_before)  # no repacking
    fresh = torch.zeros(CAPACITY, dtype=torch.bool)
    fresh[:5, :5] = True
    fresh[:4, :3] = False
    assert torch.all(logits[fresh] == 0)
    assert torch.equal(logits[~fresh], before[~fresh])
    assert p.bias_logits[4] == 0 and torch.equal(p.bias_logits[:4], bias_before[:4])
    assert p.bias_logits[5] == bias_before[5]  # storage outside the new entries is not written


def test_weight_mask_growth_beyond_capacity_pads_bits_and_moves_optimizer_state():
    p = weight_mask()
    _logits(p, 0)
    union = p.mask_logits[:4, :3].detach() > 0
    p.consolidate(0, ACTIVE, bits)
    opt = torch.optim.Adam(p.logits(), lr=0.1)
    _logits(p, 1)
    p.mask_logits.grad = torch.ones_like(p.mask_logits)
    p.bias_logits.grad = torch.ones_like(p.bias_logits)
    opt.step()
    capacity = (12, 10, 3)
    p.grow(ACTIVE, (7, 6, 3), capacity, opt)
    assert p.mask_logits.shape == capacity and p.bias_logits.shape == (12,)
    assert p.weight_reserved.shape == packed_shape(capacity)
    assert torch.equal(p.reserved_bits(ACTIVE), bits.pack(union))
    assert torch.equal(bits.unpack(p.weight_reserved, capacity), padded(union, capacity))
    assert all(opt.state[q]["exp_avg"].shape == q.shape for q in p.logits())


def test_weight_mask_upgrades_a_version_1_state():
    p = weight_mask()
    _logits(p, 0)
    p.consolidate(0, ACTIVE, bits)
    old = {"l.weight": torch.zeros(CAPACITY), "l.mask_logits": p.mask_logits.detach(),
           "l.bias_logits": p.bias_logits.detach(), "l.mask_bits_0": p.mask_bits_0, "l.bias_bits_0": p.bias_bits_0,
           "l.reserved_bits": p.reserved_bits(ACTIVE).contiguous(), "l.reserved_bias": p.reserved_bias(4).clone()}
    fresh = weight_mask()
    fresh.upgrade_state(old, "l.", "l.policy.", CAPACITY)
    assert set(old) == {"l.weight", "l.policy.mask_logits", "l.policy.bias_logits", "l.policy.mask_bits_0",
                        "l.policy.bias_bits_0", "l.policy.weight_reserved", "l.policy.bias_reserved"}
    assert torch.equal(old["l.policy.weight_reserved"], p.weight_reserved)
    assert torch.equal(old["l.policy.bias_reserved"], p.bias_reserved)
    fresh.load_state_dict({k[len("l.policy."):]: v for k, v in old.items() if k.startswith("l.policy.")})
    assert fresh.reserved_count(bits) == p.reserved_count(bits)
    assert torch.equal(fresh.task_bits(0), p.task_bits(0))


# -- UnitMask -----------------------------------------------------------------------------------

@pytest.mark.parametrize("out_dim", [0, 1])
def test_unit_mask_consolidates_reserves_and_freezes_like_hat(out_dim):
    p = unit_mask(out_dim)
    cap_out, cap_in = CAPACITY[out_dim], CAPACITY[1 - out_dim]
    assert p.unit_logits.shape == (cap_out,) and p.entries(ACTIVE) == ACTIVE[out_dim]
    out_units, in_units = ACTIVE[out_dim], ACTIVE[1 - out_dim]
    _logits(p, 0)
    u = p.unit_logits[:out_units].detach() > 0
    p.consolidate(0, ACTIVE, bits)
    assert torch.equal(p.task_bits(0), bits.pack(u)) and torch.all(p.unit_logits == 0)
    assert p.out_reserved.shape == (cap_out,) and torch.equal(p.reserved_units(out_units), u)
    assert p.reserved_count(bits) == int(u.sum())
    reserved_in = torch.arange(in_units) % 2 == 0
    with pytest.raises(ValueError, match=rf"shape \({in_units},\)"):
        p.set_input_reserved(torch.ones(in_units + 1, dtype=torch.bool), in_units, cap_in)
    p.set_input_reserved(reserved_in, in_units, cap_in)
    assert p.in_reserved.shape == (cap_in,) and torch.equal(p.reserved_in_units(in_units), reserved_in)
    masks = p.reserved_masks(ACTIVE, CAPACITY, bits)
    shape = [1] * 3
    shape[out_dim] = -1
    rule = u.view(shape) & reserved_in.view([-1 if d == 1 - out_dim else 1 for d in range(3)])
    assert torch.equal(masks["weight"], padded(rule.expand(ACTIVE), CAPACITY))
    assert torch.equal(masks["bias"], padded(u, (cap_out,)))
    p.set_input_reserved(None, in_units, cap_in)
    assert p.reserved_in_units(in_units) is None


def test_unit_mask_op_arguments_and_deferral():
    p = _second_task(unit_mask())
    op, x = op_recorder(), torch.zeros(1)
    weight, bias = torch.zeros(ACTIVE, dtype=DT), torch.randn(4, dtype=DT, requires_grad=True)
    got = p.forward_current(op, x, weight, bias, 1.5)
    torch.testing.assert_close(got["unit_scale"], torch.sigmoid(1.5 * p.unit_logits[:4]), rtol=0, atol=0)
    assert torch.equal(got["frozen_units"][0], p.reserved_units(4)) and got["frozen_units"][1] is None
    assert got["bias"] is bias  # the op freezes the bias of the reserved units (frozen_units[0])
    got = p.forward_task(op, x, 0, weight, bias.detach(), bits)
    assert torch.equal(got["unit_scale"], p.reserved_units(4).to(DT))
    p.defer_unit_mask = True  # the owner applies the mask after its norm
    assert p.forward_current(op, x, weight, bias, 1.5)["unit_scale"] is None
    assert p.forward_task(op, x, 0, weight, bias, bits)["unit_scale"] is None


def test_unit_mask_of_each_form():
    shapes = [(3, 2, 3), ACTIVE]
    p = _consolidated(unit_mask(), shapes)
    _logits(p, 2)
    current = (5, 4, 3)
    soft = p.unit_mask(None, 0.5, current, shapes, bits)
    torch.testing.assert_close(soft, torch.sigmoid(0.5 * p.unit_logits[:5]), rtol=0, atol=0)
    first = p.unit_mask(0, 0.5, current, shapes, bits)
    assert first.shape == (3,) and torch.equal(first, bits.unpack(p.task_bits(0), (3,)).to(DT))
    rows = p.unit_mask(torch.tensor([1, 0]), 0.5, current, shapes, bits)
    assert rows.shape == (2, 5) and torch.equal(rows[1], padded(first, (5,))) and torch.all(rows[:, 4] == 0)
    calls = []

    def op(x, weight, bias, **masks):
        calls.append((x, masks))
        return x

    x = torch.ones(2, 4, 1, 1, dtype=DT)
    p.forward_rows(op, x, torch.tensor([1, 0]), torch.zeros(current, dtype=DT), None, shapes, bits)
    seen, masks = calls[0]
    assert torch.equal(seen[:, :, 0, 0], torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=DT))  # each task's inputs
    assert torch.equal(masks["unit_scale"], rows)


def test_unit_mask_growth_within_capacity_writes_only_new_entries():
    p = unit_mask()
    _logits(p, 0)
    p.consolidate(0, ACTIVE, bits)
    p.set_input_reserved(torch.tensor([True, False, True]), 3, 5)
    _logits(p, 1)
    logits, out_reserved, in_reserved = p.unit_logits, p.out_reserved, p.in_reserved
    before = [t.detach().clone() for t in (logits, out_reserved, in_reserved)]
    p.grow(ACTIVE, (5, 5, 3), CAPACITY, None)
    assert p.unit_logits is logits and p.out_reserved is out_reserved and p.in_reserved is in_reserved
    assert torch.equal(out_reserved, before[1]) and torch.equal(in_reserved, before[2])
    assert logits[4] == 0 and torch.equal(logits[:4], before[0][:4]) and logits[5] == before[0][5]
    p.grow((5, 5, 3), (7, 6, 3), (12, 10, 3), None)
    assert p.unit_logits.shape == (12,) and p.out_reserved.shape == (12,) and p.in_reserved.shape == (10,)
    assert torch.equal(p.reserved_units(4), before[1][:4]) and torch.equal(p.reserved_in_units(3), before[2][:3])


def test_unit_mask_upgrades_a_version_1_state():
    p = unit_mask()
    _logits(p, 0)
    p.consolidate(0, ACTIVE, bits)
    p.set_input_reserved(torch.tensor([True, False, True]), 3, 5)
    old = {"unit_logits": p.unit_logits.detach(), "mask_bits_0": p.mask_bits_0,
           "reserved_units": p.reserved_units(4).clone(), "reserved_in_units": p.reserved_in_units(3).clone(),
           "task_sizes": torch.zeros(1, 2, dtype=torch.long)}
    unit_mask().upgrade_state(old, "", "policy.", CAPACITY)
    assert set(old) == {"task_sizes", "policy.unit_logits", "policy.mask_bits_0", "policy.out_reserved",
                        "policy.in_reserved"}
    assert torch.equal(old["policy.out_reserved"], p.out_reserved)
    assert torch.equal(old["policy.in_reserved"], p.in_reserved)


def test_packed_corner_is_the_active_packing():
    """Why reserved bits live at the capacity: the active shape's packing is their leading corner."""
    g = torch.Generator().manual_seed(0)
    for shape, capacity in [((4, 3, 3), (6, 5, 3)), ((7, 13), (9, 29)), ((3, 1, 4, 4), (3, 8, 4, 4))]:
        m = torch.rand(shape, generator=g) < 0.5
        big = bits.pack(padded(m, capacity))
        rows, cols = packed_shape(shape)
        assert torch.equal(big[:rows, :cols], bits.pack(m))
        assert torch.equal(padded(bits.pack(m), packed_shape(capacity)), big)
        assert math.prod(big.shape) >= math.prod(packed_shape(shape))
