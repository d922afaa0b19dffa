"""Autotuning that fits the device: configs pruned to its shared memory before benchmarking, and
the autotune keys of the conv kernels covering every argument that changes the best config."""

import inspect

import pytest
import torch
import triton

from dgm.kernels import conv_kernels, launch, linear_kernels

TILE = ("BLOCK_M", "BLOCK_N", "BLOCK_K")


def _config(bm, bn, bk, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=stages)


def test_shared_estimate_counts_every_stage_of_both_tiles_and_the_mask():
    # 3 stages of a 128x64 fp16 tile, a 64x128 fp16 tile and its fp32 logits.
    assert launch.shared_estimate(_config(128, 128, 64, 3), TILE, (2, 2, 4)) == 3 * (128 * 64 * 2 + 64 * 128 * 6)


def test_pruning_keeps_the_configs_that_fit():
    configs = [_config(128, 128, 64, 3), _config(64, 64, 32, 3), _config(128, 128, 32, 4)]
    a, w, lg = torch.empty(8, 8), torch.empty(8, 8), torch.empty(8, 8)
    nargs = {"a": a, "w": w, "lg": lg}
    kw = dict(tile=TILE, operands=("a", "w"), mask="lg")
    # fp32 with logits: 294,912, 49,152 and 196,608 bytes; an A100-like 163 KB keeps the middle one.
    assert launch.prune_to_shared_memory(configs, nargs, limit=163 * 1024, **kw) == [configs[1]]
    assert launch.prune_to_shared_memory(configs, nargs, limit=227 * 1024, **kw) == configs[1:]
    # Nothing fits: the smallest still runs (the autotuner needs one).
    assert launch.prune_to_shared_memory(configs, nargs, limit=1024, **kw) == [configs[1]]
    # Off a GPU (the interpreter), nothing is pruned.
    assert launch.prune_to_shared_memory(configs, nargs, **kw) == configs


@pytest.mark.parametrize("kernel", [conv_kernels._conv_kernel, conv_kernels._conv_wgrad_kernel,
                                    linear_kernels._masked_mm_kernel, linear_kernels._masked_wgrad_kernel,
                                    linear_kernels._masked_mm_ieee, linear_kernels._masked_wgrad_ieee],
                         ids=["conv", "conv_wgrad", "linear", "linear_wgrad", "linear_ieee", "linear_wgrad_ieee"])
def test_autotune_key_holds_every_scalar_and_flag(kernel):
    """Every runtime size and geometry, and every compile-time flag but the tile, is in the key
    (strides only address memory; the tensors' dtypes are keyed by Triton itself)."""
    params = inspect.signature(kernel.fn.fn).parameters
    tile = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "BLOCK_R", "BLOCK_C", "BLOCK_B", "GROUP_R"}
    wanted = {p for p in params if not p.endswith("_ptr") and not p.startswith("s") and p not in tile}
    wanted |= {p for p in params if p.startswith(("stride_", "step_", "dstep_")) and p not in tile}
    wanted -= {p for p in params if p.startswith(("step_", "dstep_"))}  # derived from stride and dilation
    assert wanted <= set(kernel.keys), sorted(wanted - set(kernel.keys))
