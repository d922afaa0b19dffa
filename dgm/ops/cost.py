"""Cost model of one masked linear's training step per GPU backend, which ``auto`` follows.

Both fused backends form ``W_eff = W * m`` once (one pass over the weight) and run the step's three
GEMMs, forward ``X W_eff^T``, input gradient ``dY W_eff`` and weight gradient ``dY^T X``, each
``2 * batch * in * out`` FLOPs. They differ in who runs the GEMMs and in the passes around them:

* ``triton``: Triton GEMMs; the bias mask and unit scale in the forward's epilogue, ``grad_W`` and
  ``grad_logits`` in the weight gradient's epilogue (``G`` never stored); replay keeps each row's
  bits in the k-loop (one product's FLOPs whatever the tasks).
* ``extension``: cuBLAS GEMMs (``F.linear``); ``G`` stored, then one pass reads it with ``W`` and the
  logits and writes both gradients; the bias mask as torch ops; replay multiplies every task's
  masked weight (``tasks`` products, :func:`dgm.ops.reference.task_rows`).

Each kernel costs ``max(flops / (peak * efficiency), bytes / bandwidth)`` (it is bound by one or
the other) and every launch a fixed ``launch_s``; a backend's cost is the sum over its kernels.
The device numbers are the H100 SXM's data-sheet peaks, and the GEMM efficiencies and the launch
cost are assumptions, not measurements: ``benchmarks/bench_triton_linear.py`` measures both
backends at the same sizes on a GPU, and its ratios are what to set them from. The model only has
to order the backends; docs/benchmarks.md gives the reasoning and the crossover it implies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Gpu:
    """Throughputs of one device (data-sheet peaks; dense tensor-core FLOP/s per input dtype)."""
    flops: dict
    bandwidth: float          # bytes / s
    launch_s: float           # per kernel launch, eager
    efficiency: dict          # fraction of peak a backend's GEMM reaches


H100 = Gpu(flops={torch.float16: 989e12, torch.bfloat16: 989e12, torch.float32: 494e12},
           bandwidth=3.35e12, launch_s=5e-6, efficiency={"triton": 0.6, "extension": 0.75})
# fp32 without TF32 (allow_tf32 off) runs on the CUDA cores in both backends.
FP32_IEEE_FLOPS = 67e12


def linear_step_cost(backend: str, batch: int, n_in: int, n_out: int, dtype: torch.dtype, *, soft: bool,
                     tasks: int = 1, bias: bool = True, tf32: bool = True, gpu: Gpu = H100) -> float:
    """Modelled seconds of a masked linear's forward + backward on ``backend`` (``triton`` or
    ``extension``): ``sum_k max(F_k / (P * e), B_k / BW) + L * launch_s`` over its kernels ``k``, with

    * GEMMs: ``F = 2 M N K`` each (three; the extension's replay ``tasks`` times each),
      ``B = e (M K + N K + M N)``;
    * the masked-weight pass: ``B = N K (2 e + e_m)``, ``e_m = e`` for logits, ``1/8`` for bits
      (the extension's replay: ``tasks`` of them, written ``[tasks, N, K]``);
    * the weight-gradient epilogue: ``N K (e + 2 e_m)`` bytes (read ``W`` and the logits, write
      both gradients; ``e_m = 0`` without logits), in the GEMM for ``triton``, and for ``extension``
      a pass that also writes and reads ``G`` (``2 N K e`` more, one launch);
    * ``L``: launches -- ``triton`` 4 (weight pass, three GEMMs; replay 3, no weight pass),
      ``extension`` 7 (weight pass, three GEMMs, gradient pass, two bias-mask ops; replay adds
      the unpacking, the per-row gather and its backward).

    ``M, N, K = batch, out, in``, ``e`` the element size. Shared terms (the bias and unit-scale
    reductions, the freeze of the bias) are left out: they do not change the order.
    """
    if backend not in ("triton", "extension"):
        raise ValueError(f"backend must be 'triton' or 'extension', got {backend!r}")
    M, N, K = batch, n_out, n_in
    e = torch.empty((), dtype=dtype).element_size()
    e_m = e if soft else 0.125
    peak = gpu.flops[dtype] if (dtype != torch.float32 or tf32) else FP32_IEEE_FLOPS
    rate = peak * gpu.efficiency[backend]
    replay = tasks > 1
    products = tasks if backend == "extension" and replay else 1

    def kernel(flops: float, nbytes: float) -> float:
        return max(flops / rate, nbytes / gpu.bandwidth)

    gemm = kernel(2 * M * N * K * products, e * (M * K + N * K * products + M * N * products))
    weight_pass = N * K * (2 * e + e_m) * (products if replay else 1) / gpu.bandwidth
    grad_epilogue = N * K * (e + 2 * (e if soft else 0)) / gpu.bandwidth
    if backend == "triton":
        launches = 3 if replay else 4
        total = 3 * gemm + (0 if replay else weight_pass) + grad_epilogue
    else:
        launches = 7 + (3 if replay else 0)
        total = 3 * gemm + weight_pass + grad_epilogue + 2 * N * K * e / gpu.bandwidth
    return total + launches * gpu.launch_s


def linear_order(backends: tuple[str, ...], x: torch.Tensor, weight, kwargs: dict) -> tuple[str, ...]:
    """``backends`` with the fused ones (``triton``, ``extension``) in the order of
    :func:`linear_step_cost` for this call (shapes only: no device read), the others where they were."""
    fused = [b for b in backends if b in ("triton", "extension")]
    if len(fused) < 2 or not isinstance(weight, torch.Tensor) or weight.dim() != 2 or x.dtype not in H100.flops:
        return backends
    bits = kwargs.get("bits")
    tasks = bits.shape[0] if kwargs.get("row_task") is not None and bits is not None else 1
    batch = x.numel() // max(x.shape[-1], 1) if x.dim() else 0
    tf32 = torch.backends.cuda.matmul.allow_tf32
    soft = kwargs.get("logits") is not None
    cost = {b: linear_step_cost(b, batch, weight.shape[1], weight.shape[0], x.dtype, soft=soft, tasks=tasks, tf32=tf32)
            for b in fused}
    ranked = iter(sorted(fused, key=cost.__getitem__))
    return tuple(next(ranked) if b in cost else b for b in backends)
