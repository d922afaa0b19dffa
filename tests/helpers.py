"""Shared by test modules: IDX data files, in-process calls of the console scripts, a tiny
finished run to damage, and snapshots that show a folder untouched."""

import contextlib
import gzip
import io
import shutil
import struct

import numpy as np

from dgm.data.datasets import IDX_FILES

# Settings of a dgm-train run of seconds on the offline mnist5k, and as flags.
TINY_SETTINGS = {"dataset": "mnist5k", "arch": "mlp", "hidden": 16, "nz": 16, "epochs": 1, "batch_size": 32,
                 "train_per_class": 10, "seed": 1}
TINY = [str(word) for key, value in TINY_SETTINGS.items() for word in ("--" + key.replace("_", "-"), value)]


def write_idx(path, array, gz=False):
    """An IDX file: magic ``00 00 08 ndim``, big-endian uint32 dims, then the uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as fh:
        fh.write(data)


def idx_arrays(per_class_train=3, per_class_test=2, seed=1234):
    """Random 28x28 digits, labels in shuffled order, for the four IDX files."""
    rng = np.random.default_rng(seed)
    out = []
    for per_class in (per_class_train, per_class_test):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        out += [rng.integers(0, 256, (labels.size, 28, 28), dtype=np.uint8), labels]
    return out


def write_idx_root(folder, arrays, gz=False):
    for name, array in zip(IDX_FILES, arrays):
        write_idx(folder / (name + (".gz" if gz else "")), array, gz=gz)


def call(main, argv):
    """``(exit status, stdout, stderr)`` of a console script's ``main(argv)``, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(result, prog, *names):
    """Check ``result`` of :func:`call` is exit status 2 with one line ``PROG: error: ...`` naming
    each of ``names`` and no traceback; returns the line."""
    code, _, err = result
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def snapshot(folder):
    """Every file and folder under ``folder`` with its size and modification time (``None``: absent)."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


_FINISHED = {}


def finished_run(tmp_path_factory, dest):
    """Copy to ``dest`` a finished 2-task dgm-train run of :data:`TINY` (made once per session) and
    return ``dest``."""
    if "run" not in _FINISHED:
        from dgm.cli.train import main

        folder = tmp_path_factory.mktemp("finished") / "run"
        code, _, err = call(main, [*TINY, "--tasks", "2", "--out", folder])
        assert code == 0, err
        _FINISHED["run"] = folder
    shutil.copytree(_FINISHED["run"], dest)
    return dest


def write_image_folders(root, classes, sizes=((40, 48), (33, 33))):
    """PNG folders: per class one uniform RGB image per size in train and a grayscale one in val."""
    from PIL import Image

    colors = {}
    for k, name in enumerate(classes):
        color = (k * 5, 255 - k * 5, (k * 37) % 256)
        colors[name] = color
        for i, size in enumerate(sizes):
            (root / "train" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, color).save(root / "train" / name / f"{i}.png")
        (root / "val" / name).mkdir(parents=True, exist_ok=True)
        Image.new("L", (36, 30), k).save(root / "val" / name / "0.png")
    return colors
