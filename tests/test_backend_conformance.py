"""Every registered backend against the reference, driven by the registry (dgm.ops.backends).

For each backend that runs on the device, each layer kind and each mask form: the output and every
gradient (x, weight, bias, logits, bias_logits, unit_scale) within :data:`conformance.TOL` of the
reference in float64 (:func:`conformance.check`), and exactly zero where the weight or bias is
frozen or outside the weight's corner of its storage. Shapes are odd and smaller than one 64-tile
(the interpreter is slow); weights are corner views of a larger storage, as growing layers pass
them. Each dtype and geometry the backend declares runs against the reference too; each one it
does not declare is refused with :class:`dgm.ops.UnsupportedInput` naming it.
"""

import re

import pytest
import torch
from conformance import On, check, random_bits

from dgm import bits, ops
from dgm.ops import reference
from dgm.ops.backends import BY_NAME, GEOMETRIES

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# kind -> (x shape, weight shape, storage shape the weight is a corner of, op args, weight dim of out units)
KINDS = {
    "linear": ((5, 13), (9, 13), (11, 16), (), 0),
    "conv2d": ((3, 5, 7, 6), (7, 5, 3, 3), (9, 6, 3, 3), (2, 1), 0),
    "conv_transpose2d": ((3, 5, 5, 4), (5, 7, 4, 4), (6, 9, 4, 4), (2, 1, 1), 1),
}
TASKS = 3

# form -> the mask arguments it gives; lifecycle states: nothing frozen yet, partially frozen.
FORMS = {
    "unmasked": (),
    "soft": ("logits", "bias_logits"),
    "soft_frozen": ("logits", "bias_logits", "frozen_bits", "frozen_bias_bits"),
    "bits": ("bits", "bias_bits"),
    "bits_frozen": ("bits", "bias_bits", "frozen_bits", "frozen_bias_bits"),
    "rows": ("row_bits", "row_bias_bits"),
    "rows_scaled": ("row_bits", "row_unit_scale"),
    "rows_empty_batch": ("row_bits", "row_bias_bits", "empty"),
    "units_free": ("unit_scale",),
    "units": ("unit_scale", "frozen_units"),
    "units_all_inputs": ("unit_scale", "frozen_out_units"),
    "units_rows": ("row_unit_scale", "frozen_units"),
}


def _runs(backend: str, op: str, device: str) -> None:
    reason = ops.unavailable_reason(backend, op, torch.device(device))
    if reason is not None:
        pytest.skip(reason)


def _case(kind: str, form: str, device: str, seed: int = 0):
    """``(tensors, grads, fn)``: the leaves (floating ones get the test's dtype), the names whose
    gradients are compared, and ``fn(mod, **tensors)`` running the op of ``mod``."""
    x_shape, w_shape, store_shape, args, out_dim = KINDS[kind]
    given = FORMS[form]
    g = torch.Generator().manual_seed(seed)
    batch = 0 if "empty" in given else x_shape[0]
    out_units, in_units = w_shape[out_dim], w_shape[1 - out_dim]
    cols = w_shape[1] * (w_shape[2] * w_shape[3] if len(w_shape) == 4 else 1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def coin(n, p=0.5):
        return torch.rand(n, generator=g) < p

    t = {"x": rnd(batch, *x_shape[1:]), "w_store": rnd(*store_shape) / 3, "bias": rnd(out_units)}
    fixed = {}
    if "logits" in given:
        t["l_store"] = 2 * rnd(*store_shape)
        fixed["s"] = 1.7
    if "bias_logits" in given:
        t["bias_logits"] = 2 * rnd(out_units)
    if "bits" in given:
        fixed["bits"] = random_bits(w_shape[0], cols, p=0.7, generator=g)
    if "bias_bits" in given:
        fixed["bias_bits"] = bits.pack(coin(out_units, 0.7))
    if "row_bits" in given:
        fixed["bits"] = random_bits(TASKS, w_shape[0], cols, p=0.7, generator=g)
        fixed["row_task"] = torch.tensor([2, 0, 2, 1, 0][:batch], dtype=torch.long)
    if "row_bias_bits" in given:
        fixed["bias_bits"] = torch.stack([bits.pack(coin(out_units, 0.7)) for _ in range(TASKS)])
    if "frozen_bits" in given:
        fixed["frozen_bits"] = random_bits(w_shape[0], cols, p=0.4, generator=g)
    if "frozen_bias_bits" in given:
        fixed["frozen_bias_bits"] = bits.pack(coin(out_units, 0.4))
    if "unit_scale" in given:
        t["unit_scale"] = torch.rand(out_units, generator=g, dtype=torch.float64)
    if "row_unit_scale" in given:
        t["unit_scale"] = torch.rand(batch, out_units, generator=g, dtype=torch.float64)
    if "frozen_units" in given:
        fixed["frozen_units"] = (coin(out_units), coin(in_units))
    if "frozen_out_units" in given:
        fixed["frozen_units"] = (coin(out_units), None)
    t = {k: v.to(device) for k, v in t.items()}
    fixed = {k: tuple(u if u is None else u.to(device) for u in v) if isinstance(v, tuple) else
             v.to(device) if isinstance(v, torch.Tensor) else v for k, v in fixed.items()}
    corner = (slice(0, w_shape[0]), slice(0, w_shape[1]))

    def fn(mod, x, w_store, bias, l_store=None, **leaves):
        logits = None if l_store is None else l_store[corner]
        return getattr(mod, kind)(x, w_store[corner], bias, *args, logits=logits, **leaves, **fixed)

    return t, tuple(t), fn, fixed, corner


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_matches_reference(backend, kind, form, device):
    _runs(backend, kind, device)
    tensors, grads, fn, fixed, corner = _case(kind, form, device, seed=10 * list(KINDS).index(kind) + list(FORMS).index(form))
    g = check(On(backend), fn, tensors, torch.float32, grads)
    # Exactly zero outside the weight's corner of its storage, where frozen, and at frozen biases.
    gw = g["w_store"]
    outside = torch.ones_like(gw, dtype=torch.bool)
    outside[corner] = False
    assert not gw[outside].any()
    out_dim = KINDS[kind][4]
    frozen = reference.frozen_weight_mask(gw[corner], fixed.get("frozen_bits"), fixed.get("frozen_units"), out_dim)
    if frozen is not None:
        assert not gw[corner][frozen].any()
    if "frozen_bias_bits" in fixed:
        assert not g["bias"][bits.unpack(fixed["frozen_bias_bits"], g["bias"].shape)].any()
    if "frozen_units" in fixed:
        assert not g["bias"][fixed["frozen_units"][0]].any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["soft_frozen", "rows", "units"])
@pytest.mark.parametrize("kind", ["linear", "conv_transpose2d"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_every_declared_dtype_and_no_other(backend, dtype, kind, form, device):
    _runs(backend, kind, device)
    tensors, grads, fn, _, _ = _case(kind, form, device, seed=5)
    if dtype not in BY_NAME[backend].dtypes:
        with pytest.raises(ops.UnsupportedInput, match=f"input dtype {str(dtype)[6:]}"):
            fn(On(backend), **{k: v.to(dtype) for k, v in tensors.items()})
        return
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    check(On(backend), fn, tensors, dtype, grads)


def _geometry_case(geometry: str):
    """``(op, tensors, fn)`` of an input with ``geometry``, masked and with a bias."""
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if geometry == "groups":
        t = {"x": rnd(2, 4, 6, 6), "w": rnd(6, 2, 3, 3), "lg": rnd(6, 2, 3, 3), "b": rnd(6)}
        return "conv2d", t, lambda mod, x, w, lg, b: mod.conv2d(x, w, b, 1, 1, 1, 2, logits=lg, s=1.5)
    if geometry == "string_padding":
        t = {"x": rnd(2, 5, 6, 7), "w": rnd(7, 5, 3, 3), "lg": rnd(7, 5, 3, 3), "b": rnd(7)}
        return "conv2d", t, lambda mod, x, w, lg, b: mod.conv2d(x, w, b, padding="same", logits=lg, s=1.5)
    if geometry == "unbatched":
        t = {"x": rnd(5, 4, 4), "w": rnd(5, 7, 4, 4), "lg": rnd(5, 7, 4, 4), "b": rnd(7)}
        return "conv_transpose2d", t, lambda mod, x, w, lg, b: mod.conv_transpose2d(x, w, b, 2, 1, logits=lg, s=1.5)
    t = {"x": rnd(2, 3, 13), "w": rnd(9, 13), "u": torch.rand(9, generator=g, dtype=torch.float64), "b": rnd(9)}
    return "linear", t, lambda mod, x, w, u, b: mod.linear(x, w, b, unit_scale=u)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_every_declared_geometry_and_no_other(backend, geometry):
    op, tensors, fn = _geometry_case(geometry)
    _runs(backend, op, "cpu")
    if geometry in BY_NAME[backend].geometries:
        check(On(backend), fn, tensors, torch.float32, tuple(tensors))
        return
    inputs = {k: v.float() for k, v in tensors.items()}
    with pytest.raises(ops.UnsupportedInput, match=re.escape(f"does not serve this {op} input: {GEOMETRIES[geometry]}")):
        fn(On(backend), **inputs)
    # Called directly, the backend's own function refuses it too: there is no silent reference run.
    with pytest.raises((ValueError, TypeError)):
        fn(ops.load(backend), **inputs)
