"""The training step as a CUDA graph: captured once per task, then replayed at every step.

At the paper's sizes a step is hundreds of small kernels, bound by their launches. Within a task
every step dispatches the same ops on tensors of the same shapes (tests/test_step_replayable.py),
every per-step value lives on the device, and nothing reads the device from the host
(tests/test_host_sync.py), so the whole step -- forward, backward, the gradient penalty's double
backward, both optimisers -- can be recorded once with :func:`torch.cuda.graph` and replayed as
one launch. ``torch.compile`` cannot trace that step (it breaks at ``backward()``); capture of the
eager step can.

:class:`CapturedStep` wraps a step function. Its first calls run eagerly (on a side stream, as
capture wants: optimiser state, autotuning and the allocator settle); then it captures the step
and from then on replays it. The graph is replayed on copies of the inputs in static buffers and
its outputs are cloned out, so callers may keep them. It is captured for the shapes of the first
call's inputs; a call with other shapes (the last, smaller batch of an epoch) runs eagerly: it is
the same step, on the same tensors. If the capture fails, every later call runs eagerly and
:meth:`CapturedStep.report` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WARMUP = 3  # eager steps before the capture (torch's guidance for graphs of whole networks)


def unavailable_reason(device: torch.device, enabled: bool) -> str | None:
    """Why a step on ``device`` is not captured, or ``None`` if it is."""
    if not enabled:
        return "turned off (--no-capture)"
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; the step runs on {device.type}"
    return None


class CapturedStep:
    """``step(*inputs) -> {name: tensor}``, captured at the call after ``warmup`` eager ones.

    ``generators``: the step's random generators other than the device's default one (e.g. a
    :class:`torch.Generator` of its own); each is registered with the graph, so every replay
    draws new numbers from it.
    """

    def __init__(self, step: Callable[..., dict], generators: tuple[torch.Generator, ...] = (),
                 warmup: int = WARMUP):
        self.step, self.generators, self.warmup = step, generators, warmup
        self.calls = 0
        self.shapes: list[tuple] = []  # of the first call's inputs: what the graph is captured for
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: dict = {}
        self.failure: str | None = None

    def __call__(self, *inputs: torch.Tensor) -> dict:
        self.calls += 1
        shapes = [(t.shape, t.dtype) for t in inputs]
        if self.calls == 1:
            self.shapes = shapes
        fits = shapes == self.shapes
        if fits and self.graph is None and self.failure is None and self.calls > self.warmup:
            self._capture(inputs)
        if fits and self.graph is not None:
            for buffer, value in zip(self.inputs, inputs):
                buffer.copy_(value)
            self.graph.replay()
            return {name: value.clone() for name, value in self.outputs.items()}
        if self.graph is None and self.failure is None:  # warm-up: on a side stream
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return out
        return self.step(*inputs)

    def _capture(self, inputs) -> None:
        """Record the step on static copies of ``inputs`` (nothing runs yet: the replay that
        follows is this call's step)."""
        self.inputs = [t.clone() for t in inputs]
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph):
                self.outputs = self.step(*self.inputs)
        except Exception as exc:  # an op that cannot be captured: say which, and run eagerly
            self.failure = f"capture failed: {type(exc).__name__}: {exc}"
            self.inputs, self.outputs = [], {}
            return
        self.graph = graph

    def report(self) -> dict:
        """``{"captured": bool, "reason": why not, or None}`` for ``metrics.json``."""
        if self.graph is not None:
            return {"captured": True, "reason": None}
        if self.failure is not None:
            return {"captured": False, "reason": self.failure}
        return {"captured": False, "reason": f"no step of the first step's shapes came after the {self.warmup} "
                                             f"eager ones ({self.calls} steps in all)"}
