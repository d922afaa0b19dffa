"""The Triton kernels of the masked linear: the masked weight, and two GEMMs with the DGM mask
formed in registers where it is not formed beforehand.

* :func:`masked_weight` -- ``W_eff = W * m`` in one pass (``m`` the soft mask or one task's bits),
  which the forward and the input gradient then read unmasked (:mod:`.linear_op`).
* :func:`masked_mm` -- ``C = A @ op(W_eff)``: the forward (``op = transpose``) and the input
  gradient (``op = identity``). The k-loop loads a weight tile and its mask tile (logits ->
  ``sigmoid(s * logits)``, or packed bits -> one bit) and multiplies them before the dot; the
  epilogue adds the masked bias and scales each output unit (DGMa), optionally saving the
  pre-scale output for the ``unit_scale`` gradient.
* :func:`masked_wgrad` -- ``G = P^T Q`` in weight coordinates; its epilogue writes
  ``grad_W = G * m`` with the frozen entries zeroed (packed frozen bits, or HAT's reserved
  ``out_i & in_j``) and, for the soft mask, ``grad_logits = G * W * s * m * (1 - m)``.

Replay (``perm``/``sorted_task``): the host sorts the batch rows by task once (torch ops, no
device sync) and the kernels read and write rows through that permutation. A forward M-tile
then covers few tasks; the program runs its k-loop once per task present in the tile, with that
task's bits and the other rows' A entries masked to zero, like a grouped GEMM without padding
(at most ``T - 1`` tiles in the whole grid run more than one pass). The weight gradient loops
over the task segments, reduces each with its own dot and adds it under its task's bits.

Weights are read through their strides, so views of a larger storage never get copied. The 2-D
weight matrix has rows ``R`` and columns ``C`` (bits are packed along ``C``, see :mod:`dgm.bits`).

fp32 inputs use ``input_precision`` ``"tf32"`` when ``torch.backends.cuda.matmul.allow_tf32``
is set (as ``F.linear`` does) and ``"ieee"`` otherwise; the interpreter always computes exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .jit_helpers import (
    MASK_BITS,
    MASK_NONE,
    apply_mask,
    freeze_store,
    grad_mask_epilogue,
    load_masked_weight,
    load_sharpness,
    replay_tasks,
    tile_offsets,
    unit_epilogue,
    weight_tile,
)


@triton.jit
def _k_loop(acc, a_ptr, rows, sel, sa_m, sa_k, w_ptr, sw_0, sw_1, l_ptr, sl_0, sl_1, bits_ptr, sb_0, sb_1, s,
            offs_n, n_ok, K, MASK: tl.constexpr, W_ROWS_ARE_N: tl.constexpr, PREC: tl.constexpr,
            BLOCK_K: tl.constexpr):
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + rows[:, None] * sa_m + offs_k[None, :] * sa_k, mask=sel[:, None] & k_ok[None, :],
                    other=0.0)
        if W_ROWS_ARE_N:
            wr = offs_n[None, :]
            wc = offs_k[:, None]
        else:
            wr = offs_k[:, None]
            wc = offs_n[None, :]
        ok = k_ok[:, None] & n_ok[None, :]
        w = load_masked_weight(w_ptr, wr * sw_0 + wc * sw_1, ok, wc, l_ptr, wr * sl_0 + wc * sl_1, bits_ptr,
                               wr * sb_0 + (wc >> 3) * sb_1, s, MASK)
        acc = tl.dot(a, w.to(a.dtype), acc, input_precision=PREC)
    return acc


_MM_OPTIONS = launch.autotune_options("BLOCK_M", "BLOCK_N", "BLOCK_K", ("a_ptr", "w_ptr"), "l_ptr")


# 64x32x64 with 2 warps spills 244 B in the fp16 forward on sm_80 (static report, Triton 3.8).
@triton.autotune(configs=launch.gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M",
                                             exclude=[(64, 32, 64, 4, 2)]),
                 key=["M", "N", "K", "MASK", "PER_ROW", "W_ROWS_ARE_N", "HAS_BIAS", "BIAS_MASK", "HAS_SCALE",
                      "WRITE_PRE", "PREC"], **_MM_OPTIONS)
@triton.jit
def _masked_mm_kernel(
        # Operands and output: A [M, K], the weight matrix W ([N, K] or [K, N]), C [M, N].
        a_ptr, w_ptr, c_ptr,
        # Weight mask: logits (W's shape) or packed bits (one task's, or [T, ...] for replay).
        l_ptr, bits_ptr,
        # Replay: the rows sorted by task and their tasks.
        perm_ptr, task_ptr,
        # Epilogue: bias [N] with its logits or bits, unit scale ([N] or [M, N]), pre-scale copy.
        bias_ptr, bl_ptr, bb_ptr, scale_ptr, pre_ptr,
        # Sizes, and the mask sharpness's address.
        M, N, K, s_ptr,
        # Strides: A, W, logits, bits (task, row, byte), bias bits (task, unit), scale, C.
        sa_m, sa_k, sw_0, sw_1, sl_0, sl_1, sb_t, sb_0, sb_1, sbb_t, sbb_u, ss_m, ss_n, sc_m, sc_n,
        # What to compute.
        MASK: tl.constexpr, PER_ROW: tl.constexpr, W_ROWS_ARE_N: tl.constexpr, HAS_BIAS: tl.constexpr,
        BIAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, WRITE_PRE: tl.constexpr, PREC: tl.constexpr,
        # Tile shape (autotuned).
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    s = load_sharpness(s_ptr, MASK, BIAS_MASK)
    offs_m, offs_n, m_ok, n_ok = tile_offsets(M, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PER_ROW:
        rows, tasks, t_lo, t_hi = replay_tasks(perm_ptr, task_ptr, offs_m, m_ok)
        for t in range(t_lo, t_hi):
            sel = m_ok & (tasks == t)
            if tl.sum(sel.to(tl.int32), axis=0) > 0:
                acc = _k_loop(acc, a_ptr, rows, sel, sa_m, sa_k, w_ptr, sw_0, sw_1, l_ptr, sl_0, sl_1,
                              bits_ptr + t * sb_t, sb_0, sb_1, s, offs_n, n_ok, K, MASK,
                              W_ROWS_ARE_N, PREC, BLOCK_K)
    else:
        rows = offs_m.to(tl.int64)
        tasks = tl.zeros((BLOCK_M,), dtype=tl.int32)
        acc = _k_loop(acc, a_ptr, rows, m_ok, sa_m, sa_k, w_ptr, sw_0, sw_1, l_ptr, sl_0, sl_1, bits_ptr,
                      sb_0, sb_1, s, offs_n, n_ok, K, MASK, W_ROWS_ARE_N, PREC, BLOCK_K)
    unit_epilogue(acc, m_ok[:, None] & n_ok[None, :], c_ptr, pre_ptr, rows[:, None] * sc_m + offs_n[None, :] * sc_n,
                  rows, tasks, offs_n, n_ok, s, bias_ptr, bl_ptr, bb_ptr, sbb_t, sbb_u, scale_ptr, ss_m, ss_n,
                  HAS_BIAS, BIAS_MASK, HAS_SCALE, WRITE_PRE)


# fp32 without TF32 ("ieee") dots run on the FMA units with both operands in registers, where the
# shared GEMM tiles spill (static compile, Triton 3.8: the forward with bias on the masked weight
# 52-6448 B per thread in every tile on sm_80, 12-76 B in two on sm_90). Their own tiles take K-steps
# of 16 (32 on the smallest); each kernel ships those that spill on neither target in the static
# report (the forward also spilled in 128x64x16 and 64x64x16, the weight gradient in the larger ones).
# Not yet replay: the forward with per-row bits in the k-loop still spills 496-8068 B in fp32 ieee.
_IEEE_MM_SHAPES = [(128, 128, 16, 3, 8), (64, 128, 16, 3, 4), (32, 64, 32, 3, 4)]
_IEEE_WGRAD_SHAPES = [(64, 64, 16, 3, 4), (32, 64, 32, 3, 4)]


def _ieee_variant(kernel, names: tuple[str, str, str, str], shapes: list[tuple[int, ...]], options: dict):
    """The autotuned ``kernel``'s JIT function, same keys and ``options``, over the ieee ``shapes``
    (its own config under the interpreter); ``names`` are its tile parameters."""
    configs = kernel.configs if launch.interpreting() else [
        triton.Config(dict(zip(names, (a, b, k, 8))), num_stages=st, num_warps=w) for a, b, k, st, w in shapes]
    return triton.autotune(configs=configs, key=kernel.keys, **options)(kernel.fn)


_masked_mm_ieee = _ieee_variant(_masked_mm_kernel, ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"), _IEEE_MM_SHAPES,
                                _MM_OPTIONS)


@triton.jit
def _b_loop(acc, start, end, p_ptr, sp_b, sp_r, q_ptr, sq_b, sq_c, perm_ptr, offs_r, r_ok, offs_c, c_ok,
            PER_ROW: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr):
    for b0 in range(start, end, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        b_ok = offs_b < end
        if PER_ROW:
            rows = tl.load(perm_ptr + offs_b, mask=b_ok, other=0).to(tl.int64)
        else:
            rows = offs_b.to(tl.int64)
        p = tl.load(p_ptr + rows[None, :] * sp_b + offs_r[:, None] * sp_r, mask=r_ok[:, None] & b_ok[None, :],
                    other=0.0)
        q = tl.load(q_ptr + rows[:, None] * sq_b + offs_c[None, :] * sq_c, mask=b_ok[:, None] & c_ok[None, :],
                    other=0.0)
        acc = tl.dot(p, q, acc, input_precision=PREC)
    return acc


_WGRAD_OPTIONS = launch.autotune_options("BLOCK_R", "BLOCK_C", "BLOCK_B", ("p_ptr", "q_ptr"))


# The 128-row tiles spill 72-216 B in the fp16 weight gradient with the soft mask and the freeze
# on sm_80 and sm_90 (static report, Triton 3.8).
@triton.autotune(configs=launch.gemm_configs("BLOCK_R", "BLOCK_C", "BLOCK_B", "GROUP_R",
                                             exclude=[(128, 128, 32, 4, 8), (128, 64, 32, 4, 4), (128, 128, 64, 3, 8)]),
                 key=["R", "C", "B", "T", "MASK", "PER_ROW", "FROZEN", "HAS_IN_RES", "WRITE_W", "WRITE_L", "PREC"],
                 **_WGRAD_OPTIONS)
@triton.jit
def _masked_wgrad_kernel(
        # Operands: P [B, R] (the output gradient), Q [B, C] (the input); the weight W [R, C].
        p_ptr, q_ptr, w_ptr,
        # Weight mask (logits or bits), replay order and task offsets, freeze (bits or unit flags).
        l_ptr, bits_ptr, perm_ptr, off_ptr, fbits_ptr, fout_ptr, fin_ptr,
        # Outputs: grad_W, grad_logits.
        gw_ptr, gl_ptr,
        # Sizes, number of tasks, the mask sharpness's address.
        R, C, B, T, s_ptr,
        # Strides: P, Q, W, logits, bits (task, row, byte), frozen bits, grad_W, grad_logits.
        sp_b, sp_r, sq_b, sq_c, sw_0, sw_1, sl_0, sl_1, sb_t, sb_0, sb_1, sf_0, sf_1, sgw_0, sgw_1, sgl_0, sgl_1,
        # What to compute.
        MASK: tl.constexpr, PER_ROW: tl.constexpr, FROZEN: tl.constexpr, HAS_IN_RES: tl.constexpr,
        WRITE_W: tl.constexpr, WRITE_L: tl.constexpr, PREC: tl.constexpr,
        # Tile shape (autotuned).
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr, GROUP_R: tl.constexpr):
    s = load_sharpness(s_ptr, MASK, MASK_NONE)
    offs_r, offs_c, r_ok, c_ok, ok, wr, wc, b_off = weight_tile(R, C, sb_0, sb_1, BLOCK_R, BLOCK_C, GROUP_R)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    if PER_ROW:
        # One reduction per task segment of the sorted rows, each added under its own bits.
        for t in range(0, T):
            start = tl.load(off_ptr + t)
            end = tl.load(off_ptr + t + 1)
            if end > start:
                g = _b_loop(tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32), start, end, p_ptr, sp_b, sp_r,
                            q_ptr, sq_b, sq_c, perm_ptr, offs_r, r_ok, offs_c, c_ok, PER_ROW, PREC, BLOCK_B)
                acc += apply_mask(g, ok, wc, l_ptr, 0, bits_ptr + t * sb_t, b_off, s, MASK_BITS)
        gw = acc
    else:
        acc = _b_loop(acc, 0, B, p_ptr, sp_b, sp_r, q_ptr, sq_b, sq_c, perm_ptr, offs_r, r_ok, offs_c, c_ok,
                      PER_ROW, PREC, BLOCK_B)
        gw = grad_mask_epilogue(acc, ok, wc, w_ptr, wr * sw_0 + wc * sw_1, l_ptr, wr * sl_0 + wc * sl_1, bits_ptr,
                                b_off, gl_ptr, wr * sgl_0 + wc * sgl_1, s, MASK, WRITE_L)
    if WRITE_W:
        # The linear weight's rows are output units, one column per input unit.
        freeze_store(gw, offs_r, r_ok, offs_c, c_ok, gw_ptr, wr * sgw_0 + wc * sgw_1, fbits_ptr,
                     wr * sf_0 + (wc >> 3) * sf_1, fout_ptr, fin_ptr, 1, FROZEN, True, HAS_IN_RES)


# Its epilogue (mask, logit gradient, freeze) holds more live values: only the smaller tiles fit.
_masked_wgrad_ieee = _ieee_variant(_masked_wgrad_kernel, ("BLOCK_R", "BLOCK_C", "BLOCK_B", "GROUP_R"),
                                   _IEEE_WGRAD_SHAPES, _WGRAD_OPTIONS)


@triton.jit
def _masked_weight_kernel(w_ptr, l_ptr, bits_ptr, out_ptr, R, C, s_ptr, sw_0, sw_1, sl_0, sl_1, sb_0, sb_1,
                          MASK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s = load_sharpness(s_ptr, MASK, MASK_NONE)
    wr = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    wc = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    ok = (wr < R) & (wc < C)
    w = load_masked_weight(w_ptr, wr * sw_0 + wc * sw_1, ok, wc, l_ptr, wr * sl_0 + wc * sl_1, bits_ptr,
                           wr * sb_0 + (wc >> 3) * sb_1, s, MASK)
    tl.store(out_ptr + wr * C + wc, w, mask=ok)


def masked_weight(w: torch.Tensor, *, logits=None, s=None, bits=None) -> torch.Tensor:
    """``W * m`` for one task's mask (logits with ``s``, or packed bits), contiguous, in ``w``'s
    dtype: the same product and rounding as the GEMMs' in-register mask."""
    out = torch.empty(w.shape, device=w.device, dtype=w.dtype)
    R, C = w.shape
    if out.numel() == 0:
        return out
    block_r, block_c = (64, 64) if launch.interpreting() else (32, 128)
    grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
    _masked_weight_kernel[grid](w, logits, bits, out, R, C, s, *w.stride(), *launch.strides(logits, 2),
                                *launch.strides(bits, 2), MASK=launch.mask_kind(logits, bits), BLOCK_R=block_r,
                                BLOCK_C=block_c, num_warps=4)
    return out


def masked_mm(a: torch.Tensor, w: torch.Tensor, *, w_rows_are_n: bool, logits=None, s=None, bits=None,
              perm=None, sorted_task=None, bias=None, bias_logits=None, bias_bits=None, scale=None,
              write_pre: bool = False):
    """``A @ op(W * m)`` (+ masked bias, * unit scale), ``op`` = transpose if ``w_rows_are_n``.

    ``a`` is ``[M, K]``; the weight matrix ``w`` is ``[N, K]`` or ``[K, N]``. ``scale`` is per
    unit ``[N]`` or per row ``[M, N]``. Returns ``(c, pre)``, ``pre`` (the output before the
    scale) only when ``write_pre``.
    """
    M, K = a.shape
    N = w.shape[0] if w_rows_are_n else w.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    pre = torch.empty((M, N), device=a.device, dtype=a.dtype) if write_pre else None
    if M == 0 or N == 0:
        return c, pre
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    prec = launch.input_precision(a.dtype)
    kernel = _masked_mm_ieee if a.dtype == torch.float32 and prec == "ieee" else _masked_mm_kernel
    kernel[grid](
        a, w, c,
        logits, bits,
        perm, sorted_task,
        bias, bias_logits, bias_bits, scale, pre,
        M, N, K, s,
        *a.stride(), *w.stride(), *launch.strides(logits, 2), *launch.task_strides(bits),
        *launch.task_strides(bias_bits)[:2], *launch.scale_strides(scale), *c.stride(),
        MASK=launch.mask_kind(logits, bits), PER_ROW=perm is not None, W_ROWS_ARE_N=w_rows_are_n,
        HAS_BIAS=bias is not None, BIAS_MASK=launch.mask_kind(bias_logits, bias_bits),
        HAS_SCALE=scale is not None, WRITE_PRE=write_pre, PREC=prec,
    )
    return c, pre


def masked_wgrad(p: torch.Tensor, q: torch.Tensor, w: torch.Tensor, *, logits=None, s=None, bits=None,
                 perm=None, task_offsets=None, frozen_bits=None, frozen_out=None, frozen_in=None,
                 write_w: bool = True, write_logits: bool = False):
    """``G = P^T Q`` (``[R, C]``, the weight's shape) with the masked-gradient epilogue.

    Returns ``(grad_w, grad_logits)``, each ``None`` unless asked for. ``frozen_out``/``frozen_in``
    are HAT's reserved units (uint8 or bool), ``frozen_in=None`` meaning every input is reserved.
    """
    B, R = p.shape
    C = q.shape[1]
    gw = torch.empty(w.shape, device=w.device, dtype=w.dtype) if write_w else None
    gl = torch.empty(logits.shape, device=w.device, dtype=logits.dtype) if write_logits else None
    if R == 0 or C == 0 or not (write_w or write_logits):
        return gw, gl
    T = bits.shape[0] if perm is not None else 1
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]) * triton.cdiv(C, meta["BLOCK_C"]),)  # noqa: E731
    prec = launch.input_precision(p.dtype)
    kernel = _masked_wgrad_ieee if p.dtype == torch.float32 and prec == "ieee" else _masked_wgrad_kernel
    kernel[grid](
        p, q, w,
        logits, bits, perm, task_offsets, frozen_bits, launch.as_u8(frozen_out), launch.as_u8(frozen_in),
        gw, gl,
        R, C, B, T, s,
        *p.stride(), *q.stride(), *w.stride(), *launch.strides(logits, 2), *launch.task_strides(bits),
        *launch.strides(frozen_bits, 2), *launch.strides(gw, 2), *launch.strides(gl, 2),
        MASK=launch.mask_kind(logits, bits), PER_ROW=perm is not None,
        FROZEN=launch.frozen_kind(frozen_bits, frozen_out), HAS_IN_RES=frozen_in is not None, WRITE_W=write_w,
        WRITE_L=write_logits, PREC=prec,
    )
    return gw, gl
