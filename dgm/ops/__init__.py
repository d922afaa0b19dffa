"""One dispatch for every masked op over the backends of :mod:`dgm.ops.backends`.

A backend is a module exposing some of the op functions of :mod:`dgm.ops.reference` with the same
signatures and meaning: ``reference`` (pure PyTorch), ``triton`` (``dgm.kernels``) and
``extension`` (``dgm._C``, CUDA or CPU build). Each declares what it serves; per call,
``backend="auto"`` takes the first backend of :func:`dgm.ops.backends.preference` (for a linear on
a GPU, the fused backends ordered per call by the cost model of :mod:`dgm.ops.cost`) that serves the
input (logging at debug level why it passed over the others; :func:`reasons` says the same), and
an explicitly named backend that cannot serve the input raises :class:`UnsupportedInput` naming
the input and the reason -- never a silent fallback.

Backend modules are imported on first use, not by ``import dgm``: when a layer is built
(:func:`check_backend`) or at the first eager call, so that a call traced by ``torch.compile``
only looks up modules already imported. A module that fails to import is reported once with its
error as a :class:`BackendImportWarning`, and by :func:`available`.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType
from typing import NamedTuple

import torch

from .. import bits as _bits
from . import cost, reference
from .backends import BACKENDS, BY_NAME, CHOICES, MASKED_OPS, call_features, preference, validate

logger = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here (failed import, device, op not implemented)."""


class UnsupportedInput(BackendUnavailable, ValueError):
    """An explicitly requested backend does not serve this input (dtype, geometry, mask form)."""


class BackendImportWarning(RuntimeWarning):
    """A backend's module failed to import; the backend is unusable until that is fixed."""


class BackendStatus(NamedTuple):
    """One row of :func:`available`."""
    backend: str
    usable: bool
    reason: str   # why it is not usable, or what it is


_MODULES: dict[str, ModuleType] = {"reference": reference}
_IMPORT_ERRORS: dict[str, str] = {}
_DEVICE_REASONS: dict[tuple[str, str], str | None] = {}


def load(backend: str) -> ModuleType | None:
    """The backend's module, imported on first use; ``None`` if its import failed (warned once,
    the error kept for :func:`available` and the errors of explicit requests)."""
    if backend not in _MODULES and backend not in _IMPORT_ERRORS:
        module = BY_NAME[backend].module
        try:
            _MODULES[backend] = importlib.import_module(module)
        except Exception as exc:  # an optional backend may be broken in many ways: report, never hide
            _IMPORT_ERRORS[backend] = f"import of {module} failed: {type(exc).__name__}: {exc}"
            warnings.warn(f"dgm.ops: backend {backend!r} is unusable: {_IMPORT_ERRORS[backend]}",
                          BackendImportWarning, stacklevel=2)
    return _MODULES.get(backend)


def check_backend(backend: str) -> str:
    """:func:`~dgm.ops.backends.validate` a backend name and import, here and outside any traced
    code, every backend module it may use on this machine's devices."""
    validate(backend)
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    used = {backend} if backend != "auto" else {b for d in devices for op in MASKED_OPS for b in preference(op, d)}
    if backend != "reference" and "cuda" in devices:
        used.add("extension")  # the layers' bit packing on a GPU (bit_ops)
    for name in sorted(used):
        if load(name) is not None:
            for d in devices:
                _device_reason(name, d)
    return backend


def _device_reason(backend: str, device_type: str) -> str | None:
    """Why the (imported) backend cannot run on devices of ``device_type`` (cached per type)."""
    key = (backend, device_type)
    if key not in _DEVICE_REASONS:
        why = getattr(_MODULES[backend], "unavailable_reason", None)
        _DEVICE_REASONS[key] = why(torch.device(device_type)) if why is not None else None
    return _DEVICE_REASONS[key]


def unavailable_reason(backend: str, op: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device`` at all (whatever the input), or ``None``."""
    if op not in BY_NAME[backend].ops:
        return f"backend {backend!r} does not implement {op}"
    if load(backend) is None:
        return f"backend {backend!r} is unusable: {_IMPORT_ERRORS[backend]}"
    why = _device_reason(backend, torch.device(device).type)
    return None if why is None else f"backend {backend!r} cannot run on {torch.device(device)}: {why}"


def resolve(backend: str, op: str, device: torch.device) -> str:
    """The backend that runs ``op`` on ``device`` for the requested one, whatever the input: the
    first of ``auto``'s preference that runs there, or the named one (raising if it cannot)."""
    device = torch.device(device)
    if validate(backend) == "auto":
        return next(b for b in preference(op, device.type) if unavailable_reason(b, op, device) is None)
    reason = unavailable_reason(backend, op, device)
    if reason is not None:
        raise BackendUnavailable(reason)
    return backend


def _refusal(backend: str, op: str, x, args: tuple, kwargs: dict) -> BackendUnavailable | None:
    """The error an explicit request of ``backend`` for this call raises, or ``None`` if it runs it."""
    reason = unavailable_reason(backend, op, x.device)
    if reason is not None:
        return BackendUnavailable(reason)
    why = BY_NAME[backend].input_reason(op, x.dtype, *call_features(op, x, args, kwargs))
    if why is not None:
        return UnsupportedInput(f"backend {backend!r} does not serve this {op} input: {why}")
    return None


def _candidates(op: str, x, args: tuple, kwargs: dict) -> tuple[str, ...]:
    """``auto``'s order for this call: :func:`~dgm.ops.backends.preference`, a linear on a GPU
    reordered by :func:`dgm.ops.cost.linear_order` (from the shapes alone)."""
    order = preference(op, x.device.type)
    if op == "linear" and x.device.type == "cuda":
        order = cost.linear_order(order, x, args[0] if args else kwargs.get("weight"), kwargs)
    return order


def reasons(op: str, x, *args, backend: str = "auto", **kwargs) -> dict[str, str | None]:
    """For the call ``op(x, *args, **kwargs)``: each backend ``backend`` would consider, in order,
    with why it would not run it (``None`` for the one that would, the last entry)."""
    candidates = _candidates(op, x, args, kwargs) if validate(backend) == "auto" else (backend,)
    out = {}
    for b in candidates:
        refusal = _refusal(b, op, x, args, kwargs)
        out[b] = None if refusal is None else str(refusal)
        if refusal is None:
            break
    return out


def _choose(backend: str, op: str, x, args: tuple, kwargs: dict) -> str:
    if backend != "auto":
        refusal = _refusal(backend, op, x, args, kwargs)
        if refusal is not None:
            raise refusal
        return backend
    for b in _candidates(op, x, args, kwargs):
        refusal = _refusal(b, op, x, args, kwargs)
        if refusal is None:
            return b
        if not torch.compiler.is_compiling():
            logger.debug("auto %s: passing over %s", op, refusal)
    raise AssertionError("the reference serves every input")  # pragma: no cover


def _dispatch(op: str):
    ref = getattr(reference, op)

    def run(x, *args, backend: str = "reference", **kwargs):
        if backend not in CHOICES:
            validate(backend)  # raises, naming the choices (or the new name of a renamed one)
        return getattr(_MODULES[_choose(backend, op, x, args, kwargs)], op)(x, *args, **kwargs)

    run.__name__ = op
    run.__doc__ = f"{ref.__doc__}\n\nDispatched on ``backend`` ({', '.join(CHOICES)})."
    return run


linear = _dispatch("linear")
conv2d = _dispatch("conv2d")
conv_transpose2d = _dispatch("conv_transpose2d")


def available(device: torch.device | str | None = None) -> list[BackendStatus]:
    """Every registered backend, whether it runs masked ops on ``device`` (default: the GPU if
    there is one, else the CPU), and why not -- or what it is. Imports every backend module."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in BACKENDS:
        why = unavailable_reason(name, "linear", device)
        rows.append(BackendStatus(name, why is None, why if why is not None else BY_NAME[name].summary))
    return rows


def fastest_backend(device: torch.device) -> str:
    """The backend ``--fused`` asks for on ``device``: ``"auto"`` (per call, the first that serves
    it) on a CUDA device where a fused backend runs, else ``"reference"`` (on the CPU the Triton
    interpreter and the extension's CPU build are for testing, not for speed)."""
    if device.type == "cuda" and any(resolve("auto", op, device) != "reference" for op in MASKED_OPS):
        return "auto"
    return "reference"


def fused_unavailable_reason(device: torch.device) -> str:
    """Why no fused backend runs on ``device`` (for the ``--fused`` fallback warning)."""
    if device.type != "cuda":
        return "the fused kernels need a CUDA GPU"
    fused = [b for b in BACKENDS if b != "reference"]
    return "; ".join(filter(None, (unavailable_reason(b, "linear", device) for b in fused)))


def bit_ops(backend: str, device: torch.device):
    """The packed-bit functions (``pack``, ``unpack``, ``popcount``: :mod:`dgm.bits`' layout and
    results) for a layer of ``backend`` on ``device``: the extension's one-pass kernels on a CUDA
    device when the layer's ops may be fused and the extension runs there, else :mod:`dgm.bits`."""
    if backend != "reference" and device.type == "cuda" and unavailable_reason("extension", "bits", device) is None:
        return _MODULES["extension"]
    return _bits


__all__ = ["BACKENDS", "CHOICES", "BackendImportWarning", "BackendStatus", "BackendUnavailable", "UnsupportedInput",
           "available", "bit_ops", "check_backend", "conv2d", "conv_transpose2d", "fastest_backend",
           "fused_unavailable_reason", "linear", "load", "reasons", "reference", "resolve", "unavailable_reason"]
