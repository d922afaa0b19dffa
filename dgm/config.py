"""``TrainConfig``: every setting of a continual run, one field per ``dgm-train`` flag.

A config file (JSON, or YAML when PyYAML is installed) holds the same keys as the flags, with
``-`` or ``_`` (``classes-per-task`` / ``classes_per_task``); flags given on the command line win.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .methods import METHODS, SELECTIONS  # the registry of methods (DGM, the baselines); model selection
from .ops.backends import validate as validate_backend

DATASETS = ("mnist", "fashion-mnist", "svhn", "cifar10", "imagenet50", "mnist5k")
ARCHS = ("dcgan", "mlp")


@dataclass
class TrainConfig:
    """Settings of one continual run. Defaults follow the paper's MNIST protocol and the official
    code's MNIST config (``ngf=6``, ``lr=0.002``, ``beta1=0.5``, WGAN-GP weight 1)."""

    dataset: str = "mnist5k"
    data_root: str | None = None
    download: bool = False
    method: str = "dgmw"
    tasks: int | None = None          # how many tasks to run; None: all the split has
    classes_per_task: int = 1
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.002
    mask_lr: float | None = None      # Adam learning rate of the mask logits; None: lr
    beta1: float = 0.5
    seed: int = 0
    device: str = "cpu"
    backend: str = "reference"
    fused: bool = False
    capture: bool = True              # DGM's training step as a CUDA graph per task, on a CUDA device
    out: str = "runs/dgm"
    resume: bool = False
    arch: str = "dcgan"
    image_size: int = 32
    nz: int = 64                      # latent size; the first `classes` entries carry the one-hot label
    ngf: int = 6                      # generator width (dcgan: channels of the last hidden layer)
    ndf: int = 32                     # discriminator width
    hidden: int = 256                 # mlp generator / discriminator hidden units
    s_max: float | None = None        # None: 1e4 for dgmw, 1e5 for dgma (official configs); dgm methods only
    lambda_reg: float | None = None   # None: 0.08 for dgmw, 0.01 for dgma (official configs); dgm methods only
    lambda_gp: float = 1.0
    lambda_class: float = 1.0         # AC-GAN class term of the generator's loss (official: aux_G); dgm methods only
    replay_per_class: int | None = None  # generated samples per old class; None: as many as real per class
    val_fraction: float = 0.15
    train_per_class: int | None = None   # cap on real training images per class (fast runs)
    selection: str = "official"       # which epoch of a task is kept (dgm.methods.selection)

    def __post_init__(self):
        self.validate()

    @property
    def resolved_s_max(self) -> float:
        return self.s_max if self.s_max is not None else (1e4 if self.method == "dgmw" else 1e5)

    @property
    def resolved_lambda_reg(self) -> float:
        return self.lambda_reg if self.lambda_reg is not None else (0.08 if self.method == "dgmw" else 0.01)

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        need(self.dataset in DATASETS, f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        need(self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}")
        need(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        validate_backend(self.backend)
        need(self.selection in SELECTIONS, f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        for name in ("classes_per_task", "epochs", "batch_size", "nz", "ngf", "ndf", "hidden", "image_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        need(self.tasks is None or (isinstance(self.tasks, int) and self.tasks > 0),
             f"tasks must be a positive integer or None, got {self.tasks!r}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(self.mask_lr is None or self.mask_lr > 0, f"mask_lr must be positive, got {self.mask_lr}")
        need(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        need(self.s_max is None or self.s_max >= 1, f"s_max must be >= 1, got {self.s_max}")
        need(self.lambda_class >= 0, f"lambda_class must be >= 0, got {self.lambda_class}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        normal = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normal) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**normal)


def load_config_file(path: str | Path) -> dict:
    """Keys and values of a JSON or YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yml", ".yaml"):
        try:
            import yaml
        except ImportError as exc:
            raise ValueError(f"config {path} is YAML but PyYAML is not installed; use JSON") from exc
        values = yaml.safe_load(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config {path} is not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"config {path} must hold a mapping of flag names to values")
    return values
