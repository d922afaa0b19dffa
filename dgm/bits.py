"""Binary masks stored as packed bits.

A consolidated task mask is binary, so it is kept as one bit per weight. The layout is the one
every backend reads: a mask of logical shape ``(rows, *rest)`` is viewed as a 2-D matrix
``(rows, cols)`` with ``cols = prod(rest)`` and packed along ``cols`` into ``uint8`` words,
little-endian within a byte: bit ``j`` of byte ``b`` in a row holds column ``8 * b + j``.
Rows are padded with zero bits to a whole byte, so a row of ``cols`` columns takes
``ceil(cols / 8)`` bytes. These functions are the reference; the extension provides the same
ops natively (``dgm._C``) and :mod:`dgm.ops` dispatches to it when available.
"""

from __future__ import annotations

import math

import torch

def _shifts(device: torch.device) -> torch.Tensor:
    """``0..7``, made on ``device`` (no copy from the host: a captured step may unpack)."""
    return torch.arange(8, dtype=torch.uint8, device=device)


def packed_cols(cols: int) -> int:
    """Bytes per packed row of ``cols`` bits."""
    return (cols + 7) // 8


def pack(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean mask of shape ``(rows, *rest)`` into ``uint8[rows, ceil(prod(rest) / 8)]``."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack: mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.dim() < 1:
        raise ValueError("pack: mask must have at least one dimension (rows)")
    rows = mask.shape[0]
    cols = mask[0].numel() if rows else math.prod(mask.shape[1:])
    flat = mask.reshape(rows, cols)
    pad = packed_cols(cols) * 8 - cols
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    groups = flat.reshape(rows, packed_cols(cols), 8).to(torch.uint8)
    return (groups << _shifts(mask.device)).sum(dim=-1, dtype=torch.uint8).reshape(rows, packed_cols(cols))


def unpack(bits: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack`: a bool tensor of ``shape`` (rows first) from packed ``bits``."""
    if bits.dtype != torch.uint8:
        raise TypeError(f"unpack: bits must be uint8, got dtype {bits.dtype}")
    shape = tuple(shape)
    rows, cols = shape[0], math.prod(shape[1:])
    if bits.shape != (rows, packed_cols(cols)):
        raise ValueError(
            f"unpack: bits of shape {tuple(bits.shape)} do not hold a mask of shape {shape}; "
            f"expected ({rows}, {packed_cols(cols)})"
        )
    expanded = (bits.unsqueeze(-1) >> _shifts(bits.device)) & 1
    return expanded.reshape(rows, packed_cols(cols) * 8)[:, :cols].bool().reshape(shape)


def popcount(bits: torch.Tensor) -> int:
    """Number of set bits (padding bits are always zero)."""
    x = bits.to(torch.int32)  # SWAR bit count of each byte: no lookup table to build or move
    x = x - ((x >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return int(((x + (x >> 4)) & 0x0F).sum())
