"""Masked conv2d and conv-transpose2d as implicit GEMMs in Triton, the mask formed in registers.

Two kernels, sharing the mask and epilogue helpers of :mod:`.jit_helpers` with the linear's:

* :func:`conv_mm` -- a *direct* conv (``y = conv2d(x, W_eff)``; the forward of a conv and the
  input gradient of a conv-transpose) or a *transposed* conv (``conv_transpose2d``; the forward
  of a conv-transpose and the input gradient of a conv). ``M`` runs over output pixels
  ``(batch, oh, ow)``, ``N`` over output channels, ``K`` over ``(kh, kw, channel)``, taps outer;
  the A tile is gathered from the input through its strides (no im2col buffer), with the input
  rows and their bounds computed per step for the tile's rows, and the weight tile is read and
  masked like the linear's. The epilogue adds the masked bias and scales each unit (DGMa).
* :func:`conv_wgrad` -- the weight gradient ``G[r, (a, kh, kw)] = sum P[b, r, h, w] *
  Q[b, a, h * stride - pad + kh * dil, ...]`` (``P, Q = dY, X`` for a conv, ``X, dY`` for a
  conv-transpose) with the epilogue of the linear weight gradient (``grad_W`` masked and frozen,
  ``grad_logits``). One program per tap (grid axis 2) and ``[R, A]`` tile, so Q's rows and bounds
  are per position, not per tile entry.

A transposed conv is computed by sub-pixel phases, not by gathering every tap: output pixels
``oh = r + stride * i`` of one phase ``r`` only meet the taps ``kh = kh0 + j * step`` for which
``oh + pad - kh * dil`` is a multiple of ``stride``, and those read ``ih = i + base - j * dil'``.
Each program works on one phase (grid axis 1), so its K loop has only live taps: a stride-2
4x4 conv-transpose runs four dense 2x2 convs instead of one 4x4 conv of which 3/4 of the
products would be zeros. A direct conv is the single phase ``r = 0`` with every tap.

Weights, logits and activations are read through their 4-D strides: strided views of a larger
storage and channels_last tensors are used as they are (no copy). Packed bits address the 2-D
weight matrix ``(shape[0], rest)`` of :mod:`dgm.bits`; with ``perm``/``sorted_task`` (replay)
each batch row uses its task's bits, as in :mod:`.linear_kernels`.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from . import launch
from .jit_helpers import (
    MASK_BITS,
    MASK_NONE,
    freeze_store,
    grad_mask_epilogue,
    load_masked_weight,
    load_sharpness,
    replay_tasks,
    tile_offsets,
    unit_epilogue,
)


def _conv_configs(m: str, n: str, k: str, group: str, interpreted_k: int = 64):
    """Tiles of at most 32 accumulator entries per thread (wide ones on 8 warps) plus narrow ones
    for the generator's few channels (an N or R of 6 to 48): the implicit GEMM's gathered rows
    cannot be stored as vectors, so a larger share per thread spills (``benchmarks/static_report.py``,
    sm_80 and sm_90). One config under the interpreter, its K step ``interpreted_k`` (the forward's
    channel step: the tests' few channels would fill a fraction of 64 at every tap)."""
    if launch.interpreting():
        return [triton.Config({m: 64, n: 64, k: interpreted_k, group: 8}, num_warps=4, num_stages=1)]
    shapes = [(128, 64, 32, 3, 8), (64, 128, 32, 3, 8), (64, 64, 32, 3, 4), (32, 64, 32, 3, 4), (32, 32, 32, 3, 4),
              (64, 16, 32, 3, 4)]
    return [triton.Config({m: bm, n: bn, k: bk, group: 8}, num_stages=st, num_warps=w) for bm, bn, bk, st, w in shapes]


@triton.jit
def _taps(r, stride, pad, dil, step, dstep, KS, TRANSPOSED: tl.constexpr):
    """Along one spatial axis, for phase ``r``: ``(k0, step, n, a, base, d)`` -- tap ``j`` is kernel
    index ``k0 + j * step``, there are ``n`` taps, and output index ``i`` of the phase reads input
    ``i * a + base + j * d``."""
    if TRANSPOSED:
        k0 = step
        for j in range(0, step):
            k0 = tl.where(((r + pad - j * dil) % stride == 0) & (k0 == step), j, k0)
        n = tl.where(k0 < step, tl.maximum((KS - k0 + step - 1) // step, 0), 0)
        return k0, step, n, 1, (r + pad - k0 * dil) // stride, -dstep
    else:
        return 0, 1, KS, stride, -pad, dil


@triton.jit
def _conv_k_loop(acc, x_ptr, x_row, ih0, iw0, sel, sx_c, sx_h, sx_w, IH, IW, C,
                 kh0, step_h, nh, d_h, kw0, step_w, nw, d_w, KH, KW,
                 w_ptr, sw_0, sw_1, sw_2, sw_3, l_ptr, sl_0, sl_1, sl_2, sl_3, bits_ptr, sb_0, sb_1, s,
                 offs_n, n_ok, MASK: tl.constexpr, TRANSPOSED: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """``acc +=`` the phase's implicit GEMM, its K ordered (tap, channel): each step is one tap's
    chunk of channels, so the input rows and their bounds are vectors over the tile's rows and
    the tile adds a channel offset to them (no index arithmetic per tile entry)."""
    offs_c = tl.arange(0, BLOCK_K)
    chunks = tl.cdiv(C, BLOCK_K)
    for step in range(0, nh * nw * chunks):
        # Scalar index arithmetic only: the tap and the channel chunk of this step.
        t = step // chunks
        c = (step % chunks) * BLOCK_K + offs_c
        th = t // nw
        tw = t % nw
        ih = ih0 + th * d_h
        iw = iw0 + tw * d_w
        row_ok = sel & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
        kh = kh0 + th * step_h
        kw = kw0 + tw * step_w
        c_ok = c < C
        a = tl.load(x_ptr + (x_row + ih * sx_h + iw * sx_w)[:, None] + c[None, :] * sx_c,
                    mask=row_ok[:, None] & c_ok[None, :], other=0.0)
        if TRANSPOSED:
            wr = c[:, None]
            ch = offs_n[None, :]
        else:
            wr = offs_n[None, :]
            ch = c[:, None]
        # The column of the 2-D weight matrix (only packed bits use it).
        wc = ch * (KH * KW) + (kh * KW + kw)
        ok = c_ok[:, None] & n_ok[None, :]
        w = load_masked_weight(w_ptr, wr * sw_0 + ch * sw_1 + (kh * sw_2 + kw * sw_3), ok, wc, l_ptr,
                               wr * sl_0 + ch * sl_1 + (kh * sl_2 + kw * sl_3), bits_ptr, wr * sb_0 + (wc >> 3) * sb_1,
                               s, MASK)
        acc = tl.dot(a, w.to(a.dtype), acc, input_precision=PREC)
    return acc


@triton.autotune(configs=_conv_configs("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", interpreted_k=16),
                 key=["BATCH", "C", "N", "IH", "IW", "OH", "OW", "KH", "KW", "stride_h", "stride_w", "pad_h", "pad_w",
                      "dil_h", "dil_w", "MASK", "PER_ROW", "TRANSPOSED", "HAS_BIAS", "BIAS_MASK", "HAS_SCALE",
                      "WRITE_PRE", "PREC"],
                 **launch.autotune_options("BLOCK_M", "BLOCK_N", "BLOCK_K", ("x_ptr", "w_ptr"), "l_ptr"))
@triton.jit
def _conv_kernel(
        # Input [B, C, IH, IW], weight ([N, C, KH, KW], or [C, N, KH, KW] when TRANSPOSED), output.
        x_ptr, w_ptr, y_ptr,
        # Weight mask: logits (the weight's shape) or packed bits (one task's, or [T, ...] for replay).
        l_ptr, bits_ptr,
        # Replay: the batch rows sorted by task and their tasks.
        perm_ptr, task_ptr,
        # Epilogue: bias [N] with its logits or bits, unit scale ([N] or [B, N]), pre-scale copy.
        bias_ptr, bl_ptr, bb_ptr, scale_ptr, pre_ptr,
        # Sizes, and the mask sharpness's address.
        BATCH, C, IH, IW, N, OH, OW, KH, KW, s_ptr,
        # Geometry, and the tap and input steps of a transposed conv's phases (_phase_steps).
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, step_h, step_w, dstep_h, dstep_w,
        # Strides: input, weight, logits, bits (task, row, byte), bias bits (task, unit), scale, output.
        sx_b, sx_c, sx_h, sx_w, sw_0, sw_1, sw_2, sw_3, sl_0, sl_1, sl_2, sl_3, sb_t, sb_0, sb_1, sbb_t, sbb_u,
        ss_b, ss_n, sy_b, sy_n, sy_h, sy_w,
        # What to compute.
        MASK: tl.constexpr, PER_ROW: tl.constexpr, TRANSPOSED: tl.constexpr, HAS_BIAS: tl.constexpr,
        BIAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, WRITE_PRE: tl.constexpr, PREC: tl.constexpr,
        # Tile shape (autotuned).
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    s = load_sharpness(s_ptr, MASK, BIAS_MASK)
    if TRANSPOSED:
        rh = tl.program_id(1) // stride_w
        rw = tl.program_id(1) % stride_w
        out_h = (OH - rh + stride_h - 1) // stride_h
        out_w = (OW - rw + stride_w - 1) // stride_w
        pix_h = stride_h
        pix_w = stride_w
    else:
        rh = 0
        rw = 0
        out_h = OH
        out_w = OW
        pix_h = 1
        pix_w = 1
    kh0, tap_h, nh, a_h, base_h, d_h = _taps(rh, stride_h, pad_h, dil_h, step_h, dstep_h, KH, TRANSPOSED)
    kw0, tap_w, nw, a_w, base_w, d_w = _taps(rw, stride_w, pad_w, dil_w, step_w, dstep_w, KW, TRANSPOSED)
    # The grid covers the largest phase; the others mask their spare rows.
    M = BATCH * out_h * out_w
    M_grid = BATCH * ((OH + pix_h - 1) // pix_h) * ((OW + pix_w - 1) // pix_w)
    offs_m, offs_n, m_ok, n_ok = tile_offsets(M_grid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    bi = offs_m // (out_h * out_w)
    i = (offs_m // out_w) % out_h
    j = offs_m % out_w
    ih0 = i * a_h + base_h
    iw0 = j * a_w + base_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PER_ROW:
        b, tasks, t_lo, t_hi = replay_tasks(perm_ptr, task_ptr, bi, m_ok)
        for t in range(t_lo, t_hi):
            sel = m_ok & (tasks == t)
            if tl.sum(sel.to(tl.int32), axis=0) > 0:
                acc = _conv_k_loop(acc, x_ptr, b * sx_b, ih0, iw0, sel, sx_c, sx_h, sx_w, IH, IW, C,
                                   kh0, tap_h, nh, d_h, kw0, tap_w, nw, d_w, KH, KW,
                                   w_ptr, sw_0, sw_1, sw_2, sw_3, l_ptr, sl_0, sl_1, sl_2, sl_3,
                                   bits_ptr + t * sb_t, sb_0, sb_1, s, offs_n, n_ok, MASK, TRANSPOSED, PREC, BLOCK_K)
    else:
        b = bi.to(tl.int64)
        tasks = tl.zeros((BLOCK_M,), dtype=tl.int32)
        acc = _conv_k_loop(acc, x_ptr, b * sx_b, ih0, iw0, m_ok, sx_c, sx_h, sx_w, IH, IW, C,
                           kh0, tap_h, nh, d_h, kw0, tap_w, nw, d_w, KH, KW,
                           w_ptr, sw_0, sw_1, sw_2, sw_3, l_ptr, sl_0, sl_1, sl_2, sl_3,
                           bits_ptr, sb_0, sb_1, s, offs_n, n_ok, MASK, TRANSPOSED, PREC, BLOCK_K)
    oh = rh + i * pix_h
    ow = rw + j * pix_w
    y_off = (b * sy_b + oh * sy_h + ow * sy_w)[:, None] + offs_n[None, :] * sy_n
    unit_epilogue(acc, m_ok[:, None] & n_ok[None, :], y_ptr, pre_ptr, y_off, b, tasks, offs_n, n_ok, s,
                  bias_ptr, bl_ptr, bb_ptr, sbb_t, sbb_u, scale_ptr, ss_b, ss_n, HAS_BIAS, BIAS_MASK, HAS_SCALE,
                  WRITE_PRE)


@triton.jit
def _wgrad_loop(acc, start, end, p_ptr, sp_b, sp_c, sp_h, sp_w, q_ptr, sq_b, sq_c, sq_h, sq_w, perm_ptr,
                PH, PW, QH, QW, qh_0, qw_0, stride_h, stride_w, offs_r, r_ok, offs_a, a_ok,
                PER_ROW: tl.constexpr, PREC: tl.constexpr, BLOCK_B: tl.constexpr):
    """``acc += P^T Q`` over the flattened ``(batch, h, w)`` positions ``[start, end)`` of P, for
    one tap: Q's row of position ``(h, w)`` is ``(h * stride + qh_0, w * stride + qw_0)``, so
    positions, addresses and bounds are vectors over the positions of a step."""
    for l0 in range(start, end, BLOCK_B):
        offs_l = l0 + tl.arange(0, BLOCK_B)
        l_ok = offs_l < end
        bi = offs_l // (PH * PW)
        h = (offs_l // PW) % PH
        w = offs_l % PW
        if PER_ROW:
            b = tl.load(perm_ptr + bi, mask=l_ok, other=0).to(tl.int64)
        else:
            b = bi.to(tl.int64)
        p = tl.load(p_ptr + (b * sp_b + h * sp_h + w * sp_w)[None, :] + offs_r[:, None] * sp_c,
                    mask=r_ok[:, None] & l_ok[None, :], other=0.0)
        qh = h * stride_h + qh_0
        qw = w * stride_w + qw_0
        q_ok = l_ok & (qh >= 0) & (qh < QH) & (qw >= 0) & (qw < QW)
        q = tl.load(q_ptr + (b * sq_b + qh * sq_h + qw * sq_w)[:, None] + offs_a[None, :] * sq_c,
                    mask=q_ok[:, None] & a_ok[None, :], other=0.0)
        acc = tl.dot(p, q, acc, input_precision=PREC)
    return acc


@triton.autotune(configs=_conv_configs("BLOCK_R", "BLOCK_C", "BLOCK_B", "GROUP_R"),
                 key=["R", "A", "KH", "KW", "BATCH", "PH", "PW", "QH", "QW", "T", "CHUNK", "stride_h", "stride_w",
                      "pad_h", "pad_w", "dil_h", "dil_w", "MASK", "PER_ROW", "FROZEN", "OUT_ON_ROWS", "HAS_IN_RES",
                      "WRITE_W", "WRITE_L", "ATOMIC", "PREC"],
                 reset_to_zero=["gw_ptr", "gl_ptr"],
                 **launch.autotune_options("BLOCK_R", "BLOCK_C", "BLOCK_B", ("p_ptr", "q_ptr")))
@triton.jit
def _conv_wgrad_kernel(
        # Operands: P [B, R, PH, PW] and Q [B, A, QH, QW] (dY and X for a conv, X and dY for a
        # conv-transpose); the weight W [R, A, KH, KW].
        p_ptr, q_ptr, w_ptr,
        # Weight mask (logits or bits), replay order and task offsets, freeze (bits or unit flags).
        l_ptr, bits_ptr, perm_ptr, off_ptr, fbits_ptr, fout_ptr, fin_ptr,
        # Outputs: grad_W, grad_logits.
        gw_ptr, gl_ptr,
        # Sizes, number of tasks, positions per split-K program, the mask sharpness's address.
        R, A, KH, KW, BATCH, PH, PW, QH, QW, T, CHUNK, s_ptr,
        # Geometry of the forward conv.
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        # Strides: P, Q, W, logits, bits (task, row, byte), frozen bits, grad_W, grad_logits.
        sp_b, sp_c, sp_h, sp_w, sq_b, sq_c, sq_h, sq_w, sw_0, sw_1, sw_2, sw_3, sl_0, sl_1, sl_2, sl_3,
        sb_t, sb_0, sb_1, sf_0, sf_1, sgw_0, sgw_1, sgw_2, sgw_3, sgl_0, sgl_1, sgl_2, sgl_3,
        # What to compute.
        MASK: tl.constexpr, PER_ROW: tl.constexpr, FROZEN: tl.constexpr, OUT_ON_ROWS: tl.constexpr,
        HAS_IN_RES: tl.constexpr, WRITE_W: tl.constexpr, WRITE_L: tl.constexpr, ATOMIC: tl.constexpr,
        PREC: tl.constexpr,
        # Tile shape (autotuned).
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr, GROUP_R: tl.constexpr):
    s = load_sharpness(s_ptr, MASK, MASK_NONE)
    # Each program computes one tap (grid axis 2) of an [R, A] tile: ``G[r, a, kh, kw]``.
    kh = tl.program_id(2) // KW
    kw = tl.program_id(2) % KW
    # Split-K: program_id(1) reduces positions [lo, hi) and adds its share of every output.
    lo = tl.program_id(1) * CHUNK
    hi = tl.minimum(lo + CHUNK, BATCH * PH * PW)
    offs_r, offs_a, r_ok, a_ok = tile_offsets(R, R, A, BLOCK_R, BLOCK_C, GROUP_R)
    # Columns of the 2-D weight matrix (a, kh, kw), and the tile's offsets in each 4-D tensor.
    offs_c = offs_a * (KH * KW) + (kh * KW + kw)
    ok = r_ok[:, None] & a_ok[None, :]
    wr = offs_r[:, None]
    wa = offs_a[None, :]
    wc = offs_c[None, :]
    b_off = wr * sb_0 + (wc >> 3) * sb_1
    qh_0 = kh * dil_h - pad_h
    qw_0 = kw * dil_w - pad_w
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    if PER_ROW:
        # One reduction per task segment of the sorted batch, each added under its own bits.
        for t in range(0, T):
            start = tl.maximum(tl.load(off_ptr + t) * PH * PW, lo)
            end = tl.minimum(tl.load(off_ptr + t + 1) * PH * PW, hi)
            if end > start:
                g = _wgrad_loop(tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32), start, end, p_ptr,
                                sp_b, sp_c, sp_h, sp_w, q_ptr, sq_b, sq_c, sq_h, sq_w, perm_ptr, PH, PW, QH, QW,
                                qh_0, qw_0, stride_h, stride_w, offs_r, r_ok, offs_a, a_ok, PER_ROW, PREC, BLOCK_B)
                acc += grad_mask_epilogue(g, ok, wc, w_ptr, 0, l_ptr, 0, bits_ptr + t * sb_t, b_off, gl_ptr, 0, s,
                                          MASK_BITS, False, ATOMIC)
        gw = acc
    else:
        acc = _wgrad_loop(acc, lo, hi, p_ptr, sp_b, sp_c, sp_h, sp_w, q_ptr, sq_b, sq_c, sq_h, sq_w,
                          perm_ptr, PH, PW, QH, QW, qh_0, qw_0, stride_h, stride_w, offs_r, r_ok, offs_a, a_ok,
                          PER_ROW, PREC, BLOCK_B)
        gw = grad_mask_epilogue(acc, ok, wc, w_ptr, wr * sw_0 + wa * sw_1 + kh * sw_2 + kw * sw_3,
                                l_ptr, wr * sl_0 + wa * sl_1 + kh * sl_2 + kw * sl_3, bits_ptr, b_off,
                                gl_ptr, wr * sgl_0 + wa * sgl_1 + kh * sgl_2 + kw * sgl_3, s, MASK, WRITE_L, ATOMIC)
    if WRITE_W:
        freeze_store(gw, offs_r, r_ok, offs_c, a_ok, gw_ptr, wr * sgw_0 + wa * sgw_1 + kh * sgw_2 + kw * sgw_3,
                     fbits_ptr, wr * sf_0 + (wc >> 3) * sf_1, fout_ptr, fin_ptr, KH * KW, FROZEN, OUT_ON_ROWS,
                     HAS_IN_RES, ATOMIC)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def wgrad_splits(rows: int, cols: int, length: int, device: torch.device) -> int:
    """How many programs share the weight-gradient reduction over ``length`` positions: enough to
    fill the GPU when the weight has few tiles (the generator's small layers over a large batch
    of pixels). 1 under the interpreter and in deterministic mode (the split adds atomically)."""
    if device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        return 1
    tiles = triton.cdiv(rows, 64) * triton.cdiv(cols, 64)
    return max(1, min(triton.cdiv(2 * _sm_count(device), tiles), length // 2048))


def _phase_steps(stride: int, dil: int) -> tuple[int, int]:
    """Tap step and input step between live taps of one transposed-conv phase along an axis."""
    g = math.gcd(stride, dil)
    return stride // g, dil // g


def output_format(x: torch.Tensor) -> torch.memory_format:
    """The output keeps a channels_last input's layout, as cuDNN's convs do."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def conv_mm(x: torch.Tensor, weight: torch.Tensor, out_hw: tuple[int, int], *, transposed: bool,
            stride, padding, dilation, logits=None, s=None, bits=None, perm=None, sorted_task=None,
            bias=None, bias_logits=None, bias_bits=None, scale=None, write_pre: bool = False):
    """``conv2d`` (``transposed=False``, weight ``[N, C, kh, kw]``) or ``conv_transpose2d``
    (weight ``[C, N, kh, kw]``) of ``x`` ``[B, C, H, W]`` with the masked weight, output spatial
    size ``out_hw``, in ``x``'s memory format. ``scale`` is ``[N]`` or ``[B, N]``. Returns
    ``(y, pre)``, ``pre`` (before the scale) only when ``write_pre``."""
    B, C, IH, IW = x.shape
    N = weight.shape[1] if transposed else weight.shape[0]
    KH, KW = weight.shape[2:]
    OH, OW = out_hw
    y = torch.empty((B, N, OH, OW), device=x.device, dtype=x.dtype, memory_format=output_format(x))
    pre = torch.empty_like(y) if write_pre else None
    if y.numel() == 0:
        if pre is not None:
            pre.zero_()
        return y.zero_(), pre
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    step_h, dstep_h = _phase_steps(sh, dh)
    step_w, dstep_w = _phase_steps(sw, dw)
    phases = sh * sw if transposed else 1
    rows = B * (triton.cdiv(OH, sh) * triton.cdiv(OW, sw) if transposed else OH * OW)
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), phases)  # noqa: E731
    _conv_kernel[grid](
        x, weight, y,
        logits, bits,
        perm, sorted_task,
        bias, bias_logits, bias_bits, scale, pre,
        B, C, IH, IW, N, OH, OW, KH, KW, s,
        sh, sw, ph, pw, dh, dw, step_h, step_w, dstep_h, dstep_w,
        *x.stride(), *weight.stride(), *launch.strides(logits, 4), *launch.task_strides(bits),
        *launch.task_strides(bias_bits)[:2], *launch.scale_strides(scale), *y.stride(),
        MASK=launch.mask_kind(logits, bits), PER_ROW=perm is not None, TRANSPOSED=transposed,
        HAS_BIAS=bias is not None, BIAS_MASK=launch.mask_kind(bias_logits, bias_bits), HAS_SCALE=scale is not None,
        WRITE_PRE=write_pre, PREC=launch.input_precision(x.dtype),
    )
    return y, pre


def conv_wgrad(p: torch.Tensor, q: torch.Tensor, weight: torch.Tensor, *, stride, padding, dilation, logits=None,
               s=None, bits=None, perm=None, task_offsets=None, frozen_bits=None, frozen_out=None,
               frozen_in=None, out_on_rows: bool = True, write_w: bool = True, write_logits: bool = False):
    """``G[r, a, kh, kw] = sum P[b, r, h, w] Q[b, a, h * stride - pad + kh * dil, ...]`` (the
    weight's shape) with the masked-gradient epilogue. Returns ``(grad_w, grad_logits)``, each
    ``None`` unless asked for; ``frozen_in=None`` with ``frozen_out`` means every input is reserved."""
    R, A, KH, KW = weight.shape
    B, _, PH, PW = p.shape
    QH, QW = q.shape[2:]
    cols = A * KH * KW
    length = B * PH * PW
    splits = wgrad_splits(R, cols, length, weight.device)
    # Split partial sums accumulate atomically in zeroed fp32 buffers.
    alloc = torch.zeros if splits > 1 else torch.empty
    gw = alloc(weight.shape, device=weight.device, dtype=torch.float32 if splits > 1 else weight.dtype) \
        if write_w else None
    gl = alloc(logits.shape, device=weight.device, dtype=torch.float32 if splits > 1 else logits.dtype) \
        if write_logits else None
    if weight.numel() == 0 or not (write_w or write_logits):
        return gw, gl
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    # The autotuner zeroes both outputs between its trial runs (some Triton versions need tensors there).
    spare = weight.new_empty(1, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_R"]) * triton.cdiv(A, meta["BLOCK_C"]),  # noqa: E731
                         splits, KH * KW)
    _conv_wgrad_kernel[grid](
        p, q, weight,
        logits, bits, perm, task_offsets, frozen_bits, launch.as_u8(frozen_out), launch.as_u8(frozen_in),
        gw if gw is not None else spare, gl if gl is not None else spare,
        R, A, KH, KW, B, PH, PW, QH, QW, bits.shape[0] if perm is not None else 1, triton.cdiv(length, splits), s,
        sh, sw, ph, pw, dh, dw,
        *p.stride(), *q.stride(), *weight.stride(), *launch.strides(logits, 4), *launch.task_strides(bits),
        *launch.strides(frozen_bits, 2), *launch.strides(gw, 4), *launch.strides(gl, 4),
        MASK=launch.mask_kind(logits, bits), PER_ROW=perm is not None,
        FROZEN=launch.frozen_kind(frozen_bits, frozen_out),
        OUT_ON_ROWS=out_on_rows,
        HAS_IN_RES=frozen_in is not None, WRITE_W=write_w, WRITE_L=write_logits, ATOMIC=splits > 1,
        PREC=launch.input_precision(p.dtype),
    )
    if splits > 1:
        gw = None if gw is None else gw.to(weight.dtype)
        gl = None if gl is None else gl.to(logits.dtype)
    return gw, gl
