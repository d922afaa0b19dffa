"""The Triton masked convs (implicit GEMMs) against the reference: output and every gradient.

Shapes are small but odd (batch 3, 5 in / 7 out channels, 5x5 and 9x9 images) against 64-tiles;
weights and logits are strided views of a larger storage, as the growing layers pass them. The
geometries are the paper's: the generator's conv-transpose k4 s2 p1 (upsampling) and k4 s1 p0,
the discriminator's conv k5 s2 p2, and a conv k3 s1 p1. The backend has no reference fallback
(it never imports :mod:`dgm.ops`; ``tests/test_backend_conformance.py`` checks that).
"""

import pytest
import torch
from conformance import TOL, check, random_bits, rel_err

import dgm.kernels as K
from dgm import ops
from dgm.kernels import conv_kernels
from dgm.ops import reference

B, CIN, COUT = 3, 5, 7
# (name, transposed, kernel, stride, padding, input size)
GEOMETRIES = [
    ("convT_k4s2p1", True, 4, 2, 1, 5),
    ("convT_k4s1p0", True, 4, 1, 0, 5),
    ("conv_k5s2p2", False, 5, 2, 2, 9),
    ("conv_k3s1p1", False, 3, 1, 1, 9),
]
IDS = [g[0] for g in GEOMETRIES]


def _tensors(seed, geometry, channels_last=False):
    """Inputs and the weight/logit storages; the weight is ``store[:a, :b]`` in the op's layout."""
    _, transposed, k, _, _, size = geometry
    g = torch.Generator().manual_seed(seed)
    rows, cols = (CIN, COUT) if transposed else (COUT, CIN)
    x = torch.randn(B, CIN, size, size, generator=g)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    return {"x": x, "w_store": torch.randn(rows + 3, cols + 2, k, k, generator=g) / (CIN * k),
            "l_store": 2 * torch.randn(rows + 3, cols + 2, k, k, generator=g), "bias": torch.randn(COUT, generator=g)}


def _weight_shape(geometry):
    _, transposed, k, _, _, _ = geometry
    return (CIN, COUT, k, k) if transposed else (COUT, CIN, k, k)


def _op(geometry):
    """``op(mod, x, weight, bias, **masks)`` running the geometry's conv of ``mod``."""
    _, transposed, k, stride, padding, _ = geometry
    if transposed:
        return lambda mod, x, w, b, **m: mod.conv_transpose2d(x, w, b, stride, padding, 0, 1, 1, **m)
    return lambda mod, x, w, b, **m: mod.conv2d(x, w, b, stride, padding, 1, 1, **m)


def _view(store, geometry):
    rows, cols = _weight_shape(geometry)[:2]
    return store[:rows, :cols]


def _frozen_entries(geometry, **kw):
    return reference.frozen_weight_mask(torch.empty(_weight_shape(geometry)), out_dim=1 if geometry[1] else 0, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_soft_mask_with_frozen_bits(geometry, dtype):
    t = _tensors(1, geometry)
    shape = _weight_shape(geometry)
    t["frozen"] = random_bits(shape[0], shape[1] * shape[2] * shape[3], p=0.3)
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias, frozen):
        return op(mod, x, _view(w_store, geometry), bias, logits=_view(l_store, geometry), s=1.7,
                  frozen_bits=frozen)

    g = check(K, fn, t, dtype, grads=("x", "w_store", "l_store", "bias"))
    gw = _view(g["w_store"], geometry)
    frozen = _frozen_entries(geometry, frozen_bits=t["frozen"])
    assert (gw[frozen] == 0).all() and (gw[~frozen] != 0).any()
    rows, cols = shape[:2]
    assert (g["w_store"][rows:] == 0).all() and (g["w_store"][:, cols:] == 0).all()
    assert (g["l_store"][rows:] == 0).all()


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_bits_mask_with_frozen_bits(geometry):
    t = _tensors(2, geometry)
    shape = _weight_shape(geometry)
    cols = shape[1] * shape[2] * shape[3]
    t["bits"] = random_bits(shape[0], cols)
    t["frozen"] = random_bits(shape[0], cols, p=0.4)
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias, bits, frozen):
        return op(mod, x, _view(w_store, geometry), bias, bits=bits, frozen_bits=frozen)

    check(K, fn, t, torch.float32, grads=("x", "w_store", "bias"))


@pytest.mark.parametrize("with_in", [True, False], ids=["in_reserved", "all_in_reserved"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_activation_mask_with_frozen_units(geometry, with_in):
    """DGMa: per-unit scale in the epilogue, HAT's reserved out_i & in_j frozen."""
    t = _tensors(3, geometry)
    t["scale"] = torch.rand(COUT)
    t["out_res"] = torch.rand(COUT) < 0.5
    t["in_res"] = torch.rand(CIN) < 0.5
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias, scale, out_res, in_res):
        return op(mod, x, _view(w_store, geometry), bias, unit_scale=scale,
                  frozen_units=(out_res, in_res if with_in else None))

    g = check(K, fn, t, torch.float32, grads=("x", "w_store", "bias", "scale"))
    frozen = _frozen_entries(geometry, frozen_units=(t["out_res"], t["in_res"] if with_in else None))
    assert (_view(g["w_store"], geometry)[frozen] == 0).all()


@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[2]], ids=[IDS[0], IDS[2]])
def test_replay_per_row_bits_and_per_row_scale(geometry):
    """Rows of tasks 0, 1 and 3 in random order (task 2 absent), each under its own bits, one launch."""
    t = _tensors(4, geometry)
    t["x"] = torch.randn(7, *t["x"].shape[1:])
    shape = _weight_shape(geometry)
    t["bits"] = random_bits(4, shape[0], shape[1] * shape[2] * shape[3])
    t["row_task"] = torch.tensor([3, 0, 1, 3, 1, 0, 3])
    t["scale"] = torch.rand(7, COUT)
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias, bits, row_task, scale):
        return op(mod, x, _view(w_store, geometry), bias, bits=bits, row_task=row_task, unit_scale=scale)

    check(K, fn, t, torch.float32, grads=("x", "w_store", "bias", "scale"))


@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[2]], ids=[IDS[0], IDS[2]])
def test_channels_last_input_read_in_place(geometry):
    t = _tensors(5, geometry, channels_last=True)
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias):
        return op(mod, x, _view(w_store, geometry), bias, logits=_view(l_store, geometry), s=2.5)

    check(K, fn, t, torch.float32, grads=("x", "w_store", "l_store", "bias"))
    y = fn(K, **t)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("form", ["soft", "replay"])
def test_weight_gradient_split_over_programs(form, monkeypatch):
    """The GPU splits the weight-gradient reduction and adds the epilogue's partial results
    atomically (fp32 buffers); forced here on 3 uneven chunks, across task segments for replay."""
    geometry = GEOMETRIES[0]
    splits = []
    monkeypatch.setattr(conv_kernels, "wgrad_splits", lambda *args: splits.append(args) or 3)
    t = _tensors(11, geometry)
    t["x"] = torch.randn(7, *t["x"].shape[1:])
    t["bits"] = random_bits(3, CIN, COUT * 16)
    t["row_task"] = torch.tensor([2, 0, 1, 2, 1, 0, 2])
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias, bits, row_task):
        if form == "soft":
            return op(mod, x, _view(w_store, geometry), bias, logits=_view(l_store, geometry), s=1.3)
        return op(mod, x, _view(w_store, geometry), bias, bits=bits, row_task=row_task)

    dtype = torch.float16 if form == "soft" else torch.float32
    check(K, fn, t, dtype, grads=("w_store", "l_store") if form == "soft" else ("w_store",))
    assert splits


@pytest.mark.parametrize("transposed, stride, padding, dilation, output_padding, size", [
    (True, 3, 2, 2, 1, 4),   # stride and dilation share no factor: every phase has taps
    (True, 2, 1, 2, 1, 5),   # gcd 2: two of the four phases have no tap (output = bias)
    (False, 2, 2, 2, 0, 11),
    (False, (1, 2), (0, 1), (2, 1), 0, 8),
], ids=["convT_s3d2", "convT_s2d2", "conv_s2d2", "conv_mixed"])
def test_general_stride_padding_dilation(transposed, stride, padding, dilation, output_padding, size):
    g = torch.Generator().manual_seed(6)
    rows, cols = (CIN, COUT) if transposed else (COUT, CIN)
    t = {"x": torch.randn(B, CIN, size, size + 1, generator=g),
         "w": torch.randn(rows, cols, 3, 2, generator=g) / 4, "lg": torch.randn(rows, cols, 3, 2, generator=g),
         "bias": torch.randn(COUT, generator=g)}

    def fn(mod, x, w, lg, bias):
        if transposed:
            return mod.conv_transpose2d(x, w, bias, stride, padding, output_padding, 1, dilation, logits=lg, s=1.2)
        return mod.conv2d(x, w, bias, stride, padding, dilation, 1, logits=lg, s=1.2)

    check(K, fn, t, torch.float32, grads=("x", "w", "lg", "bias"))


def test_generator_first_layer_from_1x1():
    """The generator's first layer: conv-transpose k4 s1 p0 from a 1x1 noise input."""
    geometry = ("convT_1x1", True, 4, 1, 0, 1)
    t = _tensors(7, geometry)
    t["frozen"] = random_bits(CIN, COUT * 16, p=0.3)
    op = _op(geometry)

    def fn(mod, x, w_store, l_store, bias, frozen):
        return op(mod, x, _view(w_store, geometry), bias, logits=_view(l_store, geometry), s=1.5, frozen_bits=frozen)

    check(K, fn, t, torch.float32, grads=("x", "w_store", "l_store", "bias"))


def test_dispatch_runs_triton_backend():
    t = _tensors(9, GEOMETRIES[2])
    w, lg = _view(t["w_store"], GEOMETRIES[2]), _view(t["l_store"], GEOMETRIES[2])
    y = ops.conv2d(t["x"], w, t["bias"], 2, 2, logits=lg, s=3.0, backend="triton")
    want = reference.conv2d(t["x"].double(), w.double(), t["bias"].double(), 2, 2, logits=lg.double(), s=3.0)
    assert rel_err(y, want) < TOL[torch.float32]


def test_compiles_without_graph_break():
    t = _tensors(9, GEOMETRIES[0])
    w = _view(t["w_store"], GEOMETRIES[0]).clone().requires_grad_()
    lg = _view(t["l_store"], GEOMETRIES[0]).clone().requires_grad_()
    scale = torch.rand(COUT, requires_grad=True)

    def step(mod, x, w, lg, scale):
        return mod.conv_transpose2d(x, w, None, 2, 1, logits=lg, s=2.0, unit_scale=scale).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(K, t["x"], w, lg, scale), (w, lg, scale))
    want = torch.autograd.grad(step(reference, t["x"].double(), w.double(), lg.double(), scale.double()),
                               (w, lg, scale))
    for g, e in zip(got, want):
        assert rel_err(g, e) < TOL[torch.float32]


@pytest.mark.parametrize("kwargs, message", [
    (lambda t: dict(logits=t["l_store"][:CIN, :COUT, :3]), "logits must have shape"),
    (lambda t: dict(bits=torch.zeros(CIN, 3, dtype=torch.uint8)), "bits must have shape"),
    (lambda t: dict(bits=random_bits(CIN, COUT * 16), row_task=torch.zeros(B, dtype=torch.long)),
     "row_task needs bits"),
    (lambda t: dict(frozen_units=(torch.zeros(CIN, dtype=torch.bool), None)), "frozen_units\\[0\\]"),
    (lambda t: dict(unit_scale=torch.ones(B, COUT + 1)), "unit_scale must have shape"),
])
def test_bad_arguments_are_named(kwargs, message):
    t = _tensors(10, GEOMETRIES[0])
    with pytest.raises((ValueError, TypeError), match=message):
        K.conv_transpose2d(t["x"], t["w_store"][:CIN, :COUT], t["bias"], 2, 1, **kwargs(t))


# -- GPU only ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_generator_and_discriminator_sizes(dtype):
    """Paper-scale layers pick among several autotune configs; bf16 only runs on a GPU."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(64, 96, 16, 16, device=dev, generator=g)
    t = {"x": x, "w": torch.randn(96, 48, 4, 4, device=dev, generator=g) / 40,
         "lg": torch.randn(96, 48, 4, 4, device=dev, generator=g), "bits": random_bits(4, 96, 48 * 16).to(dev),
         "rt": torch.randint(0, 4, (64,), device=dev, generator=g),
         "wd": torch.randn(80, 96, 5, 5, device=dev, generator=g) / 50}

    def up_soft(mod, x, w, lg, bits, rt, wd):
        return mod.conv_transpose2d(x, w, None, 2, 1, logits=lg, s=1.3)

    def up_replay(mod, x, w, lg, bits, rt, wd):
        return mod.conv_transpose2d(x, w, None, 2, 1, bits=bits, row_task=rt)

    def down(mod, x, w, lg, bits, rt, wd):
        return mod.conv2d(x.to(memory_format=torch.channels_last), wd, None, 2, 2)

    check(K, up_soft, t, dtype, grads=("x", "w", "lg"))
    check(K, up_replay, t, dtype, grads=("x", "w"))
    check(K, down, t, dtype, grads=("x", "wd"))
