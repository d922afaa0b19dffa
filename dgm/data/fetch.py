"""Fashion-MNIST without internet beyond the Debian mirrors.

The Debian package ``dataset-fashion-mnist`` ships the four gzipped IDX files under
``usr/share/datasets/fashion-mnist/``. ``fetch_fashion_mnist`` downloads the package with
``apt-get download`` (no root needed, nothing installed), unpacks it with ``dpkg-deb -x`` and
writes the decompressed files where torchvision's ``FashionMNIST`` and :func:`load_dataset` read
them: ``root/FashionMNIST/raw/``. The placement step is separate so it can be checked on any tree.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .datasets import IDX_FILES
from .idx import idx_shape

PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = Path("usr/share/datasets/fashion-mnist")
# apt-get's words when it has no package lists (a fresh container) rather than a real failure.
_NO_LISTS = ("Unable to locate package", "has no installation candidate", "Can't select")


def place_fashion_mnist(extracted: str | Path, root: str | Path) -> list[Path]:
    """Copy the IDX files of an unpacked ``dataset-fashion-mnist`` tree to ``root/FashionMNIST/raw``,
    decompressing ``.gz``; check images and labels agree. Returns the written paths."""
    src = Path(extracted) / PACKAGE_DIR
    dest = Path(root).expanduser() / "FashionMNIST" / "raw"
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in IDX_FILES:
        gz, plain, target = src / (name + ".gz"), src / name, dest / name
        partial = target.with_suffix(".part")
        if gz.is_file():
            with gzip.open(gz, "rb") as fin, open(partial, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        elif plain.is_file():
            shutil.copyfile(plain, partial)
        else:
            raise DataError(f"{PACKAGE} unpacked at {extracted} lacks {gz} (or {plain})")
        partial.replace(target)
        written.append(target)
    for images, labels in ((written[0], written[1]), (written[2], written[3])):
        shape_x, shape_y = idx_shape(images), idx_shape(labels)
        if len(shape_x) != 3 or shape_x[1:] != (28, 28) or shape_y != (shape_x[0],):
            raise DataError(f"{images} {shape_x} and {labels} {shape_y} are not matching Fashion-MNIST "
                             "images [N, 28, 28] and labels [N]")
    return written


def _last_line(text: str) -> str:
    """A tool's error output as one line: its last non-empty line, where tools say what failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def download_deb(package: str, dest: Path, log: Callable[[str], None] = print) -> Path:
    """``apt-get download package`` into ``dest``; runs ``apt-get update`` once (and says so) only when
    apt has no package lists to find it in."""

    def download():
        return subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)

    result = download()
    if result.returncode != 0 and any(words in result.stderr for words in _NO_LISTS):
        log(f"apt-get found no package list holding {package}; running `apt-get update` first")
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if update.returncode != 0:
            raise DataError(f"`apt-get update` failed (it needs root): {_last_line(update.stderr)}")
        result = download()
    if result.returncode != 0:
        raise DataError(f"`apt-get download {package}` failed: {_last_line(result.stderr)}")
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {package}` wrote no {package}_*.deb in {dest}")
    return debs[-1]


def fetch_fashion_mnist(root: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Download ``dataset-fashion-mnist`` and place its IDX files under ``root/FashionMNIST/raw``."""
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise DataError(f"fetching fashion-mnist needs apt-get and dpkg-deb (Debian/Ubuntu); {', '.join(missing)} "
                           "not found on PATH. Elsewhere use load_dataset(..., download=True) (dgm-train --download)")
    with tempfile.TemporaryDirectory(prefix="dgm-fetch-") as tmp:
        tmp = Path(tmp)
        deb = download_deb(PACKAGE, tmp, log)
        log(f"downloaded {deb.name}")
        unpack = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "tree")], capture_output=True, text=True)
        if unpack.returncode != 0:
            raise DataError(f"`dpkg-deb -x {deb.name}` failed: {_last_line(unpack.stderr)}")
        return place_fashion_mnist(tmp / "tree", root)
