"""The Triton masked linear against the reference: every mask form, output and every gradient.

Shapes are not tile multiples (M=67, K=131, N=75 against 64-tiles) and weights are strided views
of a larger storage, as the growing layers pass them.
"""

import pytest
import torch

import dgm.kernels as K
from dgm import ops
from dgm.ops import reference
from conformance import TOL, check, random_bits, rel_err

M, KD, N = 67, 131, 75
DTYPES = [torch.float32, torch.float16]


def _storage(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(M, KD, generator=g),
        "w_store": torch.randn(N + 5, KD + 9, generator=g) / KD ** 0.5,
        "l_store": 2 * torch.randn(N + 5, KD + 9, generator=g),
        "bias": torch.randn(N, generator=g),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_soft_mask_with_frozen_bits(dtype):
    t = _storage(1)
    t["frozen"] = random_bits(N, KD, p=0.3)

    def fn(mod, x, w_store, l_store, bias, frozen):
        return mod.linear(x, w_store[:N, :KD], bias, logits=l_store[:N, :KD], s=1.7, frozen_bits=frozen)

    g = check(K, fn, t, dtype, grads=("x", "w_store", "l_store", "bias"))
    frozen = reference.frozen_weight_mask(torch.empty(N, KD), frozen_bits=t["frozen"])
    gw = g["w_store"][:N, :KD]
    assert (gw[frozen] == 0).all() and (gw[~frozen] != 0).any()
    assert (g["w_store"][N:] == 0).all() and (g["w_store"][:, KD:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_mask_with_frozen_bits(dtype):
    t = _storage(2)
    t["bits"] = random_bits(N, KD)
    t["frozen"] = random_bits(N, KD, p=0.4)

    def fn(mod, x, w_store, l_store, bias, bits, frozen):
        return mod.linear(x, w_store[:N, :KD], bias, bits=bits, frozen_bits=frozen)

    check(K, fn, t, dtype, grads=("x", "w_store", "bias"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_in", [True, False], ids=["in_reserved", "all_in_reserved"])
def test_activation_mask_with_frozen_units(dtype, with_in):
    t = _storage(3)
    t["scale"] = torch.rand(N)
    t["out_res"] = torch.rand(N) < 0.4
    t["in_res"] = torch.rand(KD) < 0.5

    def fn(mod, x, w_store, l_store, bias, scale, out_res, in_res):
        return mod.linear(x, w_store[:N, :KD], bias, unit_scale=scale,
                          frozen_units=(out_res, in_res if with_in else None))

    g = check(K, fn, t, dtype, grads=("x", "w_store", "bias", "scale"))
    frozen = reference.frozen_weight_mask(torch.empty(N, KD),
                                          frozen_units=(t["out_res"], t["in_res"] if with_in else None))
    assert (g["w_store"][:N, :KD][frozen] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_row_unit_scale(dtype):
    t = _storage(4)
    t["scale"] = (torch.rand(M, N) < 0.6).float()

    def fn(mod, x, w_store, l_store, bias, scale):
        return mod.linear(x, w_store[:N, :KD], bias, unit_scale=scale)

    check(K, fn, t, dtype, grads=("x", "w_store", "bias", "scale"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_replay_per_row_bits(dtype):
    """Rows of 4 tasks in random order (task 2 absent), each under its own bits, in one launch."""
    t = _storage(5)
    t["bits"] = random_bits(4, N, KD)
    t["row_task"] = torch.tensor([0, 1, 3])[torch.randint(0, 3, (M,))]
    t["frozen"] = random_bits(N, KD, p=0.3)

    def fn(mod, x, w_store, l_store, bias, bits, row_task, frozen):
        return mod.linear(x, w_store[:N, :KD], None, bits=bits, row_task=row_task, frozen_bits=frozen)

    check(K, fn, t, dtype, grads=("x", "w_store"))


def test_replay_with_per_row_unit_scale():
    t = _storage(6)
    t["bits"] = random_bits(3, N, KD)
    t["row_task"] = torch.randint(0, 3, (M,))
    t["scale"] = torch.rand(M, N)

    def fn(mod, x, w_store, l_store, bias, bits, row_task, scale):
        return mod.linear(x, w_store[:N, :KD], bias, bits=bits, row_task=row_task, unit_scale=scale)

    check(K, fn, t, torch.float32, grads=("x", "w_store", "bias", "scale"))


def test_unmasked_higher_dimensional_input():
    t = _storage(7)
    t["x"] = torch.randn(3, 23, KD)

    def fn(mod, x, w_store, l_store, bias):
        return mod.linear(x, w_store[:N, :KD], bias)

    check(K, fn, t, torch.float32, grads=("x", "w_store", "bias"))


def test_dispatch_runs_triton_backend():
    t = _storage(8)
    y = ops.linear(t["x"], t["w_store"][:N, :KD], t["bias"], logits=t["l_store"][:N, :KD], s=3.0, backend="triton")
    want = reference.linear(t["x"].double(), t["w_store"][:N, :KD].double(), t["bias"].double(),
                            logits=t["l_store"][:N, :KD].double(), s=3.0)
    assert rel_err(y, want) < TOL[torch.float32]
    assert K.unavailable_reason(torch.device("cpu")) is None and K.unavailable_reason("cuda:0") is None


def test_compiles_without_graph_break():
    t = _storage(9)
    w = t["w_store"][:N, :KD].clone().requires_grad_()
    lg = t["l_store"][:N, :KD].clone().requires_grad_()

    def step(x, w, lg):
        return K.linear(x, w, None, logits=lg, s=2.0).square().sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(t["x"], w, lg), (w, lg))
    want = torch.autograd.grad(step(t["x"], w, lg), (w, lg))
    for g, e in zip(got, want):
        assert rel_err(g, e) < TOL[torch.float32]


@pytest.mark.parametrize("kwargs, message", [
    (lambda t: dict(bits=torch.zeros(N, 3, dtype=torch.uint8)), "bits must have shape"),
    (lambda t: dict(bits=random_bits(N, KD), logits=t["l_store"][:N, :KD]), "at most one weight mask"),
    (lambda t: dict(bits=random_bits(N, KD), row_task=torch.zeros(M, dtype=torch.long)), "row_task needs bits"),
    (lambda t: dict(frozen_units=(torch.zeros(N - 1, dtype=torch.bool), None)), "frozen_units\\[0\\]"),
    (lambda t: dict(unit_scale=torch.ones(N + 1)), "unit_scale must have shape"),
])
def test_bad_arguments_are_named(kwargs, message):
    t = _storage(10)
    with pytest.raises((ValueError, TypeError), match=message):
        K.linear(t["x"], t["w_store"][:N, :KD], t["bias"], **kwargs(t))


# -- GPU only ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_large_soft_and_replay(dtype):
    """Large shapes pick among several autotune configs; bf16 only runs on a GPU."""
    dev = torch.device("cuda")
    m, k, n = 1030, 1000, 777
    g = torch.Generator(device=dev).manual_seed(0)
    t = {"x": torch.randn(m, k, device=dev, generator=g), "w": torch.randn(n, k, device=dev, generator=g) / k ** 0.5,
         "lg": torch.randn(n, k, device=dev, generator=g), "bits": random_bits(5, n, k).to(dev),
         "rt": torch.randint(0, 5, (m,), device=dev, generator=g)}

    def soft(mod, x, w, lg, bits, rt):
        return mod.linear(x, w, None, logits=lg, s=1.3)

    def replay(mod, x, w, lg, bits, rt):
        return mod.linear(x, w, None, bits=bits, row_task=rt)

    check(K, soft, t, dtype, grads=("x", "w", "lg"))
    check(K, replay, t, dtype, grads=("x", "w"))


@pytest.mark.gpu
def test_gpu_tf32_follows_torch_flag():
    dev = torch.device("cuda")
    t = {"x": torch.randn(512, 1024, device=dev), "w": torch.randn(768, 1024, device=dev) / 32,
         "lg": torch.randn(768, 1024, device=dev)}

    def fn(mod, x, w, lg):
        return mod.linear(x, w, None, logits=lg, s=2.0)

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        check(K, fn, t, torch.float32, grads=("x", "w", "lg"), tol=5e-3)
        torch.backends.cuda.matmul.allow_tf32 = False
        check(K, fn, t, torch.float32, grads=("x", "w", "lg"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
