"""What a CPU can prove about a training step that a CUDA graph must replay.

A step can be captured once per task and replayed (the design's "The step, not the layer") only if
consecutive steps dispatch exactly the same ops, with the same shapes, dtypes and non-tensor
arguments, and if nothing in it makes the host wait for the device. Both are facts of the eager
step that a CPU shows:

* :class:`OpRecorder` records every ATen (and ``dgm::``) op a block of code dispatches, as
  :class:`Op` records; :func:`differing_ops` counts where two recordings differ.
* :class:`HostReads` records every call the package's own code makes that reads a device value
  on the host (``.item()``, ``.tolist()``, ``nonzero``, boolean indexing, a copy to the host...).
* :func:`consolidated_task` sets up the step these audits run: DGM's :func:`~dgm.methods.dgm.begin_task`
  after earlier tasks were learned with random masks and consolidated.

``benchmarks/count_launches.py`` reports them per configuration and backend;
``tests/test_step_replayable.py`` and ``tests/test_host_sync.py`` hold them at zero.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


class Op(NamedTuple):
    """One dispatched op: its name and a description of every argument (tensors by shape, dtype
    and device; anything else by value)."""
    name: str
    args: tuple


def _describe(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _describe(v)) for k, v in sorted(value.items()))
    if isinstance(value, torch.Generator):
        return ("generator", str(value.device))  # the same generator object draws every step
    return repr(value)


class OpRecorder(TorchDispatchMode):
    """Records every op dispatched inside it (``ops``), profiler annotations excepted (the
    optimisers' ``record_function`` ranges are no work)."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "profiler":
            self.ops.append(Op(str(func), (_describe(args), _describe(kwargs))))
        return func(*args, **kwargs)


def differing_ops(a: list[Op], b: list[Op]) -> int:
    """How many ops two recordings do not share: over the differing stretches of their alignment,
    the longer side's length (0 when they are the same)."""
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")


SYNCING = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.__repr__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.unique, torch.unique,
    torch.masked_select, torch.Tensor.masked_select, torch.repeat_interleave, torch.Tensor.repeat_interleave,
}
# The package's code: dgm/ and its Triton kernels (dgm/kernels may be a link to kernels/).
PACKAGE_DIRS = tuple(str(p.resolve()) for p in (Path(__file__).parent, Path(__file__).parent / "kernels"))
# Frames of PyTorch's own Python wrappers between the caller and the mode.
_WRAPPERS = ("torch/overrides.py", "torch/_tensor.py", "torch/functional.py", "torch/_jit_internal.py",
             "torch/utils/_device.py")


class HostReads(TorchFunctionMode):
    """Records ``(function, file:line)`` of every host-syncing call the package makes (``calls``);
    calls PyTorch makes inside its own modules and optimisers are PyTorch's business."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._syncs(func, args, kwargs):
            caller = self._caller()
            if caller is not None:
                self.calls.append((getattr(func, "__name__", str(func)), caller))
        return func(*args, **kwargs)

    @staticmethod
    def _syncs(func, args, kwargs) -> bool:
        if func in SYNCING:
            return True
        if func is torch.Tensor.__getitem__:  # boolean-mask indexing has a data-dependent shape
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if func is torch.Tensor.to:
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
            return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"
        return False

    @staticmethod
    def _caller() -> str | None:
        """``file:line`` of the package code that made the call, or None if PyTorch made it."""
        frame = sys._getframe(2)
        while frame is not None and (frame.f_code.co_filename == __file__
                                     or frame.f_code.co_filename.replace("\\", "/").endswith(_WRAPPERS)):
            frame = frame.f_back
        if frame is None:
            return None
        path = str(Path(frame.f_code.co_filename).resolve())
        if not path.startswith(PACKAGE_DIRS):
            return None
        return f"{Path(path).name}:{frame.f_lineno}"


def consolidate_random_tasks(generator, done: int, classes_per_task: int = 1, density: float = 0.2) -> None:
    """Learn ``done`` tasks of ``classes_per_task`` classes each (task ``k``: classes
    ``k * classes_per_task ...``) by drawing random masks (a share ``density`` of each mask on),
    consolidating and growing after each, as training would."""
    for k in range(done):
        generator.prepare_task(list(range(k * classes_per_task, (k + 1) * classes_per_task)))
        with torch.no_grad():
            for layer in generator.masked_layers():
                for p in layer.logits():
                    p.copy_(torch.where(torch.rand_like(p) < density, 1.0, -1.0))
        generator.consolidate_and_expand()


def consolidated_task(config, backend: str, device: torch.device, done: int, classes_per_task: int = 1,
                      density: float = 0.2, num_classes: int = 10, channels: int = 1, batches: int = 10):
    """The DGM training state of task ``done`` after :func:`consolidate_random_tasks`, with a real
    batch of ``config.batch_size`` images of the task's classes: ``(state, x, y)``. Its epoch has
    ``batches`` batches, so that ``s`` changes from one step to the next."""
    from .masks import SharpnessSchedule
    from .methods.dgm import begin_task, build_generator  # the methods import the models, which import ops

    torch.manual_seed(config.seed)
    generator = build_generator(config, num_classes, channels, backend).to(device)
    consolidate_random_tasks(generator, done, classes_per_task, density)

    def task(k):
        return SimpleNamespace(index=k, classes=tuple(range(k * classes_per_task, (k + 1) * classes_per_task)),
                               train=SimpleNamespace(channels=channels))

    state = begin_task(generator, task(done), [task(k) for k in range(done)], config.batch_size, config, device)
    state.schedule = SharpnessSchedule(batches, config.resolved_s_max, device)
    size = config.image_size
    x = torch.rand(config.batch_size, channels, size, size, device=device) * 2 - 1
    y = torch.arange(config.batch_size, device=device) % classes_per_task + done * classes_per_task
    return state, x, y
