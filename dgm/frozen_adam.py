"""Adam / AdamW that never moves reserved parameters, in one fused step.

Zeroing a reserved weight's gradient does not freeze it: weight decay and the running moments
still move it. :class:`FrozenAdam` reads a packed bit mask per parameter (the :mod:`dgm.bits`
layout of the parameter viewed as ``(shape[0], rest)``) and skips the reserved entries inside the
update, so they and their ``exp_avg`` / ``exp_avg_sq`` stay bit-identical. One extension call
(one CUDA launch for up to 24 parameters) updates the parameters of every group; without the
extension a pure-PyTorch path computes the same step. With no reserved masks it is
``torch.optim.Adam`` (or ``AdamW`` with ``decoupled_weight_decay=True``).

Every per-step value lives in device memory: each parameter's step count is a 0-d tensor on its
device, counted up in place, and the bias corrections are computed from it there (by the
extension's kernel, or by tensor ops), in double precision as ``torch.optim.Adam`` computes them
on the host. So no step passes a new value through the host, consecutive steps dispatch the same
ops, and a CUDA graph can replay the step. The learning rates and betas are the groups' numbers,
the same at every step.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from . import bits as _bits
from . import ops
from .ops.backends import BY_NAME, CHOICES

# The backend names FrozenAdam takes: auto, and the registered backends that implement its step.
BACKENDS = tuple(b for b in CHOICES if b == "auto" or "frozen_adam" in BY_NAME[b].ops)


class FrozenAdam(torch.optim.Optimizer):
    """Adam (L2 weight decay added to the gradient) or AdamW (``decoupled_weight_decay=True``) with
    per-parameter reserved masks (:meth:`set_reserved`).

    ``backend``: ``"extension"`` is the extension's multi-tensor step (its CPU build on CPU tensors),
    ``"reference"`` the pure-PyTorch step, ``"auto"`` the extension where it runs.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, decoupled_weight_decay: bool = False, backend: str = "auto"):
        if not 0.0 <= lr:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"betas must be two values in [0, 1), got {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if ops.check_backend(backend) not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} (FrozenAdam's step), got {backend!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "decoupled_weight_decay": bool(decoupled_weight_decay)}
        super().__init__(params, defaults)
        self.backend = backend
        self._reserved: dict[torch.Tensor, torch.Tensor] = {}

    def set_reserved(self, masks: dict[torch.Tensor, torch.Tensor | None]) -> None:
        """Replace every reserved mask: ``{param: bool mask of param's shape, or its packed bits}``.

        Parameters left out have none. Call again after the model consolidates or grows (a grown
        parameter is a new tensor). Masks are not part of :meth:`state_dict`: they come from the model.
        """
        params = {p for group in self.param_groups for p in group["params"]}
        reserved = {}
        for p, mask in masks.items():
            if p not in params:
                raise ValueError("set_reserved: a key is not a parameter of this optimiser")
            if mask is None:
                continue
            if p.dim() == 0:
                raise ValueError("set_reserved: a 0-dim parameter cannot take a reserved mask")
            reserved[p] = self._packed(p, mask)
        self._reserved = reserved

    def _packed(self, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            if mask.shape != p.shape:
                raise ValueError(f"set_reserved: bool mask of shape {tuple(mask.shape)} does not match its "
                                 f"parameter's {tuple(p.shape)}")
            mask = mask.to(p.device)
            return ops.bit_ops(self.backend, p.device).pack(mask)
        if mask.dtype == torch.uint8:
            expected = (p.shape[0], _bits.packed_cols(p[0].numel() if p.shape[0] else 0))
            if tuple(mask.shape) != expected:
                raise ValueError(f"set_reserved: packed bits of shape {tuple(mask.shape)} do not match a "
                                 f"parameter of shape {tuple(p.shape)}; expected {expected}")
            return mask.to(p.device).contiguous()
        raise TypeError(f"set_reserved: a mask must be bool (unpacked) or uint8 (packed bits), got {mask.dtype}")

    def _uses_extension(self, device: torch.device) -> bool:
        """Whether the step on ``device`` is the extension's (raises if it was asked for and cannot run)."""
        return ops.resolve(self.backend, "frozen_adam", device) == "extension"

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batches = defaultdict(list)  # (device, dtype) -> [(param, its group)], over every group
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FrozenAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                batches[(p.device, p.dtype)].append((p, group))
        for (device, _), batch in batches.items():
            torch._foreach_add_([self.state[p]["step"] for p, _ in batch], 1.0)
            if self._uses_extension(device):
                self._extension_step(batch)
            else:
                self._reference_step(batch)
        return loss

    def _extension_step(self, batch) -> None:
        states = [self.state[p] for p, _ in batch]
        groups = [g for _, g in batch]
        torch.ops.dgm.frozen_adam_([p for p, _ in batch], [p.grad for p, _ in batch], [s["exp_avg"] for s in states],
                                   [s["exp_avg_sq"] for s in states], [self._reserved.get(p) for p, _ in batch],
                                   [s["step"] for s in states], [g["lr"] for g in groups],
                                   [g["betas"][0] for g in groups], [g["betas"][1] for g in groups],
                                   [g["eps"] for g in groups], [g["weight_decay"] for g in groups],
                                   [g["decoupled_weight_decay"] for g in groups])

    def _reference_step(self, batch) -> None:
        """torch.optim.Adam's single-tensor update, the bias corrections of each group's parameters
        computed together; reserved entries are put back with ``where``."""
        by_group = defaultdict(list)
        for p, group in batch:
            by_group[id(group)].append((p, group))
        for members in by_group.values():
            group = members[0][1]
            corrections = _bias_corrections([self.state[p]["step"] for p, _ in members], group)
            for (p, _), (neg_step_size, bc2_sqrt) in zip(members, zip(*corrections)):
                state, bits = self.state[p], self._reserved.get(p)
                targets = (p, state["exp_avg"], state["exp_avg_sq"])
                work = targets if bits is None else tuple(t.clone() for t in targets)
                _adam_(*work, p.grad, group, neg_step_size, bc2_sqrt)
                if bits is not None:
                    keep = _bits.unpack(bits, p.shape)
                    for target, new in zip(targets, work):
                        target.copy_(torch.where(keep, target, new))


def _bias_corrections(steps: list[torch.Tensor], group) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``-lr / (1 - beta1^step)`` and ``sqrt(1 - beta2^step)`` of each step count (float64 0-d
    tensors): torch.optim.Adam's host arithmetic, on the device, a few multi-tensor ops per group."""
    beta1, beta2 = group["betas"]
    bc1 = torch._foreach_pow(beta1, steps)
    torch._foreach_neg_(bc1)
    torch._foreach_add_(bc1, 1.0)
    neg_step_sizes = torch._foreach_reciprocal(bc1)
    torch._foreach_mul_(neg_step_sizes, -group["lr"])
    bc2_sqrts = torch._foreach_pow(beta2, steps)
    torch._foreach_neg_(bc2_sqrts)
    torch._foreach_add_(bc2_sqrts, 1.0)
    torch._foreach_sqrt_(bc2_sqrts)
    return neg_step_sizes, bc2_sqrts


def _adam_(p, exp_avg, exp_avg_sq, grad, group, neg_step_size, bc2_sqrt) -> None:
    beta1, beta2 = group["betas"]
    wd = group["weight_decay"]
    if wd != 0:
        if group["decoupled_weight_decay"]:
            p.mul_(1 - group["lr"] * wd)
        else:
            grad = grad.add(p, alpha=wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(group["eps"])
    # p += neg_step_size * exp_avg / denom, rounded as addcdiv_(value=neg_step_size) rounds it.
    p.addcdiv_(exp_avg.mul(neg_step_size), denom)
