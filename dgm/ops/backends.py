"""The backend registry: every backend of :mod:`dgm.ops`, the module that implements it, and what
it serves (ops, dtypes, geometries, mask forms).

The declarations are data, so that the dispatcher can refuse an input with its reason, and
``auto`` can pass over a backend, without importing any backend module (:mod:`dgm.ops` imports
a module the first time its backend is used). Whether a backend runs on a device at all is the
module's own :func:`unavailable_reason` (Triton's interpreter, a CUDA or CPU build of ``dgm._C``).
The conformance tests (``tests/test_backend_conformance.py``) run every registered backend on
every declared input against the reference, and check that the rest raise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASKED_OPS = ("linear", "conv2d", "conv_transpose2d")
# Besides the masked ops: FrozenAdam's step and the packed-bit functions of dgm.bits.
OTHER_OPS = ("frozen_adam", "bits")

# Input geometries some backends do not serve, by the words an error uses for them.
GEOMETRIES = {
    "groups": "a grouped convolution (groups > 1)",
    "string_padding": "string padding ('same' or 'valid')",
    "unbatched": "an unbatched 3-D conv input",
    "rows_of_nd_input": "row_task or unit_scale with a linear input that is not 2-D",
}

# The mask arguments an op call may carry (dgm.ops.reference's module docstring defines them).
MASK_FORMS = {
    "logits": "a soft weight mask (logits)",
    "bits": "one task's weight bits",
    "row_bits": "per-row weight bits (row_task)",
    "frozen_bits": "frozen weight bits",
    "frozen_units": "frozen units (DGMa)",
    "unit_scale": "a per-unit unit_scale",
    "row_unit_scale": "a per-row unit_scale",
    "bias_logits": "a soft bias mask (bias_logits)",
    "bias_bits": "one task's bias bits",
    "row_bias_bits": "per-row bias bits (row_task)",
    "frozen_bias_bits": "frozen bias bits",
}

FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


@dataclass(frozen=True)
class Backend:
    """One backend: its name, the module implementing it and what it serves."""
    name: str
    module: str
    summary: str
    ops: frozenset
    dtypes: frozenset
    geometries: frozenset
    mask_forms: frozenset

    def input_reason(self, op: str, dtype: torch.dtype, geometries: frozenset, forms: frozenset) -> str | None:
        """Why this backend does not serve an ``op`` call with these features, or ``None``."""
        if op not in self.ops:
            return f"it does not implement {op}"
        if dtype not in self.dtypes:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.dtypes))
            return f"input dtype {str(dtype).removeprefix('torch.')} (it computes in {names})"
        for g in sorted(geometries - self.geometries):
            return f"{GEOMETRIES[g]} is not served"
        for f in sorted(forms - self.mask_forms):
            return f"{MASK_FORMS[f]} is not served"
        return None


REGISTRY = (
    Backend("reference", "dgm.ops.reference", "pure PyTorch: the definition of every op",
            frozenset(MASKED_OPS + OTHER_OPS), FLOATS, frozenset(GEOMETRIES), frozenset(MASK_FORMS)),
    Backend("triton", "dgm.kernels", "fused Triton GEMMs and implicit-GEMM convs (CUDA, or the interpreter)",
            frozenset(MASKED_OPS), frozenset({torch.float16, torch.bfloat16, torch.float32}), frozenset(),
            frozenset(MASK_FORMS)),
    Backend("extension", "dgm.ops.extension", "the C++/CUDA extension dgm._C: fused mask passes around ATen's "
            "product (CUDA or CPU build)",
            frozenset(MASKED_OPS + OTHER_OPS), FLOATS, frozenset({"groups", "unbatched", "rows_of_nd_input"}),
            frozenset(MASK_FORMS)),
)
BY_NAME = {b.name: b for b in REGISTRY}
BACKENDS = tuple(BY_NAME)
CHOICES = BACKENDS + ("auto",)
# Old names, refused with their new one.
RENAMED = {"cuda": "extension"}


def validate(backend: str) -> str:
    """``backend`` if it names a backend or ``auto``; else a ``ValueError`` naming the choices (or
    the new name of a renamed backend)."""
    if backend in RENAMED:
        raise ValueError(f"backend {backend!r} is now called {RENAMED[backend]!r} (the C++/CUDA extension, "
                         f"which also runs on the CPU)")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(CHOICES)}; got {backend!r}")
    return backend

# The backend ``auto`` tries first, per op and device type; the first one that serves the call runs
# it, and the reference always can. On a GPU, linear goes to Triton's fused GEMMs or the extension's
# cuBLAS path, whichever the cost model of dgm.ops.cost puts first for the call's sizes; the convs go to
# the extension (cuDNN with fused mask passes) before the implicit-GEMM Triton convs -- an order not
# measured yet (no GPU benchmark exists, see docs/benchmarks.md). On the CPU the masked ops run on
# the reference: the interpreter and the extension's CPU build are there for tests, not speed.
# FrozenAdam's step takes the extension wherever it runs (one multi-tensor call per group).
_GPU_CONV = ("extension", "triton", "reference")
AUTO_PREFERENCE = {
    "cuda": {"linear": ("triton", "extension", "reference"), "conv2d": _GPU_CONV, "conv_transpose2d": _GPU_CONV,
             "frozen_adam": ("extension", "reference"), "bits": ("extension", "reference")},
    "cpu": {"linear": ("reference",), "conv2d": ("reference",), "conv_transpose2d": ("reference",),
            "frozen_adam": ("extension", "reference"), "bits": ("reference",)},
}
OTHER_DEVICES = {op: ("reference",) for op in MASKED_OPS + OTHER_OPS}


def preference(op: str, device_type: str) -> tuple[str, ...]:
    """The order in which ``auto`` tries backends for ``op`` on a device of ``device_type``."""
    return AUTO_PREFERENCE.get(device_type, OTHER_DEVICES)[op]


# Where the conv ops take their geometry positionally, after ``(x, weight, bias)``.
_CONV_POSITIONS = {"conv2d": ("stride", "padding", "dilation", "groups"),
                   "conv_transpose2d": ("stride", "padding", "output_padding", "groups", "dilation")}


def call_features(op: str, x: torch.Tensor, args: tuple, kwargs: dict) -> tuple[frozenset, frozenset]:
    """``(geometries, mask forms)`` of an op call ``op(x, *args, **kwargs)`` (``args`` start with the
    weight), in the names of :data:`GEOMETRIES` and :data:`MASK_FORMS`."""
    geometries = set()
    if op in _CONV_POSITIONS:
        params = dict(zip(_CONV_POSITIONS[op], args[2:]))
        params.update((k, kwargs[k]) for k in _CONV_POSITIONS[op] if k in kwargs)
        if params.get("groups", 1) != 1:
            geometries.add("groups")
        if isinstance(params.get("padding", 0), str):
            geometries.add("string_padding")
        if x.dim() == 3:
            geometries.add("unbatched")
    elif x.dim() != 2 and (kwargs.get("row_task") is not None or kwargs.get("unit_scale") is not None):
        geometries.add("rows_of_nd_input")
    given = {k for k, v in kwargs.items() if v is not None and k in MASK_FORMS}
    rows = "row_task" in kwargs and kwargs["row_task"] is not None
    forms = {f"row_{k}" if rows and k in ("bits", "bias_bits") else k for k in given}
    if "unit_scale" in given and kwargs["unit_scale"].dim() == 2:
        forms = (forms - {"unit_scale"}) | {"row_unit_scale"}
    return frozenset(geometries), frozenset(forms)
