"""The official ImageNet networks (``--arch resnet``): the residual generator's widths and images per
task as it grows, and tiny DGMw and DGMa runs of dgm-train on ImageFolder fixtures."""

import json

import pytest
import torch
from helpers import call, write_image_folders

from dgm.cli.train import main
from dgm.models import ResNetGenerator


@pytest.mark.parametrize("mask", ["weight", "activation"])
def test_residual_generator_images_and_widths_per_task(mask):
    """Each task's images are 32x32 under its own widths; conv2 and the shortcut of a block, whose
    outputs are summed, always have the same width, which the next block reads."""
    torch.manual_seed(0)
    g = ResNetGenerator(8, 4, channels=3, ngf=2, mask=mask, s_max=400, backend="reference")
    for t, classes in enumerate(([0, 1], [2], [3])):
        g.prepare_task(classes)
        with torch.no_grad():
            for layer in g.masked_layers():
                for p in layer.logits():
                    p.normal_()
        g.consolidate_and_expand()
        for conv1, shortcut, conv2 in zip(*g._blocks()):
            assert shortcut.sizes() == (conv2.out_units, conv1.in_units)
        g.eval()
        for k in range(t + 1):
            labels = torch.tensor([k, k])
            assert g(g.noise(labels), labels, task=k).shape == (2, 3, 32, 32)
    assert g.units() > g.initial_units
    assert len(g.norms[0]) == 2 * ResNetGenerator.BLOCKS + 1


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet50")
    write_image_folders(root, [f"n{k:02d}" for k in range(50)], sizes=((12, 10), (9, 9), (10, 14)))
    return root


@pytest.mark.parametrize("method", ["dgmw", "dgma"])
def test_resnet_runs_two_tasks_on_image_folders(image_folders, tmp_path, method):
    out = tmp_path / "run"
    code, _, err = call(main, [
        "--dataset", "imagenet50", "--data-root", image_folders, "--arch", "resnet", "--method", method,
        "--classes-per-task", "10", "--tasks", "2", "--epochs", "1", "--batch-size", "8", "--nz", "50",
        "--ngf", "2", "--ndf", "2", "--seed", "0", "--device", "cpu", "--out", out])
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["arch"] == "resnet" and len(m["accuracy_matrix"]) == 2
    assert m["classes_per_task"] == [list(range(10)), list(range(10, 20))]
    assert m["generator_params"][1] >= m["generator_params"][0] > 0
