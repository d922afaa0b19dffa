"""The one way backend tests compare a backend with the reference (helpers, no tests).

:func:`rel_err` is the error metric: ``||got - want|| / max(||want||, tiny)`` (Frobenius norms,
in float64). :func:`check` runs a masked op on a backend in a dtype and on the reference in float64
from the same (rounded) inputs, and compares the output and every gradient with it, within
:data:`TOL` of the dtype.
"""

import functools

import torch

from dgm import bits, ops
from dgm.ops import reference

# Relative error allowed per dtype the backend computes in: float64 is exact up to summation
# order; fp32 dots are exact under the interpreter and ieee on a GPU (summation order again);
# fp16/bf16 round the inputs of the product and its output.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
TINY = 1e-30


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).norm() / want.norm().clamp_min(TINY)).item()


class On:
    """The ops of :mod:`dgm.ops` on one backend, as a module: ``On("triton").linear(...)``."""

    def __init__(self, backend: str):
        self.backend = backend

    def __getattr__(self, op: str):
        return functools.partial(getattr(ops, op), backend=self.backend)


def leaves(tensors: dict, dtype, grads=()) -> dict:
    """Copies of ``tensors`` (floating ones cast to ``dtype``), the names in ``grads`` requiring grad."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().to(dtype) if t.is_floating_point() else t
        out[name] = t.requires_grad_(name in grads)
    return out


def check(impl, fn, tensors: dict, dtype: torch.dtype, grads=(), tol: float | None = None) -> dict:
    """``fn(impl, **tensors)`` in ``dtype`` vs ``fn(reference, ...)`` in float64; returns ``impl``'s
    gradients of the names in ``grads``."""
    tol = TOL[dtype] if tol is None else tol
    fast = leaves(tensors, dtype, grads)
    # The reference runs in float64 on exactly the values the backend saw.
    ref = leaves({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, torch.float64, grads)
    y = fn(impl, **fast)
    y_ref = fn(reference, **ref)
    assert y.dtype == dtype and y.shape == y_ref.shape
    err = rel_err(y, y_ref)
    assert err < tol, f"output: relative error {err:.3g} >= {tol:g}"
    if not grads:
        return {}
    dy = torch.randn(y.shape, dtype=torch.float64, device=y.device).to(dtype)
    got = torch.autograd.grad(y, [fast[n] for n in grads], dy, allow_unused=True)
    want = torch.autograd.grad(y_ref, [ref[n] for n in grads], dy.double(), allow_unused=True)
    for name, g, w in zip(grads, got, want):
        if w is None:
            assert g is None or not g.any(), f"grad {name}: expected none"
            continue
        assert g is not None, f"grad {name}: missing"
        assert g.dtype == fast[name].dtype and g.shape == w.shape, f"grad {name}: dtype/shape"
        err = rel_err(g, w)
        assert err < tol, f"grad {name}: relative error {err:.3g} >= {tol:g}"
    return dict(zip(grads, got))


def random_bits(*shape_rows_cols, p: float = 0.5, generator=None) -> torch.Tensor:
    """Packed bits of a random bool mask of logical shape ``(rows, *rest)`` (or stacked tasks)."""
    *lead, rows, cols = shape_rows_cols
    masks = torch.rand(*lead, rows, cols, generator=generator) < p
    if lead:
        return torch.stack([bits.pack(m) for m in masks.reshape(-1, rows, cols)]).reshape(*lead, rows, -1)
    return bits.pack(masks)
