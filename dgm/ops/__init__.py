"""One dispatch for every masked op: ``reference`` (pure PyTorch), ``triton`` and ``cuda`` backends.

A backend is a module that exposes some of the op functions of :mod:`dgm.ops.reference` with the
same signatures and meaning. ``backend="auto"`` picks, per op and device, the first available
backend in :data:`AUTO_PREFERENCE`; an explicit backend that cannot run the op raises.
"""

from __future__ import annotations

import importlib
import os

import torch

from .. import bits as _bits
from . import reference

BACKENDS = ("reference", "triton", "cuda")
OPS = ("linear", "conv2d", "conv_transpose2d")

# Per op, on a CUDA device, the order in which "auto" tries backends. The conv order is the one
# the benchmarks measured as faster (see benchmarks/results/); reference is always last.
AUTO_PREFERENCE = {
    "linear": ("triton", "cuda", "reference"),
    "conv2d": ("cuda", "triton", "reference"),
    "conv_transpose2d": ("cuda", "triton", "reference"),
}

_MODULES = {"reference": "dgm.ops.reference", "triton": "dgm.kernels", "cuda": "dgm.ops.extension"}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here."""


_LOADED: dict[str, tuple] = {}


def interpreting() -> bool:
    """Triton kernels run on the CPU interpreter (tests without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _load(backend: str):
    """The backend's module, or the reason it cannot be imported (imported once)."""
    if backend not in _LOADED:
        try:
            _LOADED[backend] = importlib.import_module(_MODULES[backend]), None
        except Exception as exc:  # an optional backend may be missing for many reasons
            _LOADED[backend] = None, f"{type(exc).__name__}: {exc}"
    return _LOADED[backend]


def check_backend(backend: str) -> str:
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    return backend


def unavailable_reason(backend: str, op: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device``, or ``None`` if it can."""
    module, error = _load(backend)
    if module is None:
        return f"backend {backend!r} failed to import ({error})"
    if not hasattr(module, op):
        return f"backend {backend!r} does not implement {op}"
    why = getattr(module, "unavailable_reason", None)
    why = why(device) if why is not None else None
    if why is not None:
        return f"backend {backend!r} cannot run on device {device}: {why}"
    runs_on = getattr(module, "runs_on", None)
    if runs_on is not None and not runs_on(device):
        return f"backend {backend!r} cannot run on device {device}"
    return None


def resolve(backend: str, op: str, device: torch.device) -> str:
    """The concrete backend that runs ``op`` on ``device`` for the requested ``backend``."""
    check_backend(backend)
    if backend == "auto":
        order = AUTO_PREFERENCE[op] if device.type == "cuda" else ("reference",)
        return next(b for b in order if unavailable_reason(b, op, device) is None)
    reason = unavailable_reason(backend, op, device)
    if reason is not None:
        raise BackendUnavailable(reason)
    return backend


def fastest_backend(device: torch.device) -> str:
    """The backend ``--fused`` asks for on ``device``: ``"auto"`` (per op, the fastest that runs)
    on a CUDA device where a fused backend runs, else ``"reference"`` (on the CPU the Triton
    interpreter is for testing kernels, not for speed)."""
    if device.type == "cuda" and any(resolve("auto", op, device) != "reference" for op in OPS):
        return "auto"
    return "reference"


def fused_unavailable_reason(device: torch.device) -> str:
    """Why no fused backend runs on ``device`` (for the ``--fused`` fallback warning)."""
    if device.type != "cuda":
        return "the fused kernels need a CUDA GPU"
    return "; ".join(filter(None, (unavailable_reason(b, "linear", device) for b in ("triton", "cuda"))))


def _dispatch(op: str):
    ref = getattr(reference, op)

    def run(x, *args, backend: str = "reference", **kwargs):
        module, _ = _load(resolve(backend, op, x.device))
        return getattr(module, op)(x, *args, **kwargs)

    run.__name__ = op
    run.__doc__ = f"{ref.__doc__}\n\nDispatched on ``backend`` ({', '.join(BACKENDS)} or auto)."
    return run


def bit_ops(backend: str, device: torch.device):
    """The packed-bit functions (``pack``, ``unpack``, ``popcount``: :mod:`dgm.bits`' layout and
    results) for a layer of ``backend`` on ``device``: the extension's one-pass kernels on a CUDA
    device when the layer's ops may be fused and the extension runs there, else :mod:`dgm.bits`."""
    if check_backend(backend) != "reference" and device.type == "cuda":
        module, _ = _load("cuda")
        if module is not None and module.unavailable_reason(device) is None:
            return module
    return _bits


linear = _dispatch("linear")
conv2d = _dispatch("conv2d")
conv_transpose2d = _dispatch("conv_transpose2d")

__all__ = ["BACKENDS", "BackendUnavailable", "bit_ops", "resolve", "fastest_backend", "fused_unavailable_reason",
           "linear", "conv2d", "conv_transpose2d", "reference"]

# Import every backend now, outside any traced code, so that dispatching under torch.compile is a
# dict lookup (importlib inside a traced function breaks the graph).
for _backend in BACKENDS:
    _load(_backend)
