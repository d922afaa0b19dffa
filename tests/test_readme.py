"""The README's layer example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_layer_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    torch.manual_seed(0)
    namespace = {"x": torch.randn(8, 784), "steps": 3, "task_loss": lambda y: y.square().mean()}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    net = namespace["net"]
    assert net.fc1.task == 1 and net.fc1.out_units == 272 and net.fc2.in_units == 272
    assert namespace["y_old"].shape == (8, 10)
