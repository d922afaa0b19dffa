"""Masked conv-transpose forward+backward through the extension (the ``extension`` backend: one fused
pass forms W_eff, cuDNN convolves, one fused epilogue writes grad_W and grad_logits) vs the
reference vs the unmasked limit (``F.conv_transpose2d`` on a plain weight). Soft weight mask with
30% of the weights frozen, weights as corner views of larger storage, as in a grown generator.

Groups share their names with the Triton suites, so the columns of both designs line up:
``convT-k4s2p1-fwd+bwd-BxCINxCOUTxH`` (the generator's upsampling layers, 4x4 kernels, stride 2,
padding 1, HxH -> 2Hx2H), ``convT-k4-1x1-fwd+bwd-BxCINxCOUT`` (its first layer) and
``linear-fwd+bwd-BxINxOUT``.
"""

import pytest
import torch
import torch.nn.functional as F

from dgm import bits
from dgm.ops import extension, reference

ON_GPU = torch.cuda.is_available()
# (batch, in_channels, out_channels, input height = width)
# The shapes and group names of bench_triton_conv.py, so the two designs sit side by side.
CPU_SHAPES = [(8, 12, 6, 8)]
GPU_SHAPES = [(64, 24, 12, 4), (64, 12, 6, 8), (64, 96, 48, 8), (64, 48, 24, 16), (256, 256, 128, 16),
              (256, 128, 64, 32)]
FIRST_SHAPES = [(64, 100, 24), (256, 110, 256), (1024, 512, 512)] if ON_GPU else [(64, 100, 24)]
LINEAR_SHAPES = ([(64, 100, 100), (256, 512, 512), (256, 1024, 1024), (4096, 4096, 4096)] if ON_GPU
                 else [(64, 100, 100), (128, 256, 256)])
IMPLS = ["reference", "extension", "limit"]


def _masked(impl, op, x, storage, weight_shape, logits, frozen, *args):
    """fwd+bwd callable of the masked op on the corner view of ``storage``."""
    mod = extension if impl == "extension" else reference
    corner = (slice(0, weight_shape[0]), slice(0, weight_shape[1]))

    def fn():
        y = getattr(mod, op)(x, storage[corner], None, *args, logits=logits, s=2.0, frozen_bits=frozen)
        return torch.autograd.grad(y, (x, storage, logits), torch.ones_like(y))
    return fn


def _limit(op, x, weight, *args):
    plain = weight.detach().contiguous().requires_grad_()

    def fn():
        y = getattr(F, op)(x, plain, None, *args)
        return torch.autograd.grad(y, (x, plain), torch.ones_like(y))
    return fn


def _weights(shape, device):
    """Storage with spare capacity, soft-mask logits and frozen bits for a weight of ``shape``."""
    spare = (shape[0] + 8, shape[1] + 8) + tuple(shape[2:])
    storage = (torch.randn(spare, device=device) / shape[0] ** 0.5).requires_grad_()
    logits = torch.randn(shape, device=device, requires_grad=True)
    frozen = bits.pack(torch.rand(shape, device=device) < 0.3)
    return storage, logits, frozen


def _bench(benchmark, synced, impl, op, x, shape, args, device):
    storage, logits, frozen = _weights(shape, device)
    if impl == "limit":
        fn = _limit(op, x, storage[: shape[0], : shape[1]], *args)
    else:
        fn = _masked(impl, op, x, storage, shape, logits, frozen, *args)
    benchmark(synced(fn))


@pytest.mark.parametrize("impl", IMPLS)
def test_upsampling_layer_forward_backward(benchmark, shape, impl, device, synced):
    batch, c_in, c_out, h = shape
    benchmark.group = f"convT-k4s2p1-fwd+bwd-{'x'.join(map(str, shape))}"
    x = torch.randn(batch, c_in, h, h, device=device, requires_grad=True)
    _bench(benchmark, synced, impl, "conv_transpose2d", x, (c_in, c_out, 4, 4), (2, 1), device)


@pytest.mark.parametrize("first_shape", FIRST_SHAPES, ids=["x".join(map(str, s)) for s in FIRST_SHAPES])
@pytest.mark.parametrize("impl", IMPLS)
def test_first_layer_forward_backward(benchmark, first_shape, impl, device, synced):
    batch, c_in, c_out = first_shape
    benchmark.group = f"convT-k4-1x1-fwd+bwd-{'x'.join(map(str, first_shape))}"
    x = torch.randn(batch, c_in, 1, 1, device=device, requires_grad=True)
    _bench(benchmark, synced, impl, "conv_transpose2d", x, (c_in, c_out, 4, 4), (), device)


@pytest.mark.parametrize("linear_shape", LINEAR_SHAPES, ids=["x".join(map(str, s)) for s in LINEAR_SHAPES])
@pytest.mark.parametrize("impl", IMPLS)
def test_linear_forward_backward(benchmark, linear_shape, impl, device, synced):
    batch, n_in, n_out = linear_shape
    benchmark.group = f"linear-fwd+bwd-{'x'.join(map(str, linear_shape))}"
    x = torch.randn(batch, n_in, device=device, requires_grad=True)
    _bench(benchmark, synced, impl, "linear", x, (n_out, n_in), (), device)
