"""The generator's first layer (conv-transpose k=4 from a 1x1 input, a single GEMM) under a soft
weight mask, forward+backward: reference vs the fused Triton GEMM vs the unmasked limit
(``F.conv_transpose2d`` on a plain weight). Shapes are ``(batch, in_channels, out_channels)``.
The Triton column skips on a CPU: the interpreter runs the kernels in Python and measures nothing.
"""

import pytest
import torch
import torch.nn.functional as F

from dgm import bits
from dgm.ops import reference

CPU_SHAPES = [(64, 100, 24)]
GPU_SHAPES = [(64, 100, 24), (256, 110, 256), (1024, 512, 512)]


@pytest.mark.parametrize("impl", ["reference", "triton", "limit"])
def test_first_layer_forward_backward(benchmark, shape, impl, device, synced):
    benchmark.group = f"convT-k4-1x1-fwd+bwd-{'x'.join(map(str, shape))}"
    batch, c_in, c_out = shape
    storage = (torch.randn(c_in + 8, c_out + 8, 4, 4, device=device) / c_in ** 0.5).requires_grad_()
    x = torch.randn(batch, c_in, 1, 1, device=device, requires_grad=True)
    logits = torch.randn(c_in, c_out, 4, 4, device=device, requires_grad=True)
    frozen = bits.pack(torch.rand(c_in, c_out, 4, 4, device=device) < 0.3)
    if impl == "limit":
        plain = storage[:c_in, :c_out].detach().contiguous().requires_grad_()

        def fn():
            y = F.conv_transpose2d(x, plain)
            return torch.autograd.grad(y, (x, plain), torch.ones_like(y))
    else:
        if impl == "triton" and not torch.cuda.is_available():
            pytest.skip("triton column: no GPU, and the interpreter is not a speed measure")
        import dgm.kernels
        mod = dgm.kernels if impl == "triton" else reference

        def fn():
            y = mod.conv_transpose2d(x, storage[:c_in, :c_out], None, 1, 0, 0, 1, 1, logits=logits, s=2.0,
                                     frozen_bits=frozen)
            return torch.autograd.grad(y, (x, storage, logits), torch.ones_like(y))
    benchmark(synced(fn))
