"""The two Triton GEMMs every masked op is built from, with the DGM mask formed in registers.

* :func:`masked_mm` -- ``C = A @ op(W_eff)``: the forward (``op = transpose``) and the input
  gradient (``op = identity``). The k-loop loads a weight tile and its mask tile (logits ->
  ``sigmoid(s * logits)``, or packed bits -> one bit) and multiplies them before the dot; the
  epilogue adds the bias and scales each output unit (DGMa), optionally saving the pre-scale
  output for the ``unit_scale`` gradient.
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
weight matrix has rows ``R`` and columns ``C`` (bits are packed along ``C``, see
:mod:`dgm.bits`); ``cols_per_unit`` groups columns into units (1 for linear).

fp32 inputs use ``input_precision`` ``"tf32"`` when ``torch.backends.cuda.matmul.allow_tf32``
is set (as ``F.linear`` does) and ``"ieee"`` otherwise; the interpreter always computes exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dgm.ops import interpreting

MASK_NONE, MASK_SOFT, MASK_BITS = 0, 1, 2
FROZEN_NONE, FROZEN_BITS, FROZEN_UNITS = 0, 1, 2


def _configs(m: str, n: str, k: str, group: str):
    """A handful of tile shapes on a GPU; one under the interpreter (no benchmarking there)."""
    if interpreting():
        return [triton.Config({m: 64, n: 64, k: 64, group: 8}, num_warps=4, num_stages=1)]
    shapes = [(128, 128, 32, 4, 8), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 64, 3, 4),
              (128, 128, 64, 3, 8), (32, 64, 64, 4, 4), (64, 32, 64, 4, 2)]
    return [triton.Config({m: bm, n: bn, k: bk, group: 8}, num_stages=st, num_warps=w)
            for bm, bn, bk, st, w in shapes]


def input_precision(dtype: torch.dtype) -> str:
    """The fp32 dot precision: tf32 where PyTorch's own matmuls may use it."""
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


@triton.jit
def tile_offsets(GRID_A, A, B, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, GROUP: tl.constexpr):
    """This program's output tile: ``(offs_a, offs_b, offs_a < A, offs_b < B)``. Tiles go in
    grouped order over a grid of ``GRID_A`` rows (``>= A``), so neighbouring programs share rows
    of the A operand in L2."""
    num_b = tl.cdiv(B, BLOCK_B)
    width = GROUP * num_b
    pid = tl.program_id(0)
    first = (pid // width) * GROUP
    size = tl.minimum(tl.cdiv(GRID_A, BLOCK_A) - first, GROUP)
    offs_a = (first + (pid % width) % size) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_b = ((pid % width) // size) * BLOCK_B + tl.arange(0, BLOCK_B)
    return offs_a, offs_b, offs_a < A, offs_b < B


@triton.jit
def replay_tasks(perm_ptr, task_ptr, idx, ok):
    """Replay: ``(rows, tasks, t_lo, t_hi)`` -- the batch rows and tasks of the sorted positions
    ``idx`` and the range of tasks the tile meets (its k-loop runs once per task present)."""
    rows = tl.load(perm_ptr + idx, mask=ok, other=0).to(tl.int64)
    tasks = tl.load(task_ptr + idx, mask=ok, other=-1)
    t_lo = tl.min(tl.where(ok, tasks, 2147483647), axis=0)
    t_hi = tl.max(tasks, axis=0) + 1
    return rows, tasks, t_lo, t_hi


@triton.jit
def unit_epilogue(acc, out_ptr, pre_ptr, off, ok, rows, units, u_ok, bias_ptr, scale_ptr, ss_row, ss_unit,
                  HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, WRITE_PRE: tl.constexpr):
    """The forward epilogue: stores ``(acc + bias[unit]) * scale[row, unit]`` at ``out_ptr + off``
    and, when ``WRITE_PRE``, the value before the scale at ``pre_ptr + off`` (same layout)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + units, mask=u_ok, other=0.0).to(tl.float32)[None, :]
    if WRITE_PRE:
        tl.store(pre_ptr + off, acc.to(pre_ptr.dtype.element_ty), mask=ok)
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + rows[:, None] * ss_row + units[None, :] * ss_unit, mask=ok,
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _bit(bits_ptr, off, wc, ok):
    """Bit ``wc % 8`` of the packed byte at ``bits_ptr + off`` (``off`` addresses byte ``wc // 8``)."""
    byte = tl.load(bits_ptr + off, mask=ok, other=0).to(tl.int32)
    return ((byte >> (wc & 7)) & 1) != 0


@triton.jit
def _mask_tile(w, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK: tl.constexpr):
    """``w`` times its mask, computed in registers: ``l_off`` addresses the logits of each entry,
    ``b_off`` its packed byte, ``wc`` is its column in the 2-D weight matrix (see :mod:`dgm.bits`)."""
    if MASK == 1:
        lg = tl.load(l_ptr + l_off, mask=ok, other=0.0).to(tl.float32)
        w = (w.to(tl.float32) * tl.sigmoid(lg * s)).to(w.dtype)
    elif MASK == 2:
        w = tl.where(_bit(bits_ptr, b_off, wc, ok), w, tl.zeros_like(w))
    return w


@triton.jit
def load_masked_weight(w_ptr, w_off, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK: tl.constexpr):
    """A weight tile with its mask applied in registers (the k-loop operand of every masked GEMM)."""
    w = tl.load(w_ptr + w_off, mask=ok, other=0.0)
    return _mask_tile(w, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK)


@triton.jit
def _put(ptr, val, ok, ATOMIC: tl.constexpr):
    """Store, or add atomically when the reduction is split over programs (every epilogue term is
    linear in ``G``, so partial sums can each go through it)."""
    if ATOMIC:
        tl.atomic_add(ptr, val.to(ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(ptr, val.to(ptr.dtype.element_ty), mask=ok)


@triton.jit
def grad_mask_epilogue(g, ok, wc, w_ptr, w_off, l_ptr, l_off, bits_ptr, b_off, gl_ptr, gl_off, s,
                       MASK: tl.constexpr, WRITE_L: tl.constexpr, ATOMIC: tl.constexpr = False):
    """From the weight-gradient GEMM ``G``: stores ``grad_logits = G * W * s * m * (1 - m)`` (soft
    mask) and returns ``G * m``, the weight gradient before the freeze."""
    if MASK == 1:
        m = tl.sigmoid(tl.load(l_ptr + l_off, mask=ok, other=0.0).to(tl.float32) * s)
        if WRITE_L:
            w = tl.load(w_ptr + w_off, mask=ok, other=0.0).to(tl.float32)
            _put(gl_ptr + gl_off, g * w * s * m * (1.0 - m), ok, ATOMIC)
        g = g * m
    else:
        g = _mask_tile(g, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK)
    return g


@triton.jit
def freeze_store(gw, offs_r, r_ok, offs_c, c_ok, gw_ptr, gw_off, fbits_ptr, fb_off, fout_ptr, fin_ptr,
                 COLS_PER_UNIT: tl.constexpr, FROZEN: tl.constexpr, OUT_ON_ROWS: tl.constexpr,
                 HAS_IN_RES: tl.constexpr, ATOMIC: tl.constexpr = False):
    """Zero the reserved entries of the weight-gradient tile (packed frozen bits, or HAT's reserved
    ``out_i & in_j``; ``COLS_PER_UNIT`` columns per unit) and store it."""
    ok = r_ok[:, None] & c_ok[None, :]
    if FROZEN == 1:
        gw = tl.where(_bit(fbits_ptr, fb_off, offs_c[None, :], ok), 0.0, gw)
    elif FROZEN == 2:
        if OUT_ON_ROWS:
            out_u = offs_r[:, None]
            in_u = offs_c[None, :] // COLS_PER_UNIT
            out_ok = r_ok[:, None]
            in_ok = c_ok[None, :]
        else:
            out_u = offs_c[None, :] // COLS_PER_UNIT
            in_u = offs_r[:, None]
            out_ok = c_ok[None, :]
            in_ok = r_ok[:, None]
        frozen = tl.load(fout_ptr + out_u, mask=out_ok, other=0) != 0
        if HAS_IN_RES:
            frozen = frozen & (tl.load(fin_ptr + in_u, mask=in_ok, other=0) != 0)
        gw = tl.where(frozen, 0.0, gw)
    _put(gw_ptr + gw_off, gw, ok, ATOMIC)


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


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"),
                 key=["M", "N", "K", "MASK", "PER_ROW", "W_ROWS_ARE_N"])
@triton.jit
def _masked_mm_kernel(
        a_ptr, w_ptr, l_ptr, bits_ptr, perm_ptr, task_ptr, bias_ptr, scale_ptr, pre_ptr, c_ptr,
        M, N, K, s,
        sa_m, sa_k, sw_0, sw_1, sl_0, sl_1, sb_t, sb_0, sb_1, ss_m, ss_n, sc_m, sc_n,
        COLS_PER_UNIT: tl.constexpr, MASK: tl.constexpr, PER_ROW: tl.constexpr, W_ROWS_ARE_N: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, WRITE_PRE: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
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
        acc = _k_loop(acc, a_ptr, rows, m_ok, sa_m, sa_k, w_ptr, sw_0, sw_1, l_ptr, sl_0, sl_1, bits_ptr,
                      sb_0, sb_1, s, offs_n, n_ok, K, MASK, W_ROWS_ARE_N, PREC, BLOCK_K)
    unit_epilogue(acc, c_ptr, pre_ptr, rows[:, None] * sc_m + offs_n[None, :] * sc_n, m_ok[:, None] & n_ok[None, :],
                  rows, offs_n // COLS_PER_UNIT, n_ok, bias_ptr, scale_ptr, ss_m, ss_n, HAS_BIAS, HAS_SCALE,
                  WRITE_PRE)


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


@triton.autotune(configs=_configs("BLOCK_R", "BLOCK_C", "BLOCK_B", "GROUP_R"),
                 key=["R", "C", "B", "MASK", "PER_ROW", "FROZEN"])
@triton.jit
def _masked_wgrad_kernel(
        p_ptr, q_ptr, w_ptr, l_ptr, bits_ptr, perm_ptr, off_ptr, fbits_ptr, fout_ptr, fin_ptr, gw_ptr, gl_ptr,
        R, C, B, T, s,
        sp_b, sp_r, sq_b, sq_c, sw_0, sw_1, sl_0, sl_1, sb_t, sb_0, sb_1, sf_0, sf_1, sgw_0, sgw_1, sgl_0, sgl_1,
        COLS_PER_UNIT: tl.constexpr, MASK: tl.constexpr, PER_ROW: tl.constexpr, FROZEN: tl.constexpr,
        OUT_ON_ROWS: tl.constexpr, HAS_IN_RES: tl.constexpr, WRITE_W: tl.constexpr, WRITE_L: tl.constexpr,
        PREC: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr, GROUP_R: tl.constexpr):
    offs_r, offs_c, r_ok, c_ok = tile_offsets(R, R, C, BLOCK_R, BLOCK_C, GROUP_R)
    ok = r_ok[:, None] & c_ok[None, :]
    wr = offs_r[:, None]
    wc = offs_c[None, :]
    b_off = wr * sb_0 + (wc >> 3) * sb_1
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    if PER_ROW:
        # One reduction per task segment of the sorted rows, each added under its own bits.
        for t in range(0, T):
            start = tl.load(off_ptr + t)
            end = tl.load(off_ptr + t + 1)
            if end > start:
                g = _b_loop(tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32), start, end, p_ptr, sp_b, sp_r,
                            q_ptr, sq_b, sq_c, perm_ptr, offs_r, r_ok, offs_c, c_ok, PER_ROW, PREC, BLOCK_B)
                acc += _mask_tile(g, ok, wc, l_ptr, 0, bits_ptr + t * sb_t, b_off, s, 2)
        gw = acc
    else:
        acc = _b_loop(acc, 0, B, p_ptr, sp_b, sp_r, q_ptr, sq_b, sq_c, perm_ptr, offs_r, r_ok, offs_c, c_ok,
                      PER_ROW, PREC, BLOCK_B)
        gw = grad_mask_epilogue(acc, ok, wc, w_ptr, wr * sw_0 + wc * sw_1, l_ptr, wr * sl_0 + wc * sl_1, bits_ptr,
                                b_off, gl_ptr, wr * sgl_0 + wc * sgl_1, s, MASK, WRITE_L)
    if WRITE_W:
        freeze_store(gw, offs_r, r_ok, offs_c, c_ok, gw_ptr, wr * sgw_0 + wc * sgw_1, fbits_ptr,
                     wr * sf_0 + (wc >> 3) * sf_1, fout_ptr, fin_ptr, COLS_PER_UNIT, FROZEN, OUT_ON_ROWS,
                     HAS_IN_RES)


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    return tuple(t.stride()) if t is not None else (0, 0)


def _bit_strides(bits: torch.Tensor | None) -> tuple[int, int, int]:
    if bits is None:
        return 0, 0, 0
    if bits.dim() == 3:
        return tuple(bits.stride())
    return (0,) + tuple(bits.stride())


def mask_kind(logits, bits) -> int:
    """The kernels' ``MASK`` for these mask arguments."""
    return MASK_SOFT if logits is not None else MASK_BITS if bits is not None else MASK_NONE


def frozen_kind(frozen_bits, frozen_out) -> int:
    """The weight-gradient kernels' ``FROZEN`` for these freeze arguments."""
    return FROZEN_BITS if frozen_bits is not None else FROZEN_UNITS if frozen_out is not None else FROZEN_NONE


def as_u8(flags: torch.Tensor | None) -> torch.Tensor | None:
    """Unit flags as the kernels load them: a bool tensor viewed as uint8 in place."""
    return flags.view(torch.uint8) if flags is not None and flags.dtype == torch.bool else flags


def scale_strides(scale: torch.Tensor | None) -> tuple[int, int]:
    """``unit_scale``'s (row, unit) strides; a per-unit scale has row stride 0."""
    if scale is None:
        return 0, 0
    if scale.dim() == 1:
        return 0, scale.stride(0)
    return tuple(scale.stride())


def masked_mm(a: torch.Tensor, w: torch.Tensor, *, w_rows_are_n: bool, logits=None, s: float = 1.0, bits=None,
              perm=None, sorted_task=None, bias=None, scale=None, cols_per_unit: int = 1, write_pre: bool = False):
    """``A @ op(W * m)`` (+ bias, * unit scale), ``op`` = transpose if ``w_rows_are_n``.

    ``a`` is ``[M, K]``; the weight matrix ``w`` is ``[N, K]`` or ``[K, N]``. ``scale`` is per
    unit, ``[N / cols_per_unit]`` or per row ``[M, N / cols_per_unit]``. Returns ``(c, pre)``,
    ``pre`` (the output before the scale) only when ``write_pre``.
    """
    M, K = a.shape
    N = w.shape[0] if w_rows_are_n else w.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    pre = torch.empty((M, N), device=a.device, dtype=a.dtype) if write_pre else None
    if M == 0 or N == 0:
        return c, pre
    per_row = perm is not None
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _masked_mm_kernel[grid](
        a, w, logits, bits, perm, sorted_task, bias, scale, pre, c,
        M, N, K, float(s),
        *a.stride(), *w.stride(), *_strides(logits), *_bit_strides(bits), *scale_strides(scale), *c.stride(),
        COLS_PER_UNIT=cols_per_unit, MASK=mask_kind(logits, bits), PER_ROW=per_row, W_ROWS_ARE_N=w_rows_are_n,
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, WRITE_PRE=write_pre,
        PREC=input_precision(a.dtype),
    )
    return c, pre


def masked_wgrad(p: torch.Tensor, q: torch.Tensor, w: torch.Tensor, *, logits=None, s: float = 1.0, bits=None,
                 perm=None, task_offsets=None, frozen_bits=None, frozen_out=None, frozen_in=None,
                 out_on_rows: bool = True, cols_per_unit: int = 1, write_w: bool = True, write_logits: bool = False):
    """``G = P^T Q`` (``[R, C]``, the weight matrix's shape) with the masked-gradient epilogue.

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
    _masked_wgrad_kernel[grid](
        p, q, w, logits, bits, perm, task_offsets, frozen_bits, as_u8(frozen_out), as_u8(frozen_in), gw, gl,
        R, C, B, T, float(s),
        *p.stride(), *q.stride(), *w.stride(), *_strides(logits), *_bit_strides(bits), *_strides(frozen_bits),
        *_strides(gw), *_strides(gl),
        COLS_PER_UNIT=cols_per_unit, MASK=mask_kind(logits, bits), PER_ROW=perm is not None,
        FROZEN=frozen_kind(frozen_bits, frozen_out), OUT_ON_ROWS=out_on_rows,
        HAS_IN_RES=frozen_in is not None, WRITE_W=write_w, WRITE_L=write_logits, PREC=input_precision(p.dtype),
    )
    return gw, gl
