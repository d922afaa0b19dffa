"""The ``@triton.jit`` helpers every masked kernel shares: tile order, replay rows, the weight
mask formed in registers, and the forward and weight-gradient epilogues.

Weight entries are addressed through the 2-D weight matrix of :mod:`dgm.bits`: row ``wr`` (weight
dimension 0) and column ``wc`` (the other dimensions flattened); packed bits hold column ``wc`` in
bit ``wc % 8`` of byte ``wc // 8`` of their row. A bias mask is the same layout of a 1-D mask: one
byte per unit, bit 0.
"""

import triton
import triton.language as tl

# What the kernels' ``MASK`` and ``FROZEN`` compile-time arguments select (constexpr globals, as
# @triton.jit code may read them; the host passes their ``.value``, see :mod:`.launch`).
MASK_NONE = tl.constexpr(0)      # no weight (or bias) mask
MASK_SOFT = tl.constexpr(1)      # sigmoid(s * logits)
MASK_BITS = tl.constexpr(2)      # packed binary mask
FROZEN_NONE = tl.constexpr(0)    # nothing reserved
FROZEN_BITS = tl.constexpr(1)    # packed frozen bits (DGMw)
FROZEN_UNITS = tl.constexpr(2)   # reserved output and input units (DGMa, HAT's min(a_i, a_j))
# Above every task id: the neutral element of the min over a tile's tasks.
NO_TASK = tl.constexpr(2**31 - 1)


@triton.jit
def load_sharpness(s_ptr, MASK: tl.constexpr, BIAS_MASK: tl.constexpr):
    """The soft masks' sharpness ``s``, read from device memory (a 0-d float32 tensor, so a step's
    value never passes through the host); 1 when neither mask is soft (``s_ptr`` may be None)."""
    s = 1.0
    if MASK == MASK_SOFT:
        s = tl.load(s_ptr)
    if BIAS_MASK == MASK_SOFT:
        s = tl.load(s_ptr)
    return s


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
def weight_tile(R, C, sb_0, sb_1, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_R: tl.constexpr):
    """A weight-gradient program's tile of the ``[R, C]`` weight matrix: ``(offs_r, offs_c, r_ok,
    c_ok, ok, wr, wc, b_off)`` -- its row and column offsets, their bounds and the tile's, the rows
    and columns as 2-D index tiles, and the offsets of their packed-bit bytes."""
    offs_r, offs_c, r_ok, c_ok = tile_offsets(R, R, C, BLOCK_R, BLOCK_C, GROUP_R)
    wr = offs_r[:, None]
    wc = offs_c[None, :]
    return offs_r, offs_c, r_ok, c_ok, r_ok[:, None] & c_ok[None, :], wr, wc, wr * sb_0 + (wc >> 3) * sb_1


@triton.jit
def replay_tasks(perm_ptr, task_ptr, idx, ok):
    """Replay: ``(rows, tasks, t_lo, t_hi)`` -- the batch rows and tasks of the sorted positions
    ``idx`` and the range of tasks the tile meets (its k-loop runs once per task present)."""
    rows = tl.load(perm_ptr + idx, mask=ok, other=0).to(tl.int64)
    tasks = tl.load(task_ptr + idx, mask=ok, other=-1)
    t_lo = tl.min(tl.where(ok, tasks, NO_TASK), axis=0)
    t_hi = tl.max(tasks, axis=0) + 1
    return rows, tasks, t_lo, t_hi


@triton.jit
def load_bit(bits_ptr, off, wc, ok):
    """Bit ``wc % 8`` of the packed byte at ``bits_ptr + off`` (``off`` addresses byte ``wc // 8``)."""
    byte = tl.load(bits_ptr + off, mask=ok, other=0).to(tl.int32)
    return ((byte >> (wc & 7)) & 1) != 0


@triton.jit
def unit_epilogue(acc, ok, out_ptr, pre_ptr, off, rows, tasks, units, u_ok, s,
                  bias_ptr, bl_ptr, bb_ptr, sbb_t, sbb_u, scale_ptr, ss_row, ss_unit,
                  HAS_BIAS: tl.constexpr, BIAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr,
                  WRITE_PRE: tl.constexpr):
    """The forward epilogue: stores ``(acc + b_eff[unit]) * scale[row, unit]`` at ``out_ptr + off``
    and, when ``WRITE_PRE``, the value before the scale at ``pre_ptr + off`` (same layout).

    ``b_eff`` is the bias times its mask: ``sigmoid(s * bias_logits)`` (``MASK_SOFT``) or the bit
    of the row's task in the bias bits (``MASK_BITS``; ``tasks`` are zeros outside replay). The
    freeze of the bias acts on its gradient only (:mod:`.epilogue`)."""
    if HAS_BIAS:
        b = tl.load(bias_ptr + units, mask=u_ok, other=0.0).to(tl.float32)
        if BIAS_MASK == MASK_SOFT:
            b = b * tl.sigmoid(tl.load(bl_ptr + units, mask=u_ok, other=0.0).to(tl.float32) * s)
        if BIAS_MASK == MASK_BITS:
            on = load_bit(bb_ptr, tasks[:, None] * sbb_t + units[None, :] * sbb_u, 0, ok)
            acc += tl.where(on, b[None, :], 0.0)
        else:
            acc += b[None, :]
    if WRITE_PRE:
        tl.store(pre_ptr + off, acc.to(pre_ptr.dtype.element_ty), mask=ok)
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + rows[:, None] * ss_row + units[None, :] * ss_unit, mask=ok,
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def apply_mask(w, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK: tl.constexpr):
    """``w`` times its mask, computed in registers: ``l_off`` addresses the logits of each entry,
    ``b_off`` its packed byte, ``wc`` is its column in the 2-D weight matrix."""
    if MASK == MASK_SOFT:
        lg = tl.load(l_ptr + l_off, mask=ok, other=0.0).to(tl.float32)
        w = (w.to(tl.float32) * tl.sigmoid(lg * s)).to(w.dtype)
    elif MASK == MASK_BITS:
        w = tl.where(load_bit(bits_ptr, b_off, wc, ok), w, tl.zeros_like(w))
    return w


@triton.jit
def load_masked_weight(w_ptr, w_off, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK: tl.constexpr):
    """A weight tile with its mask applied in registers (the k-loop operand of every masked GEMM)."""
    w = tl.load(w_ptr + w_off, mask=ok, other=0.0)
    return apply_mask(w, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK)


@triton.jit
def store_or_add(ptr, val, ok, ATOMIC: tl.constexpr):
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
    if MASK == MASK_SOFT:
        m = tl.sigmoid(tl.load(l_ptr + l_off, mask=ok, other=0.0).to(tl.float32) * s)
        if WRITE_L:
            w = tl.load(w_ptr + w_off, mask=ok, other=0.0).to(tl.float32)
            store_or_add(gl_ptr + gl_off, g * w * s * m * (1.0 - m), ok, ATOMIC)
        g = g * m
    else:
        g = apply_mask(g, ok, wc, l_ptr, l_off, bits_ptr, b_off, s, MASK)
    return g


@triton.jit
def freeze_store(gw, offs_r, r_ok, offs_c, c_ok, gw_ptr, gw_off, fbits_ptr, fb_off, fout_ptr, fin_ptr,
                 COLS_PER_UNIT: tl.constexpr, FROZEN: tl.constexpr, OUT_ON_ROWS: tl.constexpr,
                 HAS_IN_RES: tl.constexpr, ATOMIC: tl.constexpr = False):
    """Zero the reserved entries of the weight-gradient tile (packed frozen bits, or HAT's reserved
    ``out_i & in_j``; ``COLS_PER_UNIT`` columns per unit) and store it."""
    ok = r_ok[:, None] & c_ok[None, :]
    if FROZEN == FROZEN_BITS:
        gw = tl.where(load_bit(fbits_ptr, fb_off, offs_c[None, :], ok), 0.0, gw)
    elif FROZEN == FROZEN_UNITS:
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
    store_or_add(gw_ptr + gw_off, gw, ok, ATOMIC)
