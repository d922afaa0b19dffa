"""What every launcher passes besides the tensors: autotune configs, the dot precision, strides of
optional tensors, and the compile-time kinds of the mask and freeze arguments."""

from __future__ import annotations

import functools
import inspect
import os

import torch
import triton

from .jit_helpers import FROZEN_BITS, FROZEN_NONE, FROZEN_UNITS, MASK_BITS, MASK_NONE, MASK_SOFT


def interpreting() -> bool:
    """Triton kernels run on the CPU interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def gemm_configs(m: str, n: str, k: str, group: str, exclude=()) -> list[triton.Config]:
    """A handful of tile shapes on a GPU, less the ``exclude``d ``(m, n, k, stages, warps)`` (tiles
    a kernel spills in: ``benchmarks/static_report.py``); one under the interpreter (no
    benchmarking there)."""
    if interpreting():
        return [triton.Config({m: 64, n: 64, k: 64, group: 8}, num_warps=4, num_stages=1)]
    shapes = [(128, 128, 32, 4, 8), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 64, 3, 4),
              (128, 128, 64, 3, 8), (32, 64, 64, 4, 4), (64, 32, 64, 4, 2)]
    return [triton.Config({m: bm, n: bn, k: bk, group: 8}, num_stages=st, num_warps=w)
            for bm, bn, bk, st, w in shapes if (bm, bn, bk, st, w) not in exclude]


def autotune_options(m: str, n: str, k: str, operands: tuple[str, ...], k_loop_mask: str | None = None) -> dict:
    """The ``@triton.autotune`` options every GEMM kernel shares: configs pruned to the device's
    shared memory before any is benchmarked, and tuned configs cached on disk across runs where
    the installed Triton can (``cache_results``, checked by feature). ``operands`` name the two
    pointer arguments whose tiles the k-loop stages (``BLOCK_m x BLOCK_k`` and ``BLOCK_k x
    BLOCK_n``), ``k_loop_mask`` the logits it stages with the second."""
    prune = functools.partial(prune_to_shared_memory, tile=(m, n, k), operands=operands, mask=k_loop_mask)
    options = {"prune_configs_by": {"early_config_prune": prune}}
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        options["cache_results"] = True
    return options


def shared_estimate(config: triton.Config, tile: tuple[str, str, str], sizes: tuple[int, int, int]) -> int:
    """Bytes of shared memory the k-loop stages need, at most: ``num_stages`` buffers of the two
    operand tiles (``sizes``: bytes per element of the first, the second and the mask staged with
    it). An upper bound of what Triton allocates (it keeps ``num_stages - 1`` in flight)."""
    bm, bn, bk = (config.kwargs[name] for name in tile)
    a, b, mask = sizes
    return config.num_stages * (bm * bk * a + bk * bn * (b + mask))


@functools.lru_cache(maxsize=None)
def shared_memory_limit(device: torch.device) -> int:
    """Shared memory a block may opt into on ``device``."""
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def prune_to_shared_memory(configs, nargs, *, tile, operands, mask=None, limit=None, **_):
    """``early_config_prune``: the configs whose staged tiles fit the device's shared memory (all
    of them when the operands are not on a CUDA device); the smallest one if none fits."""
    a, b = (nargs[name] for name in operands)
    if limit is None:
        if not isinstance(a, torch.Tensor) or a.device.type != "cuda":
            return configs
        limit = shared_memory_limit(a.device)
    lg = nargs.get(mask) if mask else None
    sizes = (a.element_size(), b.element_size(), lg.element_size() if isinstance(lg, torch.Tensor) else 0)
    fit = [c for c in configs if shared_estimate(c, tile, sizes) <= limit]
    return fit or [min(configs, key=lambda c: shared_estimate(c, tile, sizes))]


def input_precision(dtype: torch.dtype) -> str:
    """The fp32 dot precision: tf32 where PyTorch's own matmuls may use it."""
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def strides(t: torch.Tensor | None, dims: int) -> tuple[int, ...]:
    """``t``'s strides, or ``dims`` zeros for an absent optional tensor."""
    return tuple(t.stride()) if t is not None else (0,) * dims


def task_strides(bits: torch.Tensor | None) -> tuple[int, int, int]:
    """Packed bits' (task, row, byte) strides; one task's 2-D bits have task stride 0."""
    if bits is None:
        return 0, 0, 0
    if bits.dim() == 3:
        return tuple(bits.stride())
    return (0,) + tuple(bits.stride())


def scale_strides(scale: torch.Tensor | None) -> tuple[int, int]:
    """``unit_scale``'s (row, unit) strides; a per-unit scale has row stride 0."""
    if scale is None:
        return 0, 0
    if scale.dim() == 1:
        return 0, scale.stride(0)
    return tuple(scale.stride())


def mask_kind(logits, bits) -> int:
    """The kernels' ``MASK`` for these mask arguments (weight or bias)."""
    kind = MASK_SOFT if logits is not None else MASK_BITS if bits is not None else MASK_NONE
    return kind.value


def frozen_kind(frozen_bits, frozen_out) -> int:
    """The weight-gradient kernels' ``FROZEN`` for these freeze arguments."""
    kind = FROZEN_BITS if frozen_bits is not None else FROZEN_UNITS if frozen_out is not None else FROZEN_NONE
    return kind.value


def as_u8(flags: torch.Tensor | None) -> torch.Tensor | None:
    """Unit flags as the kernels load them: a bool tensor viewed as uint8 in place."""
    return flags.view(torch.uint8) if flags is not None and flags.dtype == torch.bool else flags
