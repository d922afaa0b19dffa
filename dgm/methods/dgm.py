"""DGMw / DGMa: the masked, growing generator that replays every earlier class.

One task (:class:`DGMLearner`): a new discriminator over every class seen, the generator's norms
and heads for the task, the replay of earlier classes (:func:`begin_task`); then per minibatch
(:func:`train_step`) WGAN-GP plus the auxiliary classifier on the task's real data and the replay,
the generator's current mask annealed and regularised towards sparsity while reserved weights stay
frozen; at the end the generator's masks are consolidated and it grows.

The generator's loss is ``-critic + lambda_reg * R + lambda_class * CE(classifier(fake), y)``. The
last, the AC-GAN class term (``--lambda-class``), is what ties each class's head to its class: the
critic alone lets every head of a task draw any class of the task, and with several classes per
task the replay is then mislabelled. The official code has it as ``aux_G`` (weight 1;
``approaches/DGMw.py``: ``errG += c_errG``), on in its ImageNet config (10 classes per task) and off
in its MNIST and SVHN ones (one class per task).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import distributed
from ..masks import SharpnessSchedule, compensate_logit_grad_, sharpness, sparsity_regularizer
from ..models import DCGANGenerator, Discriminator, MaskedGenerator, MLPGenerator, ResNetGenerator
from ..optim import FrozenAdam, reserved_masks
from ..step_graph import CapturedStep, unavailable_reason
from .base import (
    GenerativeLearner,
    TaskSetup,
    build_discriminator,
    classes_seen,
    discriminator_loss,
    epoch_steps,
    generator_loss,
    replay_batch,
    replay_for,
    replay_rng,
)


def build_generator(config, num_classes: int, channels: int, backend: str) -> MaskedGenerator:
    mask = "weight" if config.method == "dgmw" else "activation"
    common = {"mask": mask, "s_max": config.resolved_s_max, "backend": backend, "image_size": config.image_size}
    if config.arch == "dcgan":
        return DCGANGenerator(config.nz, num_classes, channels, config.ngf, **common)
    if config.arch == "resnet":
        return ResNetGenerator(config.nz, num_classes, channels, config.ngf, **common)
    return MLPGenerator(config.nz, num_classes, channels, config.hidden, **common)


def generator_backend(generator) -> str:
    return generator.body[0].backend


@dataclass
class TaskTraining:
    """One DGM task being learned: everything :func:`train_step` updates. Every value a step reads
    or advances (the sharpness schedule's position, the optimisers' step counts, the random
    generators) lives on the device, so every step of the task dispatches the same ops."""

    generator: MaskedGenerator
    classes: list[int]
    discriminator: Discriminator
    opt_d: FrozenAdam
    opt_g: FrozenAdam
    logits: list[torch.nn.Parameter]
    replay: tuple | None
    replay_rng: torch.Generator
    schedule: SharpnessSchedule
    lambda_reg: float
    lambda_gp: float
    lambda_class: float
    # Data-parallel runs: averages gradients over the ranks before each optimiser step
    # (dgm.distributed.sync_gradients); None in a single process, whose step is left as it is.
    sync: Callable[[list, str], None] | None = None


def begin_task(generator, task, old_tasks, n_real: int, config, device: torch.device) -> TaskTraining:
    """Set up learning ``task``: a new discriminator over every class seen, the generator's norms
    and heads for the task, the replay of ``old_tasks``, and the optimisers (the generator's keeps
    reserved weights and their moments where they are)."""
    seen = classes_seen([*old_tasks, task])
    discriminator = build_discriminator(config, seen, task.train.channels).to(device)
    generator.prepare_task(list(task.classes))
    generator.train()
    replay = replay_for(generator, task, old_tasks, config, n_real)
    logits = [p for layer in generator.masked_layers() for p in layer.logits()]
    weights = [p for p in generator.task_parameters(list(task.classes)) if all(p is not q for q in logits)]
    # Both optimisers are FrozenAdam (the discriminator's without reserved masks: Adam), whose
    # step counts and bias corrections stay on the device.
    adam = {"lr": config.lr, "betas": (config.beta1, 0.999),
            "backend": "reference" if generator_backend(generator) == "reference" else "auto"}
    opt_g = FrozenAdam([{"params": weights}, {"params": logits, "lr": config.mask_lr or config.lr}], **adam)
    opt_g.set_reserved(reserved_masks(generator))
    lambda_reg = config.resolved_lambda_reg * generator.units() / generator.initial_units
    schedule = SharpnessSchedule(epoch_steps(n_real, config), config.resolved_s_max, device)
    return TaskTraining(generator, list(task.classes), discriminator, FrozenAdam(discriminator.parameters(), **adam),
                        opt_g, logits, replay, replay_rng(config, task, device), schedule, lambda_reg,
                        config.lambda_gp, config.lambda_class, distributed.gradient_sync())


def train_step(state: TaskTraining, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One step on a real batch ``(x, y)``, at the sharpness of the task's next batch (the step
    advances ``state.schedule``); returns the losses as tensors. The host never waits for the
    device in a step (tests/test_host_sync.py), and consecutive steps dispatch the same ops
    (tests/test_step_replayable.py)."""
    generator, discriminator, classes = state.generator, state.discriminator, state.classes
    s, gain = state.schedule.next()
    generator.set_sharpness(s)

    # Discriminator: critic on real vs fake of this task, classifier on real + replay.
    state.opt_d.zero_grad(set_to_none=True)
    with torch.no_grad():
        fake = generator(generator.noise(y), y, classes=classes)
    replay = None if state.replay is None else replay_batch(state.replay, state.replay_rng)
    loss_d, loss_class, gp = discriminator_loss(discriminator, x, y, fake, state.lambda_gp, replay)
    loss_d.backward()
    if state.sync is not None:
        state.sync(list(discriminator.parameters()), "discriminator")
    state.opt_d.step()

    # Generator: fool the critic, be classified as the label asked for, with a sparse mask;
    # reserved weights stay frozen.
    state.opt_g.zero_grad(set_to_none=True)
    adversarial, g_class = generator_loss(discriminator, generator(generator.noise(y), y, classes=classes), y)
    reg = sparsity_regularizer(layer.mask_usage() for layer in generator.masked_layers())
    loss_g = adversarial + state.lambda_reg * reg + state.lambda_class * g_class
    loss_g.backward()
    for p in state.logits:
        compensate_logit_grad_(p, s, gain)
    if state.sync is not None:  # the weights, norms, heads and mask logits being learned
        state.sync([p for group in state.opt_g.param_groups for p in group["params"]], "generator")
    state.opt_g.step()
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "class": loss_class.detach(),
            "gp": gp.detach(), "reg": reg.detach(), "g_class": g_class.detach()}


class DGMLearner(GenerativeLearner):
    """``dgmw`` / ``dgma``: carries the masked, growing generator; the discriminator is rebuilt
    every task. On a CUDA device each task's step is captured as a CUDA graph and replayed
    (:mod:`dgm.step_graph`; ``config.capture``), except in a data-parallel run."""

    def __init__(self, config, num_classes: int, channels: int, backend: str, device: torch.device):
        super().__init__(config, num_classes, channels, backend, device)
        self.generator = build_generator(config, num_classes, channels, backend).to(device)
        self._not_captured = unavailable_reason(device, config.capture)
        if self._not_captured is None and distributed.world_size() > 1:
            self._not_captured = (f"data-parallel run ({distributed.world_size()} processes): the step's gradient "
                                  "all-reduces run eagerly, outside a CUDA graph")
        self._captured: CapturedStep | None = None  # the task's step, while it is learned
        self._capture_report = {"captured": False, "reason": self._not_captured}

    def begin_task(self, task, old_tasks) -> TaskSetup:
        real_x, real_y = task.train.images.to(self.device), task.train.labels.to(self.device)
        state = begin_task(self.generator, task, old_tasks, real_y.shape[0], self.config, self.device)
        epochs, s_max = self.config.epochs, self.config.resolved_s_max
        run = functools.partial(train_step, state)
        if self._not_captured is None:
            run = self._captured = CapturedStep(run, generators=(state.replay_rng,))

        def step(epoch, b, batches, idx):
            return {**run(real_x[idx], real_y[idx]), "s": sharpness(epoch, epochs, b, batches, s_max)}

        return TaskSetup(state.discriminator, real_y.shape[0], step)

    def step_capture(self) -> dict:
        return self._capture_report

    def end_task(self) -> None:
        """Binarise and reserve the task's masks, then grow the generator; the task's captured step
        (and its graph's memory) goes."""
        if self._captured is not None:
            self._capture_report, self._captured = self._captured.report(), None
        super().end_task()
        self.generator.consolidate_and_expand()

    def generator_size(self) -> tuple[int, list[int]]:
        body = self.generator.body
        return sum(layer.active_weight().numel() for layer in body), [layer.out_units for layer in body]
