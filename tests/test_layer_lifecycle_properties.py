"""Property-based tests of a masked layer's whole life: random sequences of learning steps,
consolidations, growth and checkpoint round trips, on every backend that runs on the CPU.

After every step of a program these hold:

* reserved entries get exactly zero gradient, and they and their optimiser state are
  bit-identical to what they were (so, by induction, forever);
* every consolidated task's output is bit-identical to the one it gave when it was consolidated;
* per-row replay gives each row its task's output on the task's units, and zero beyond them;
* sizes, capacities, task bits and the policy's tensors agree;
* the layer computes what the reference backend computes from the same state (outputs and gradients).

Each example budget is fixed and derandomised, so CI runs the same examples every time.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dgm
from dgm.bits import packed_cols
from dgm.optim import FrozenAdam, ReservedGuard, reserved_masks

# name -> (layer class, positional args, keyword args, input's spatial size)
LAYERS = {
    "linear": (dgm.MaskedLinear, (3, 4), {}, ()),
    "conv2d": (dgm.MaskedConv2d, (2, 3, 3), {"padding": 1}, (4, 4)),
    "conv_transpose2d": (dgm.MaskedConvTranspose2d, (2, 3, 4), {"stride": 2, "padding": 1}, (2, 2)),
}
KINDS = ["weight", "activation"]
OPTIMISERS = ["frozen_adam", "adamw_guarded"]

LEARN = st.tuples(st.just("learn"), st.integers(0, 2**16), st.sampled_from([0.5, 2.0, 8.0]))
RELOAD = ("reload",)


@st.composite
def programs(draw, max_tasks: int, min_tasks: int = 1, min_learn: int = 0, min_growth: int = 0):
    """Steps of ``min_tasks`` to ``max_tasks`` tasks: each learns (zero steps: its consolidation is
    refused), maybe reloads, consolidates, grows (maybe not at all), maybe reloads again."""
    steps = []
    for _ in range(draw(st.integers(min_tasks, max_tasks))):
        steps += draw(st.lists(LEARN, min_size=min_learn, max_size=3))
        steps += [RELOAD] if draw(st.booleans()) else []
        steps += [("consolidate",), ("expand", draw(st.integers(min_growth, 3)), draw(st.integers(min_growth, 3)))]
        steps += [RELOAD] if draw(st.booleans()) else []
    return steps


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Life:
    """One layer (and its optimiser) living through a program, with what it must keep."""

    def __init__(self, name: str, kind: str, bias: bool, backend: str, optimiser: str):
        self.name, self.kind, self.bias, self.backend, self.optimiser = name, kind, bias, backend, optimiser
        self.dtype = torch.float32 if backend == "triton" else torch.float64
        self.tol = {"rtol": 1e-4, "atol": 1e-5} if self.dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
        torch.manual_seed(0)
        self.layer = self.build(backend)
        self.opt = self.make_optimiser()
        self.recorded = []  # (task, input, output when consolidated)
        self.frozen = self.reserved_snapshot()

    def build(self, backend: str) -> dgm.MaskedLayer:
        cls, args, kwargs, _ = LAYERS[self.name]
        return cls(*args, **kwargs, bias=self.bias, mask=self.kind, backend=backend, dtype=self.dtype)

    def make_optimiser(self) -> torch.optim.Optimizer:
        params = list(self.layer.parameters())
        if self.optimiser == "frozen_adam":
            return FrozenAdam(params, lr=0.05, weight_decay=0.01, decoupled_weight_decay=True)
        opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.01)
        ReservedGuard(opt, self.layer)  # its hooks live as long as the optimiser
        return opt

    def after_change(self) -> None:
        """FrozenAdam takes the reserved masks from the model (ReservedGuard reads them itself)."""
        if isinstance(self.opt, FrozenAdam):
            self.opt.set_reserved(reserved_masks(self.layer))

    def x(self, batch: int, in_units: int, seed: int) -> torch.Tensor:
        spatial = LAYERS[self.name][3]
        return torch.randn((batch, in_units) + spatial, generator=_seeded(seed), dtype=self.dtype)

    # -- the steps --------------------------------------------------------------------------------
    def learn(self, seed: int, s: float) -> None:
        """One optimiser step on a random gradient; reserved entries get exactly none."""
        self.layer.set_sharpness(s)
        y = self.layer(self.x(3, self.layer.in_units, seed))
        self.opt.zero_grad()
        (y * torch.randn(y.shape, generator=_seeded(seed + 1), dtype=self.dtype)).sum().backward()
        for name, mask in self.layer.reserved_masks().items():
            assert torch.all(getattr(self.layer, name).grad[mask] == 0), f"reserved {name} got a gradient"
        self.opt.step()

    def consolidate(self) -> None:
        if not any(bool(p.any()) for p in self.layer.logits()):  # nothing learned: refused, nothing changes
            before = self.layer.state_dict()
            before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in before.items()}
            with pytest.raises(ValueError, match="nothing was learned"):
                self.layer.consolidate()
            after = self.layer.state_dict()
            assert all(torch.equal(after[k], v) if isinstance(v, torch.Tensor) else after[k] == v
                       for k, v in before.items())
            return
        self.layer.consolidate()
        self.after_change()
        task = self.layer.task - 1
        x = self.x(2, self.layer.sizes(task)[1], seed=1000 + task)
        with torch.no_grad():
            self.recorded.append((task, x, self.layer(x, task=task)))

    def expand(self, out_extra: int, in_extra: int) -> None:
        self.layer.expand(out_extra, in_extra, optimizer=self.opt)
        self.after_change()

    def reload(self) -> None:
        """A checkpoint round trip: the layer and its optimiser into fresh ones."""
        layer_state, opt_state = self.layer.state_dict(), self.opt.state_dict()
        self.layer = self.build(self.backend)
        self.layer.load_state_dict(layer_state, resize=True)
        self.opt = self.make_optimiser()
        self.opt.load_state_dict(opt_state)
        self.after_change()

    def run(self, step) -> None:
        getattr(self, step[0])(*step[1:])
        self.check()
        self.frozen = self.reserved_snapshot()

    # -- the invariants ---------------------------------------------------------------------------
    def reserved_snapshot(self) -> dict:
        out = {}
        for name, mask in self.layer.reserved_masks().items():
            p = getattr(self.layer, name)
            state = {k: v.clone() for k, v in self.opt.state.get(p, {}).items()
                     if torch.is_tensor(v) and v.shape == p.shape}
            out[name] = (mask, p.detach().clone(), state)
        return out

    def check(self) -> None:
        self.check_reserved()
        x = self.x(3, self.layer.in_units, seed=13)
        y = self.layer(x)
        self.check_sizes(y)
        for task, x_task, y_task in self.recorded:
            assert torch.equal(self.layer(x_task, task=task), y_task), f"task {task}'s output changed"
        rows = self.check_rows(self.layer)
        if self.backend != "reference":
            self.check_against_reference(x, y, rows)

    def check_reserved(self) -> None:
        for name, (mask, values, state) in self.frozen.items():
            p = getattr(self.layer, name)
            corner = tuple(slice(0, n) for n in mask.shape)  # storage may have grown around it
            assert torch.equal(p.detach()[corner][mask], values[mask]), f"reserved {name} moved"
            now = self.opt.state.get(p, {})
            for key, v in state.items():
                assert torch.equal(now[key][corner][mask], v[mask]), f"optimiser state {key} of reserved {name} moved"

    def check_sizes(self, y: torch.Tensor) -> None:
        layer, out_dim = self.layer, self.layer._OUT_DIM
        assert layer.task_sizes.shape == (layer.task, 2)
        sizes = [layer.sizes(k) for k in range(layer.task)] + [layer.sizes()]
        assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in pairwise(sizes))  # layers only grow
        active, capacity = layer.active_weight().shape, layer.weight.shape
        assert (active[out_dim], active[1 - out_dim]) == sizes[-1]
        assert all(a <= c for a, c in zip(active, capacity)) and active[2:] == capacity[2:]
        if self.bias:
            assert layer.bias.shape == (capacity[out_dim],)
        if self.kind == "weight":
            assert layer.mask_logits.shape == capacity
            assert (layer.bias_logits is not None) == self.bias
            assert not self.bias or layer.bias_logits.shape == (capacity[out_dim],)
        else:
            assert layer.unit_logits.shape == (capacity[out_dim],)
        for k in range(layer.task):
            shape = layer.active_weight(k).shape
            packed = (shape[0], packed_cols(math.prod(shape[1:])))
            assert layer.task_bits(k).shape == (packed if self.kind == "weight" else (layer.sizes(k)[0], 1))
        assert 0 <= layer.reserved_count() <= layer.capacity()
        assert layer.mask_usage()[1] == layer.capacity() - layer.reserved_count()
        assert y.shape[layer._UNIT_DIM] == layer.out_units and y.shape[0] == 3

    def rows_input(self, layer, row_task: torch.Tensor) -> torch.Tensor:
        x = self.x(len(row_task), layer.in_units, seed=11)
        for r, t in enumerate(row_task.tolist()):  # as a network's previous layer: zero beyond the task's width
            x[r, layer.sizes(t)[1]:] = 0
        return x

    def check_rows(self, layer) -> torch.Tensor | None:
        """Per-row replay against each task's own forward; returns the replay's output."""
        if not layer.task:
            return None
        row_task = torch.arange(3) % layer.task
        x = self.rows_input(layer, row_task)
        y = layer(x, task=row_task)
        dim = layer._UNIT_DIM
        for r, t in enumerate(row_task.tolist()):
            out_units, in_units = layer.sizes(t)
            alone = layer(x[r:r + 1, :in_units], task=t)
            torch.testing.assert_close(y[r:r + 1].narrow(dim, 0, out_units), alone, **self.tol)
            assert torch.all(y[r:r + 1].narrow(dim, out_units, layer.out_units - out_units) == 0)
        return y

    def check_against_reference(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None) -> None:
        """The reference backend on the same state: the current task's output ``y`` of ``x`` and its
        gradients, the consolidated tasks' outputs, the per-row replay ``rows``."""
        ref = self.build("reference")
        ref.load_state_dict(self.layer.state_dict(), resize=True)
        want = ref(x)
        torch.testing.assert_close(y, want, **self.tol)
        grad = torch.randn(y.shape, generator=_seeded(14), dtype=self.dtype)
        for a, b in zip(torch.autograd.grad(y, list(self.layer.parameters()), grad, allow_unused=True),
                        torch.autograd.grad(want, list(ref.parameters()), grad, allow_unused=True)):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, **self.tol)
        for task, x_task, y_task in self.recorded:
            torch.testing.assert_close(ref(x_task, task=task), y_task, **self.tol)
        if rows is not None:
            torch.testing.assert_close(rows, self.check_rows(ref), **self.tol)


def _live(name, kind, bias, backend, optimiser, program) -> None:
    life = Life(name, kind, bias, backend, optimiser)
    life.check()
    for step in program:
        life.run(step)


SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=8, **SETTINGS)
@given(bias=st.booleans(), optimiser=st.sampled_from(OPTIMISERS), program=programs(max_tasks=4))
def test_lifecycle_on_the_reference(name, kind, bias, optimiser, program):
    _live(name, kind, bias, "reference", optimiser, program)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3, **SETTINGS)
@given(bias=st.booleans(), optimiser=st.sampled_from(OPTIMISERS), program=programs(max_tasks=3))
def test_lifecycle_on_the_extension(name, kind, bias, optimiser, program):
    if dgm.ops.unavailable_reason("extension", "linear", torch.device("cpu")) is not None:
        pytest.skip("the extension does not run on this CPU")
    _live(name, kind, bias, "extension", optimiser, program)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=1, **SETTINGS)
@given(bias=st.booleans(), optimiser=st.sampled_from(OPTIMISERS),
       program=programs(2, min_tasks=2, min_learn=1, min_growth=1))
def test_lifecycle_on_triton(name, kind, bias, optimiser, program):
    """Under the interpreter Triton is slow: one program per layer and mask, of two tasks that learn
    and grow."""
    if dgm.ops.unavailable_reason("triton", "linear", torch.device("cpu")) is not None:
        pytest.skip("Triton does not run on this CPU")
    _live(name, kind, bias, "triton", optimiser, program)
