"""The Triton masked convs against the reference.

Fused are the GEMM-shaped convs: the generator's first layer (conv-transpose k=4 from a 1x1
input) and a conv whose kernel covers its whole input. Other shapes run on the reference; one
test checks that path stays correct.
"""

import pytest
import torch

from test_kernels_common import check, random_bits

B, CIN, COUT, KS = 67, 37, 21, 4


def _store(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _ct_tensors(seed):
    return {"x": _store(seed, (B, CIN, 1, 1)), "w_store": _store(seed + 1, (CIN + 3, COUT + 5, KS, KS)) / 6,
            "l_store": 2 * _store(seed + 2, (CIN + 3, COUT + 5, KS, KS)), "bias": _store(seed + 3, (COUT,))}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_first_layer_conv_transpose_soft_mask(dtype):
    t = _ct_tensors(0)
    t["frozen"] = random_bits(CIN, COUT * KS * KS, p=0.3)

    def fn(mod, x, w_store, l_store, bias, frozen):
        return mod.conv_transpose2d(x, w_store[:CIN, :COUT], bias, 1, 0, 0, 1, 1, logits=l_store[:CIN, :COUT],
                                    s=1.5, frozen_bits=frozen)

    g = check(fn, t, dtype, grads=("x", "w_store", "l_store", "bias"))
    assert (g["w_store"][CIN:] == 0).all()


def test_first_layer_conv_transpose_activation_mask():
    t = _ct_tensors(10)
    t["scale"] = torch.rand(COUT)
    t["out_res"] = torch.rand(COUT) < 0.5
    t["in_res"] = torch.rand(CIN) < 0.5

    def fn(mod, x, w_store, l_store, bias, scale, out_res, in_res):
        return mod.conv_transpose2d(x, w_store[:CIN, :COUT], bias, 2, 0, 0, 1, 1, unit_scale=scale,
                                    frozen_units=(out_res, in_res))

    check(fn, t, torch.float32, grads=("x", "w_store", "bias", "scale"))


def test_first_layer_conv_transpose_replay():
    t = _ct_tensors(20)
    t["bits"] = random_bits(3, CIN, COUT * KS * KS)
    t["row_task"] = torch.randint(0, 3, (B,))
    t["scale"] = torch.rand(B, COUT)

    def fn(mod, x, w_store, l_store, bias, bits, row_task, scale):
        return mod.conv_transpose2d(x, w_store[:CIN, :COUT], bias, 1, 0, 0, 1, 1, bits=bits, row_task=row_task,
                                    unit_scale=scale)

    check(fn, t, torch.float32, grads=("x", "w_store", "bias", "scale"))


def test_conv_covering_its_input_bits_and_frozen_units():
    t = {"x": _store(30, (B, CIN, KS, KS)), "w_store": _store(31, (COUT + 2, CIN + 1, KS, KS)) / 12,
         "bias": _store(32, (COUT,)), "bits": random_bits(COUT, CIN * KS * KS), "out_res": torch.rand(COUT) < 0.5,
         "in_res": torch.rand(CIN) < 0.5}

    def fn(mod, x, w_store, bias, bits, out_res, in_res):
        return mod.conv2d(x, w_store[:COUT, :CIN], bias, 1, 0, 1, 1, bits=bits, frozen_units=(out_res, in_res))

    check(fn, t, torch.float32, grads=("x", "w_store", "bias"))


def test_generator_upsampling_layer_falls_back_correctly():
    """k=4, s=2, p=1 (not a single GEMM): the reference runs, with the same meaning."""
    t = {"x": _store(40, (5, 6, 7, 7)), "w_store": _store(41, (8, 9, KS, KS)), "l_store": _store(42, (8, 9, KS, KS))}

    def fn(mod, x, w_store, l_store):
        return mod.conv_transpose2d(x, w_store[:6, :5], None, 2, 1, 0, 1, 1, logits=l_store[:6, :5], s=2.0)

    check(fn, t, torch.float32, grads=("x", "w_store", "l_store"))
