"""The generator's masked conv-transposes under a soft weight mask with frozen bits (a training
step of DGMw): reference vs the fused Triton implicit GEMM vs the unmasked limit
(``F.conv_transpose2d`` on a plain weight). The weight is a strided view of a larger storage, as
the growing layers pass it. The Triton column skips on a CPU: the interpreter runs the kernels in
Python and measures nothing.

``test_first_layer_forward_backward``: the first layer, k=4 from a 1x1 input; shapes are
``(batch, in, out)``. ``test_upsampling_layer``: the k=4 s=2 p=1 layers (``size -> 2 * size``);
shapes are ``(batch, in, out, size)``, ``ngf=6`` at the paper's start (24->12 at 4x4, 12->6 at
8x8), then grown and larger widths.
"""

import pytest
import torch
import torch.nn.functional as F

from dgm import bits
from dgm.ops import reference

CPU_SHAPES = [(64, 100, 24)]
GPU_SHAPES = [(64, 100, 24), (256, 110, 256), (1024, 512, 512)]
UP_CPU_SHAPES = [(8, 12, 6, 8)]
UP_GPU_SHAPES = [(64, 24, 12, 4), (64, 12, 6, 8), (64, 96, 48, 8), (64, 48, 24, 16), (256, 256, 128, 16),
                 (256, 128, 64, 32)]


def _module(impl):
    if impl == "triton" and not torch.cuda.is_available():
        pytest.skip("triton column: no GPU, and the interpreter is not a speed measure")
    import dgm.kernels
    return dgm.kernels if impl == "triton" else reference


def _layer(impl, c_in, c_out, device, stride, padding):
    """``fn(x)`` = the masked (or, for ``limit``, plain) conv-transpose, and its trainable tensors."""
    storage = (torch.randn(c_in + 8, c_out + 8, 4, 4, device=device) / c_in ** 0.5).requires_grad_()
    if impl == "limit":
        plain = storage[:c_in, :c_out].detach().contiguous().requires_grad_()
        return (lambda x: F.conv_transpose2d(x, plain, None, stride, padding)), (plain,)
    mod = _module(impl)
    logits = torch.randn(c_in, c_out, 4, 4, device=device, requires_grad=True)
    frozen = bits.pack(torch.rand(c_in, c_out, 4, 4, device=device) < 0.3)

    def fn(x):
        return mod.conv_transpose2d(x, storage[:c_in, :c_out], None, stride, padding, 0, 1, 1, logits=logits, s=2.0,
                                    frozen_bits=frozen)
    return fn, (storage, logits)


@pytest.mark.parametrize("impl", ["reference", "triton", "limit"])
def test_first_layer_forward_backward(benchmark, shape, impl, device, synced):
    benchmark.group = f"convT-k4-1x1-fwd+bwd-{'x'.join(map(str, shape))}"
    batch, c_in, c_out = shape
    x = torch.randn(batch, c_in, 1, 1, device=device, requires_grad=True)
    fn, params = _layer(impl, c_in, c_out, device, 1, 0)

    def step():
        y = fn(x)
        return torch.autograd.grad(y, (x,) + params, torch.ones_like(y))
    benchmark(synced(step))


@pytest.mark.parametrize("impl", ["reference", "triton", "limit"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("up_shape", UP_GPU_SHAPES if torch.cuda.is_available() else UP_CPU_SHAPES,
                         ids=lambda s: "x".join(map(str, s)))
def test_upsampling_layer(benchmark, up_shape, mode, impl, device, synced):
    benchmark.group = f"convT-k4s2p1-{mode}-{'x'.join(map(str, up_shape))}"
    batch, c_in, c_out, size = up_shape
    x = torch.randn(batch, c_in, size, size, device=device, requires_grad=True)
    fn, params = _layer(impl, c_in, c_out, device, 2, 1)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return fn(x)
    else:
        def step():
            y = fn(x)
            return torch.autograd.grad(y, (x,) + params, torch.ones_like(y))
    benchmark(synced(step))
