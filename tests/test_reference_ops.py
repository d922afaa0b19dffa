"""The reference masked ops against masks formed by hand in float64 and plain ``torch.nn.functional``."""

import math

import pytest
import torch
import torch.nn.functional as F

from dgm import bits, ops
from dgm.ops import reference

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _sigmoid_by_hand(t):
    return 1.0 / (1.0 + torch.exp(-t))


# op name -> (x shape, weight shape, out channels, op kwargs, out dim of the weight, plain op)
CASES = {
    "linear": ((5, 11), (7, 11), 7, {}, 0, lambda x, w, b: F.linear(x, w, b)),
    "conv2d": ((3, 6, 9, 7), (10, 3, 3, 2), 10, {"stride": 2, "padding": 1, "dilation": 1, "groups": 2}, 0,
               lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2)),
    "conv2d_dilated": ((2, 3, 10, 10), (5, 3, 3, 3), 5, {"stride": 1, "padding": 2, "dilation": 2}, 0,
                       lambda x, w, b: F.conv2d(x, w, b, 1, 2, 2, 1)),
    "conv_transpose2d": ((3, 6, 5, 4), (6, 3, 4, 3), 6,
                         {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2, "dilation": 1}, 1,
                         lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1, 2, 1)),
    "conv_transpose2d_dilated": ((2, 4, 5, 5), (4, 5, 3, 3), 5, {"stride": 1, "padding": 0, "dilation": 2}, 1,
                                 lambda x, w, b: F.conv_transpose2d(x, w, b, 1, 0, 0, 1, 2)),
}


def _op(name):
    return getattr(reference, name.replace("_dilated", ""))


def _data(name, seed=0):
    xs, ws, out, kw, out_dim, plain = CASES[name]
    g = _gen(seed)
    x = torch.randn(xs, generator=g, dtype=DT)
    w = torch.randn(ws, generator=g, dtype=DT)
    b = torch.randn(out, generator=g, dtype=DT)
    return x, w, b, kw, out_dim, plain


def _call(name, x, w, b, **masks):
    kw = CASES[name][3]
    return _op(name)(x, w, b, **kw, **masks)


def _unit_shape(y, scale):
    return [scale.shape[0] if scale.dim() == 2 else 1, -1] + [1] * (y.dim() - 2)


@pytest.mark.parametrize("name", list(CASES))
def test_soft_mask_equals_plain_op_on_masked_weight(name):
    x, w, b, _, _, plain = _data(name, 1)
    logits = torch.randn(w.shape, generator=_gen(2), dtype=DT)
    s = 3.7
    expected = plain(x, w * _sigmoid_by_hand(s * logits), b)
    got = _call(name, x, w, b, logits=logits, s=s)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_linear_soft_mask_by_hand():
    """The linear case written out as a sum, with no torch op in the expected value."""
    x, w, b, _, _, _ = _data("linear", 3)
    logits = torch.randn(w.shape, generator=_gen(4), dtype=DT)
    s = 0.8
    xl, wl, bl, ll = x.tolist(), w.tolist(), b.tolist(), logits.tolist()
    expected = torch.tensor([[bl[i] + sum(xl[n][j] * wl[i][j] / (1 + math.exp(-s * ll[i][j]))
                                          for j in range(len(xl[n])))
                              for i in range(len(wl))] for n in range(len(xl))], dtype=DT)
    torch.testing.assert_close(reference.linear(x, w, b, logits=logits, s=s), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_bits_equal_plain_op_on_binary_masked_weight(name):
    x, w, b, _, _, plain = _data(name, 5)
    m = torch.rand(w.shape, generator=_gen(6)) < 0.5
    expected = plain(x, w * m.to(DT), b)
    got = _call(name, x, w, b, bits=bits.pack(m))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_unmasked_equals_plain_op(name):
    x, w, b, _, _, plain = _data(name, 7)
    assert torch.equal(_call(name, x, w, b), plain(x, w, b))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("per_row", [False, True])
def test_unit_scale(name, per_row):
    x, w, b, _, _, plain = _data(name, 8)
    out = CASES[name][2]
    shape = (x.shape[0], out) if per_row else (out,)
    scale = torch.rand(shape, generator=_gen(9), dtype=DT)
    y = plain(x, w, b)
    expected = y * scale.reshape(_unit_shape(y, scale))
    torch.testing.assert_close(_call(name, x, w, b, unit_scale=scale), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_scale", [False, True])
def test_row_task_equals_looping_over_tasks(name, with_scale):
    x, w, b, _, _, plain = _data(name, 10)
    tasks = 3
    masks = torch.rand((tasks,) + tuple(w.shape), generator=_gen(11)) < 0.5
    packed = torch.stack([bits.pack(m) for m in masks])
    row_task = torch.tensor([2, 0, 2][: x.shape[0]] + [1] * max(0, x.shape[0] - 3))
    scale = None
    if with_scale:
        scale = torch.rand((x.shape[0], CASES[name][2]), generator=_gen(12), dtype=DT)
    got = _call(name, x, w, b, bits=packed, row_task=row_task, unit_scale=scale)
    for r in range(x.shape[0]):
        k = int(row_task[r])
        expected = _call(name, x[r:r + 1], w, b, bits=packed[k],
                         unit_scale=None if scale is None else scale[r:r + 1])
        torch.testing.assert_close(got[r:r + 1], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[r:r + 1], plain(x[r:r + 1], w * masks[k].to(DT), b) *
                                   (1 if scale is None else scale[r].reshape([1, -1] + [1] * (got.dim() - 2))),
                                   rtol=1e-12, atol=1e-12)


def _grads(name, x, w, b, g, **masks):
    w = w.clone().requires_grad_(True)
    logits = masks.pop("logits", None)
    if logits is not None:
        logits = logits.clone().requires_grad_(True)
        masks["logits"] = logits
    y = _call(name, x, w, b, **masks)
    (y * g).sum().backward()
    return w.grad, None if logits is None else logits.grad


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("soft", [False, True])
def test_frozen_bits_zero_the_weight_gradient_there_only(name, soft):
    x, w, b, _, _, plain = _data(name, 13)
    g = torch.randn(plain(x, w, b).shape, generator=_gen(14), dtype=DT)
    frozen = torch.rand(w.shape, generator=_gen(15)) < 0.3
    masks = {"logits": torch.randn(w.shape, generator=_gen(16), dtype=DT), "s": 2.0} if soft else {}
    free_w, free_l = _grads(name, x, w, b, g, **dict(masks))
    grad_w, grad_l = _grads(name, x, w, b, g, frozen_bits=bits.pack(frozen), **dict(masks))
    assert torch.all(grad_w[frozen] == 0)
    assert torch.all(free_w[frozen] != 0)  # the zeros come from the freeze, not the data
    torch.testing.assert_close(grad_w[~frozen], free_w[~frozen], rtol=1e-14, atol=0)
    if soft:  # the mask logits still learn everywhere
        torch.testing.assert_close(grad_l, free_l, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_in", [False, True])
def test_frozen_units_follow_the_hat_rule(name, with_in):
    x, w, b, _, out_dim, plain = _data(name, 17)
    in_dim = 1 - out_dim
    out_res = torch.rand(w.shape[out_dim], generator=_gen(18)) < 0.5
    in_res = (torch.rand(w.shape[in_dim], generator=_gen(19)) < 0.5) if with_in else None
    out_res[0], out_res[-1] = True, False
    if in_res is not None:
        in_res[0], in_res[-1] = True, False
    g = torch.randn(plain(x, w, b).shape, generator=_gen(20), dtype=DT)
    free_w, _ = _grads(name, x, w, b, g)
    grad_w, _ = _grads(name, x, w, b, g, frozen_units=(out_res, in_res))
    # HAT: grad_W[i, j] is zero iff out unit i is reserved and (in unit j is reserved or in_res is None).
    in_any = torch.ones(w.shape[in_dim], dtype=torch.bool) if in_res is None else in_res
    rule = out_res[:, None] & in_any[None, :]
    if out_dim == 1:
        rule = rule.t()
    rule = rule.reshape(rule.shape + (1,) * (w.dim() - 2)).expand(w.shape)
    assert torch.all(grad_w[rule] == 0)
    assert torch.all(grad_w[~rule] != 0)
    torch.testing.assert_close(grad_w[~rule], free_w[~rule], rtol=1e-14, atol=0)


def test_frozen_weight_mask_for_conv_transpose_uses_weight_dim_1():
    w = torch.zeros(3, 4, 2, 2)
    out_res = torch.tensor([True, False, True, False])
    in_res = torch.tensor([False, True, True])
    m = reference.frozen_weight_mask(w, frozen_units=(out_res, in_res), out_dim=1)
    expected = (in_res[:, None] & out_res[None, :])[:, :, None, None].expand(w.shape)
    assert torch.equal(m, expected)
    assert reference.frozen_weight_mask(w) is None


@pytest.mark.parametrize("name", list(CASES))
def test_strided_weight_views(name):
    """Weights stored with spare capacity: the op sees ``storage[:a, :b]`` and trains only that corner."""
    x, w, b, _, _, plain = _data(name, 21)
    storage = torch.randn((w.shape[0] + 3, w.shape[1] + 2) + tuple(w.shape[2:]), generator=_gen(22), dtype=DT)
    storage.requires_grad_(True)
    view = storage[: w.shape[0], : w.shape[1]]
    assert not view.is_contiguous()
    logits_storage = torch.randn(storage.shape, generator=_gen(23), dtype=DT)
    logits = logits_storage[: w.shape[0], : w.shape[1]]
    frozen = torch.rand(w.shape, generator=_gen(24)) < 0.3
    y = _call(name, x, view, b, logits=logits, s=1.5, frozen_bits=bits.pack(frozen))
    expected = plain(x, view.detach().contiguous() * _sigmoid_by_hand(1.5 * logits.contiguous()), b)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    corner = storage.grad[: w.shape[0], : w.shape[1]]
    outside = storage.grad.clone()
    outside[: w.shape[0], : w.shape[1]] = 0
    assert torch.all(outside == 0)
    assert torch.all(corner[frozen] == 0) and torch.all(corner[~frozen] != 0)


def test_row_task_with_strided_weight():
    x, w, b, _, _, plain = _data("linear", 25)
    storage = torch.randn(w.shape[0] + 2, w.shape[1] + 5, dtype=DT)
    view = storage[: w.shape[0], : w.shape[1]]
    view.copy_(w)
    masks = torch.rand((2,) + tuple(w.shape), generator=_gen(26)) < 0.5
    row_task = torch.tensor([1, 0, 0, 1, 1])
    got = reference.linear(x, view, b, bits=torch.stack([bits.pack(m) for m in masks]), row_task=row_task)
    for r in range(x.shape[0]):
        torch.testing.assert_close(got[r], F.linear(x[r], w * masks[row_task[r]].to(DT), b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "conv2d", "conv_transpose2d"])
def test_dispatch_reference_is_the_reference(name):
    x, w, b, _, _, _ = _data(name, 27)
    logits = torch.randn(w.shape, generator=_gen(28), dtype=DT)
    kw = CASES[name][3]
    got = getattr(ops, name)(x, w, b, **kw, logits=logits, s=1.3, backend="reference")
    assert torch.equal(got, getattr(reference, name)(x, w, b, **kw, logits=logits, s=1.3))
    assert ops.resolve("auto", name, torch.device("cpu")) == "reference"


def test_dispatch_rejects_unknown_backend():
    x, w, b, _, _, _ = _data("linear", 29)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.linear(x, w, b, backend="nope")


@pytest.mark.parametrize("per_row", [False, True])
def test_linear_with_leading_dims_scales_the_last_dim(per_row):
    g = _gen(30)
    x = torch.randn(4, 3, 6, generator=g, dtype=DT)
    w = torch.randn(5, 6, generator=g, dtype=DT)
    b = torch.randn(5, generator=g, dtype=DT)
    scale = torch.rand((4, 5) if per_row else (5,), generator=g, dtype=DT)
    expected = F.linear(x, w, b) * (scale[:, None, :] if per_row else scale)
    torch.testing.assert_close(reference.linear(x, w, b, unit_scale=scale), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "conv2d", "conv_transpose2d"])
@pytest.mark.parametrize("with_scale", [False, True])
def test_row_task_on_an_empty_batch(name, with_scale):
    x, w, b, _, _, plain = _data(name, 31)
    x = x[:0]
    packed = torch.stack([bits.pack(torch.ones(w.shape, dtype=torch.bool))] * 2)
    scale = torch.ones(0, CASES[name][2], dtype=DT) if with_scale else None
    y = _call(name, x, w, b, bits=packed, row_task=torch.zeros(0, dtype=torch.long), unit_scale=scale)
    assert y.shape == plain(x, w, b).shape
