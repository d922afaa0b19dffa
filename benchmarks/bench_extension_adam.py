"""One optimiser step over a DGM generator's parameters (conv-transpose weights, their mask
logits, biases), 30% of the weights reserved: FrozenAdam through the extension (one multi-tensor
launch that skips reserved entries) vs its pure-PyTorch reference (full update, then ``where``)
vs plain Adam with no reservation (``fused=True`` on a GPU, ``foreach`` on a CPU), the limit.
Group ``adam-step-<ngf>``: the generator's base width.
"""

import itertools

import pytest
import torch

from dgm.frozen_adam import FrozenAdam

CPU_SHAPES = [(16,)]
GPU_SHAPES = [(16,), (64,), (256,)]


def _generator_params(ngf, device):
    """Weights of a 4-layer DCGAN generator (z=100 -> 32x32x3) of base width ``ngf``, with the
    logits and biases a DGMw layer trains alongside."""
    chans = [100, 4 * ngf, 2 * ngf, ngf, 3]
    params = []
    for c_in, c_out in itertools.pairwise(chans):
        params += [torch.randn(c_in, c_out, 4, 4, device=device), torch.randn(c_in, c_out, 4, 4, device=device),
                   torch.randn(c_out, device=device)]
    for p in params:
        p.requires_grad_()
        p.grad = torch.randn_like(p)
    return params


@pytest.mark.parametrize("impl", ["frozen-extension", "frozen-reference", "adam"])
def test_step(benchmark, shape, impl, device, synced):
    (ngf,) = shape
    benchmark.group = f"adam-step-{ngf}"
    params = _generator_params(ngf, device)
    if impl == "adam":
        opt = torch.optim.Adam(params, lr=1e-3, **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    else:
        opt = FrozenAdam(params, lr=1e-3, backend=impl.split("-")[1])
        opt.set_reserved({p: torch.rand(p.shape, device=device) < 0.3 for p in params[0::3]})
    opt.step()  # state allocated outside the timing
    benchmark(synced(opt.step))
