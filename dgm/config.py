"""``TrainConfig``: every setting of a continual run, one field per ``dgm-train`` flag.

Each field is declared once (:func:`setting`): its type (the annotation), what values it allows
(range, choices; numbers are always finite), its help text and whether it changes what a run
computes. The flags, config files and Python callers are all checked against that declaration
(:func:`check_setting`, :func:`parse_setting`), so a bad value is refused the same way wherever it
comes from, with a :class:`~dgm.errors.ConfigError` naming the setting, the value and what is
allowed, before a run writes anything.

A config file (JSON, or YAML when PyYAML is installed) holds the same keys as the flags, with
``-`` or ``_`` (``classes-per-task`` / ``classes_per_task``); flags given on the command line win.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .data.datasets import DATASETS, NUM_CLASSES
from .errors import ConfigError, show
from .methods import METHODS, SELECTIONS  # the registry of methods (DGM, the baselines); model selection
from .ops.backends import CHOICES as BACKEND_CHOICES
from .ops.backends import validate as validate_backend

ARCHS = ("dcgan", "resnet", "mlp")
SEED_MAX = 2**32 - 1
# Settings a resumed run may raise although they change the results: more tasks extend a run.
EXTENDABLE = ("tasks",)


@dataclass(frozen=True)
class Rule:
    """What a setting allows besides its type, and what it is for.

    ``low``/``high``: bounds (inclusive unless ``low_open``/``high_open``); ``choices``: the only
    values; ``null``: what ``None`` means, for settings that may be ``None``; ``run_only``: the
    setting says where or how a run executes, not what it computes (a resumed run may change it,
    ``dgm-results`` pools runs that differ in it). A field declared without one is checked for its
    annotation's type only."""

    help: str
    group: str = "run"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    null: str | None = None
    run_only: bool = False
    metavar: str | None = None


def setting(default, help: str, **rule):
    """A ``TrainConfig`` field with its :class:`Rule`."""
    return field(default=default, metadata={"rule": Rule(help, **rule)})


@dataclass
class TrainConfig:
    """Settings of one continual run. Defaults follow the paper's MNIST protocol and the official
    code's MNIST config (``ngf=6``, ``lr=0.002``, ``beta1=0.5``, WGAN-GP weight 1)."""

    dataset: str = setting("mnist5k", "data set", choices=DATASETS)
    data_root: str | None = setting(None, "where the data sets are", null="./data", run_only=True, metavar="DIR")
    download: bool = setting(False, "download missing data sets", run_only=True)
    method: str = setting("dgmw", "dgmw: weight masks; dgma: activation masks; baselines: joint (real data of all "
                                  "tasks so far, upper bound), finetune (new task only, lower bound), replay "
                                  "(generative replay without masks or expansion)", choices=METHODS)
    tasks: int | None = setting(None, "train the first N tasks", low=1, null="all the data set has", metavar="N")
    classes_per_task: int = setting(1, "classes per task", low=1, metavar="N")
    epochs: int = setting(20, "epochs per task", low=1, metavar="N")
    batch_size: int = setting(64, "batch size", low=1, metavar="N")
    lr: float = setting(0.002, "Adam learning rate of G and D", low=0, low_open=True)
    mask_lr: float | None = setting(None, "Adam learning rate of the mask logits", low=0, low_open=True,
                                    null="lr")
    beta1: float = setting(0.5, "Adam beta1", low=0, high=1, high_open=True)
    seed: int = setting(0, "random seed", low=0, high=SEED_MAX)
    device: str = setting("cpu", "cpu, cuda or cuda:INDEX", run_only=True)
    backend: str = setting("reference", "masked-op implementation", run_only=True,
                           metavar="{" + ",".join(BACKEND_CHOICES) + "}")
    fused: bool = setting(False, "use the fastest fused backend of the device (overrides --backend; falls back "
                                 "to the reference, with a warning, where none runs)", run_only=True)
    capture: bool = setting(True, "on a CUDA device, capture the DGM training step once per task as a CUDA graph "
                                  "and replay it (--no-capture: run every step eagerly); metrics.json says per "
                                  "task whether it was captured", run_only=True)
    dist_timeout: float = setting(600.0, "seconds a rank of a torchrun run waits for the others in a collective "
                                         "before the run stops with an error naming what it waited for",
                                  low=0, low_open=True, run_only=True, metavar="SECONDS")
    out: str = setting("runs/dgm", "output folder (checkpoints, logs, metrics.json)", run_only=True, metavar="DIR")
    resume: bool = setting(False, "continue from the latest checkpoint in --out", run_only=True)
    resume_from_valid: bool = setting(False, "continue from the newest checkpoint in --out that loads, when "
                                             "newer ones are damaged (implies --resume)", run_only=True)
    arch: str = setting("dcgan", "generator/discriminator family (resnet: the official ImageNet networks)",
                        group="model", choices=ARCHS)
    image_size: int = setting(32, "image side in pixels (32 for dcgan and resnet)", group="model", low=1, metavar="PX")
    nz: int = setting(64, "latent size; the first `classes` entries carry the one-hot label", group="model",
                      low=1)
    ngf: int = setting(6, "generator width (dcgan: channels of the last hidden layer; resnet: of every block)",
                       group="model", low=1)
    ndf: int = setting(32, "discriminator width (resnet: of its first stage, 64 is ResNet-18)", group="model", low=1)
    hidden: int = setting(256, "hidden units of the mlp generator and discriminator", group="model", low=1)
    s_max: float | None = setting(None, "mask annealing maximum (dgm methods only)", group="DGM", low=1,
                                  null="1e4 for dgmw, 1e5 for dgma (official configs)")
    lambda_reg: float | None = setting(None, "sparsity regulariser weight (dgm methods only)", group="DGM", low=0,
                                       null="0.08 for dgmw, 0.01 for dgma (official configs)")
    lambda_gp: float = setting(1.0, "WGAN gradient-penalty weight", group="DGM", low=0)
    lambda_class: float = setting(1.0, "weight of the AC-GAN class term in the generator's loss (official: aux_G; "
                                       "dgm methods only)", group="DGM", low=0)
    replay_per_class: int | None = setting(None, "generated samples per old class", group="DGM", low=1,
                                           null="as many as real images per class", metavar="N")
    val_fraction: float = setting(0.15, "share of train held out for validation", group="DGM", low=0, high=1,
                                  high_open=True)
    train_per_class: int | None = setting(None, "cap on real training images per class (fast runs)", group="DGM",
                                          low=1, null="no cap", metavar="N")
    selection: str = setting("official", "which epoch of a task is kept: official (best on the validation images "
                                         "of every class seen: real data of earlier tasks, the official protocol), "
                                         "current (best on the task's validation images plus generated ones of "
                                         "earlier classes), last (the last epoch)", choices=SELECTIONS)

    def __post_init__(self):
        self.validate()

    @property
    def resolved_s_max(self) -> float:
        return self.s_max if self.s_max is not None else (1e4 if self.method == "dgmw" else 1e5)

    @property
    def resolved_lambda_reg(self) -> float:
        return self.lambda_reg if self.lambda_reg is not None else (0.08 if self.method == "dgmw" else 0.01)

    @property
    def num_tasks(self) -> int:
        """How many tasks the run has, known from the data set's name without loading it."""
        return self.tasks if self.tasks is not None else NUM_CLASSES[self.dataset] // self.classes_per_task

    def validate(self) -> None:
        """Every setting against its declaration, then the combinations; :class:`ConfigError`."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_setting(f.name, getattr(self, f.name)))
        try:
            validate_backend(self.backend)  # the registry's names, and the new name of a renamed one
        except ValueError as exc:
            raise ConfigError("backend", self.backend, str(exc)) from None
        classes = NUM_CLASSES[self.dataset]
        if classes % self.classes_per_task:
            raise ConfigError("classes_per_task", self.classes_per_task,
                              f"a divisor of the {classes} classes of {self.dataset}: "
                              f"{', '.join(str(k) for k in range(1, classes + 1) if classes % k == 0)}")
        if self.tasks is not None and self.tasks > classes // self.classes_per_task:
            raise ConfigError("tasks", self.tasks, f"at most {classes // self.classes_per_task}: {self.dataset} has "
                                                   f"{classes} classes, {self.classes_per_task} per task")
        if self.nz < classes:
            raise ConfigError("nz", self.nz, f"an integer >= {classes}: the latent vector carries the one-hot "
                                             f"label of the {classes} classes of {self.dataset}")
        if self.arch != "mlp" and self.image_size != 32:
            raise ConfigError("image_size", self.image_size, f"32 with arch {self.arch} (its generator makes 32x32 "
                                                             "images); other sizes need arch mlp")
        if self.arch == "resnet" and self.method == "replay":
            raise ConfigError("arch", self.arch, "dcgan or mlp with method replay (its unmasked generator has "
                                                 "no residual form)")

    def check_resumable(self, saved: dict, finished: int, where: str) -> None:
        """:class:`ConfigError` unless these settings may continue the run ``where`` saved with
        ``saved`` after ``finished`` tasks: the same value of every setting that changes the results
        (a key ``saved`` lacks counts as its default), and at least ``finished`` tasks."""
        def was(f):
            return f"{f.name} = {show(saved.get(f.name, f.default))}"

        differ = [f for f in dataclasses.fields(self) if not rule(f.name).run_only and f.name not in EXTENDABLE
                  and saved.get(f.name, f.default) != getattr(self, f.name)]
        if differ:
            raise ConfigError(differ[0].name, getattr(self, differ[0].name),
                              f"the run in {where} was made with {', '.join(map(was, differ))}; resume with the "
                              "same settings or choose another --out")
        if finished > self.num_tasks:
            raise ConfigError("tasks", self.tasks, f"at least {finished}: the run in {where} has finished "
                                                   f"{finished} tasks")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        normal = {k.replace("-", "_"): v for k, v in values.items()}
        for key, value in normal.items():
            if key not in known:
                raise ConfigError(key, value, f"not a setting; the settings are {', '.join(sorted(known))}")
        return cls(**normal)


def rule(name: str) -> Rule:
    """The declaration of setting ``name``."""
    return _FIELDS[name].metadata.get("rule", _PLAIN)


def kind(name: str) -> tuple[type, bool]:
    """``(type, may be None)`` of setting ``name``, from its annotation."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def allowed(name: str) -> str:
    """What setting ``name`` allows, in words."""
    r, (base, nullable) = rule(name), kind(name)
    if base is bool:
        text = "true or false"
    elif r.choices:
        text = "one of " + ", ".join(r.choices)
    elif base is str:
        text = "a non-empty string"
    else:
        text = "an integer" if base is int else "a finite number"
        low = None if r.low is None else f"{'>' if r.low_open else '>='} {_num(r.low)}"
        high = None if r.high is None else f"{'<' if r.high_open else '<='} {_num(r.high)}"
        if low and high:
            text += (f" in {_num(r.low)}..{_num(r.high)}" if base is int else
                     f" in {'(' if r.low_open else '['}{_num(r.low)}, {_num(r.high)}{')' if r.high_open else ']'}")
        elif low or high:
            text += " " + (low or high)
    return text + (f", or null for {r.null}" if nullable else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_setting(name: str, value):
    """``value`` if setting ``name`` allows it (an int of a float setting becomes a float), else
    :class:`ConfigError`. Booleans are not numbers, strings are neither."""
    r, (base, nullable) = rule(name), kind(name)
    if value is None:
        if nullable:
            return None
        raise ConfigError(name, value, allowed(name))
    if base is float and type(value) is int:
        value = float(value)
    ok = type(value) is base and (base is not float or math.isfinite(value)) and (base is not str or value != "")
    if ok and r.choices:
        ok = value in r.choices
    if ok and base in (int, float):
        ok = ((r.low is None or (value > r.low if r.low_open else value >= r.low))
              and (r.high is None or (value < r.high if r.high_open else value <= r.high)))
    if not ok:
        raise ConfigError(name, value, allowed(name))
    return value


_INT = re.compile(r"[+-]?\d+")


def parse_setting(name: str, text: str):
    """The value of setting ``name`` written as a command-line word, checked (``--lr 1e-3``).
    (argparse turns the word ``--`` into ``[]``, which is refused like any other non-word.)"""
    base = kind(name)[0]
    if base is int:
        value = int(text) if isinstance(text, str) and _INT.fullmatch(text.strip()) else text
    elif base is float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = text
    else:
        value = text
    return check_setting(name, value)


def check_device(device: str) -> None:
    """:class:`ConfigError` on ``device`` unless it names a CPU or a CUDA device this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError("device", device, "cpu, cuda or cuda:INDEX") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device", device, "cpu, cuda or cuda:INDEX: only CPU and CUDA devices are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", device, "cpu: torch sees no CUDA GPU here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", device, f"cpu or cuda:0..{torch.cuda.device_count() - 1}: "
                                                f"{torch.cuda.device_count()} CUDA device(s) here")


def load_config_file(path: str | Path) -> dict:
    """Keys and values of a JSON or YAML config file; :class:`ConfigError` (setting ``config``)
    when it cannot be read."""
    def refuse(why: str):
        return ConfigError("config", str(path), f"a readable JSON or YAML file of settings ({why})")

    path = Path(path)
    if not path.is_file():
        raise refuse("no such file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise refuse(f"cannot read it: {exc}") from exc
    if path.suffix in (".yml", ".yaml"):
        try:
            import yaml
        except ImportError as exc:
            raise refuse("YAML needs PyYAML, which is not installed; use JSON") from exc
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise refuse(f"not valid YAML: {' '.join(str(exc).split())}") from exc
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise refuse(f"not valid JSON: {exc}") from exc
    if not isinstance(values, dict):
        raise refuse("it must hold a mapping of setting names to values")
    return values


_PLAIN = Rule("")  # a field declared without setting(): its annotation's type, any value
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
