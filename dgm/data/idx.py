"""IDX files (MNIST, Fashion-MNIST): magic ``00 00 08 ndim``, ``ndim`` big-endian uint32 sizes, then
the uint8 data. Read here rather than by torchvision's parser, whose checks are bare asserts: a
damaged file is named with what is wrong with it (wrong magic, truncated, trailing bytes, labels
out of range)."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import check_labels


def idx_shape(path: Path, data: bytes | None = None) -> tuple[int, ...]:
    """Dimensions in the header of an uncompressed uint8 IDX file (``data``: its bytes, when read)."""
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read(16)  # the longest header: 3 dimensions
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise DataError(f"{path} is not a uint8 IDX file: it starts with bytes {data[:4].hex(' ') or '(none)'}, "
                        "expected 00 00 08 and 1 to 3 dimensions")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its own header")
    return struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])


def read_idx(path: Path, ndim: int, what: str) -> torch.Tensor:
    """The uint8 array of IDX file ``path``, which must have ``ndim`` dimensions (``what`` it is:
    ``images [N, H, W]``, ``labels [N]``); :class:`DataError` naming the file otherwise."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    shape = idx_shape(path, data)
    if len(shape) != ndim:
        raise DataError(f"{path} holds an array of shape {list(shape)}, expected {what}")
    start, size = 4 + 4 * ndim, math.prod(shape)
    if len(data) - start < size:
        raise DataError(f"{path} is truncated: its header declares {list(shape)} ({size:,} bytes of data), the file "
                        f"holds {len(data) - start:,}")
    if len(data) - start > size:
        raise DataError(f"{path} has {len(data) - start - size:,} bytes more than the {list(shape)} its header "
                        "declares: not an IDX file of that shape")
    return torch.from_numpy(np.frombuffer(data, np.uint8, size, start).reshape(shape).copy())


def read_idx_pair(images: Path, labels: Path, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``uint8 [N, 1, H, W]`` and labels ``int64 [N]`` in ``0..num_classes-1`` from two IDX files."""
    x = read_idx(images, 3, "images [N, H, W]")
    y = read_idx(labels, 1, "labels [N]").long()
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images} holds {x.shape[0]:,} images but {labels} holds {y.shape[0]:,} labels")
    check_labels(labels, y, 0, num_classes - 1)
    return x.unsqueeze(1), y
