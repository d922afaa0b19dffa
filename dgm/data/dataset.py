"""``ImageDataset``: labelled images held in memory as tensors, in the range the generator emits.

Every source is converted once to float32 images in ``[-1, 1]`` (the generator ends in tanh, so
real and generated images share one range) of shape ``[N, C, S, S]``, with int64 labels in
``0..num_classes-1``. The data sets of the paper are small enough to live in memory (or on the
GPU), which keeps a training step free of per-sample decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import DataError


class ImageDataset(Dataset):
    """Images ``float32[N, C, S, S]`` in ``[-1, 1]`` and labels ``int64[N]``; ``num_classes`` is the
    size of the whole label space (a subset keeps it, so labels stay global class ids)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 classes: Sequence[str] | None = None, name: str = ""):
        if images.dim() != 4 or images.dtype != torch.float32:
            raise ValueError(f"images must be a float32 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.dtype != torch.int64 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be an int64 tensor [N] with N={images.shape[0]}, "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"labels must lie in 0..{num_classes - 1}, "
                             f"got range {int(labels.min())}..{int(labels.max())}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"classes must name all {num_classes} classes, got {len(classes)} names")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.classes = tuple(classes) if classes is not None else tuple(str(c) for c in range(num_classes))
        self.name = name

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name or 'unnamed'}: {len(self)} images {tuple(self.images.shape[1:])}, "
                f"{self.num_classes} classes)")

    def subset(self, indices: torch.Tensor) -> "ImageDataset":
        """The images at ``indices`` (a copy), with the same label space."""
        indices = torch.as_tensor(indices, dtype=torch.int64, device=self.labels.device)
        return ImageDataset(self.images[indices], self.labels[indices], self.num_classes, self.classes, self.name)

    def class_counts(self) -> torch.Tensor:
        """``int64[num_classes]``: how many images each class has."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def to(self, device) -> "ImageDataset":
        """The same data on ``device`` (a training loop can then batch by indexing, with no loader)."""
        return ImageDataset(self.images.to(device), self.labels.to(device), self.num_classes, self.classes, self.name)

    @staticmethod
    def cat(parts: Sequence["ImageDataset"]) -> "ImageDataset":
        """One data set of all ``parts`` in order, e.g. the test sets of every task seen so far."""
        if not parts:
            raise ValueError("cat: parts must hold at least one ImageDataset")
        first = parts[0]
        for part in parts[1:]:
            if part.num_classes != first.num_classes or part.images.shape[1:] != first.images.shape[1:]:
                raise ValueError("cat: parts must share num_classes and image shape, got "
                                 f"{first!r} and {part!r}")
        return ImageDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                            first.num_classes, first.classes, first.name)


def check_labels(path: Path, labels: torch.Tensor, low: int, high: int) -> None:
    """:class:`DataError` naming the file ``path`` unless its ``labels`` lie in ``low..high``."""
    if labels.numel() and (int(labels.min()) < low or int(labels.max()) > high):
        raise DataError(f"{path} holds labels {int(labels.min())}..{int(labels.max())}; labels must lie in "
                        f"{low}..{high}")


def from_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to float32 in ``[-1, 1]`` at ``image_size`` x ``image_size``.

    Resizing is bilinear with antialiasing, as ``torchvision.transforms.Resize`` on tensors (for
    MNIST's 28x28 this is the upsampling to 32x32 the paper's generator needs).
    """
    from torchvision.transforms.functional import resize

    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    out = images.to(torch.float32).div_(127.5).sub_(1.0)
    if out.shape[-2:] != (image_size, image_size):
        out = resize(out, [image_size, image_size], antialias=True).clamp_(-1.0, 1.0)
    return out.contiguous()
