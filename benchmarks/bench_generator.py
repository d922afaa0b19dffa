"""The generator's replay and the growth step of expansion.

``test_replay``: a generator with T consolidated tasks (one class each, masks drawn at random,
each task taking ``USE`` of the free capacity, grown by the expansion rule after each task)
generates ``ROWS`` rows per task. Columns ``one-pass`` (:meth:`MaskedGenerator.generate`: every
row under its own task's mask, one layer call for all tasks) and ``loop`` (one forward per task,
``generator(z, labels, task=k)``); group ``replay-<arch>-T<tasks>-<backend>``. Backends other
than the reference skip on a CPU: ``auto`` is the reference there and the Triton interpreter is
not a speed measure.

``test_growth``: one growth step of a masked layer with a consolidated task, by ``out/8`` output
and ``in/8`` input units. Columns ``expand`` (:meth:`MaskedLayer.expand`) and ``realloc`` (a new
layer of the grown size, the old parameters copied into its corner: growing without spare
capacity; it carries no reserved masks, so it is a lower bound of what reallocating costs);
group ``growth-<layer>-<within|beyond>-<in>x<out>``: ``within`` grows inside the storage's spare
capacity (a view widens), ``beyond`` outgrows it (the storage doubles).
"""

import functools

import pytest
import torch

from dgm import MaskedConvTranspose2d, MaskedLinear, ops
from dgm.models import DCGANGenerator, MLPGenerator
from dgm.models.generator import dcgan_init_
from dgm.step_audit import consolidate_random_tasks

ON_GPU = torch.cuda.is_available()
NUM_CLASSES = 10
USE = 0.2                                     # share of the logits a task turns on
ROWS = 64 if ON_GPU else 4                    # replay rows per task
TASKS = (1, 2, 5, 10) if ON_GPU else (1, 10)
ARCHS = {"dcgan": {"nz": 128, "ngf": 6}, "mlp": {"nz": 64, "hidden": 256 if ON_GPU else 64}}
BACKENDS = ("reference", "auto", "triton", "extension")
CPU_SKIP = {"auto": "'auto' is the reference on a CPU", "triton": "the Triton interpreter is not a speed measure",
            "extension": "the fused path runs the reference on a CPU (dgm.ops.fastest_backend)"}
# (layer, in, out): the paper's generator sizes, and larger on a GPU.
GROWTH_SHAPES = ([("convT", 24, 12), ("convT", 256, 128), ("linear", 256, 256), ("linear", 4096, 4096)] if ON_GPU
                 else [("convT", 24, 12), ("linear", 256, 256)])


@functools.cache
def _consolidated(arch: str, tasks: int, device: str):
    """A generator that has learned ``tasks`` tasks (task k: class k) with random masks."""
    torch.manual_seed(0)
    cls = DCGANGenerator if arch == "dcgan" else MLPGenerator
    generator = cls(num_classes=NUM_CLASSES, backend="reference", **ARCHS[arch]).to(device)
    consolidate_random_tasks(generator, tasks, density=USE)
    return generator.eval()


def _use_backend(generator, backend: str, device: torch.device) -> None:
    """Run ``generator``'s masked layers on ``backend``, or skip the column with the reason."""
    if backend != "reference" and not ON_GPU:
        pytest.skip(f"{backend} column: no GPU; {CPU_SKIP[backend]}")
    op = "linear" if isinstance(generator, MLPGenerator) else "conv_transpose2d"
    reason = None if backend == "auto" else ops.unavailable_reason(backend, op, device)
    if reason is not None:
        pytest.skip(reason)
    for layer in generator.masked_layers():
        layer.backend = backend


@pytest.mark.parametrize("impl", ["one-pass", "loop"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_replay(benchmark, arch, tasks, backend, impl, device, synced):
    benchmark.group = f"replay-{arch}-T{tasks}-{backend}"
    generator = _consolidated(arch, tasks, str(device))
    _use_backend(generator, backend, device)
    labels = torch.arange(tasks, device=device).repeat_interleave(ROWS)
    row_task = labels.clone()  # task k learned class k
    z = generator.noise(labels)
    if impl == "one-pass":
        def fn():
            return generator.generate(labels, row_task, z=z)
    else:
        slices = [(z[k * ROWS:(k + 1) * ROWS], labels[k * ROWS:(k + 1) * ROWS]) for k in range(tasks)]

        def fn():
            with torch.no_grad():
                return [generator(zk, yk, task=k) for k, (zk, yk) in enumerate(slices)]
    benchmark(synced(fn))


def _layer(kind: str, c_in: int, c_out: int, device) -> torch.nn.Module:
    if kind == "linear":
        return MaskedLinear(c_in, c_out, backend="reference", device=device)
    return MaskedConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False, backend="reference", weight_init=dcgan_init_,
                                 device=device)


def _learned(kind: str, c_in: int, c_out: int, device, spare: bool) -> torch.nn.Module:
    """A layer of ``c_in -> c_out`` units with one consolidated task; ``spare``: its storage has
    room to grow (it grew once by one unit, so the storage doubled)."""
    layer = _layer(kind, c_in - spare, c_out - spare, device)
    with torch.no_grad():
        for p in layer.logits():
            p.copy_(torch.where(torch.rand_like(p) < USE, 1.0, -1.0))
    layer.consolidate()
    if spare:
        layer.expand(out_extra=1, in_extra=1)
    return layer


@torch.no_grad()
def _reallocated(layer, kind: str, out_extra: int, in_extra: int) -> torch.nn.Module:
    """Growth without spare capacity: a new layer of the grown size, the old active values copied."""
    new = _layer(kind, layer.in_units + in_extra, layer.out_units + out_extra, layer.weight.device)
    weight_corner = tuple(slice(0, n) for n in layer.active_weight().shape)
    for name, p in layer.named_parameters():
        corner = weight_corner if p.dim() > 1 else (slice(0, layer.out_units),)
        new.get_parameter(name)[corner].copy_(p[corner])
    return new


@pytest.mark.parametrize("impl", ["expand", "realloc"])
@pytest.mark.parametrize("case", ["within", "beyond"])
@pytest.mark.parametrize("growth_shape", GROWTH_SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_growth(benchmark, growth_shape, case, impl, device, synced):
    kind, c_in, c_out = growth_shape
    benchmark.group = f"growth-{kind}-{case}-{c_in}x{c_out}"
    out_extra, in_extra = max(1, c_out // 8), max(1, c_in // 8)
    if impl == "expand":
        def step(layer):
            layer.expand(out_extra=out_extra, in_extra=in_extra)
    else:
        def step(layer):
            _reallocated(layer, kind, out_extra, in_extra)
    def setup():
        layer = _learned(kind, c_in, c_out, device, spare=case == "within")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (layer,), {}

    def run(layer):
        step(layer)
        if device.type == "cuda":
            torch.cuda.synchronize()
    benchmark.pedantic(run, setup=setup, rounds=50 if ON_GPU else 20, warmup_rounds=1)
