"""Adam / AdamW that never moves reserved parameters, in one fused step.

Zeroing a reserved weight's gradient does not freeze it: weight decay and the running moments
still move it. :class:`FrozenAdam` reads a packed bit mask per parameter (the :mod:`dgm.bits`
layout of the parameter viewed as ``(shape[0], rest)``) and skips the reserved entries inside the
update, so they and their ``exp_avg`` / ``exp_avg_sq`` stay bit-identical. One extension call
(one CUDA launch) updates every parameter of a group; without the extension a pure-PyTorch path
computes the same step. With no reserved masks it is ``torch.optim.Adam`` (or ``AdamW`` with
``decoupled_weight_decay=True``).
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
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            batches = defaultdict(list)  # (device, dtype) -> [(param, state, neg_step_size, bc2_sqrt)]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("FrozenAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0  # a host number: the bias corrections never read the device
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = step = int(state["step"]) + 1
                neg_step_size = -group["lr"] / (1 - beta1 ** step)
                bc2_sqrt = (1 - beta2 ** step) ** 0.5
                batches[(p.device, p.dtype)].append((p, state, neg_step_size, bc2_sqrt))
            for (device, _), batch in batches.items():
                if self._uses_extension(device):
                    self._extension_step(group, batch)
                else:
                    for p, state, neg_step_size, bc2_sqrt in batch:
                        self._reference_step(group, p, state, neg_step_size, bc2_sqrt)
        return loss

    def _extension_step(self, group, batch) -> None:
        params, grads, exp_avgs, exp_avg_sqs, reserved, neg_step_sizes, bc2_sqrts = ([] for _ in range(7))
        for p, state, neg_step_size, bc2_sqrt in batch:
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            bits = self._reserved.get(p)
            reserved.append(None if bits is None else bits.to(p.device))
            neg_step_sizes.append(neg_step_size)
            bc2_sqrts.append(bc2_sqrt)
        beta1, beta2 = group["betas"]
        torch.ops.dgm.frozen_adam_(params, grads, exp_avgs, exp_avg_sqs, reserved, neg_step_sizes, bc2_sqrts,
                                   group["lr"], beta1, beta2, group["eps"], group["weight_decay"],
                                   group["decoupled_weight_decay"])

    def _reference_step(self, group, p, state, neg_step_size, bc2_sqrt) -> None:
        """torch.optim.Adam's single-tensor update; reserved entries are put back with ``where``."""
        bits = self._reserved.get(p)
        targets = (p, state["exp_avg"], state["exp_avg_sq"])
        work = targets if bits is None else tuple(t.clone() for t in targets)
        _adam_(*work, p.grad, group, neg_step_size, bc2_sqrt)
        if bits is not None:
            keep = _bits.unpack(bits.to(p.device), p.shape)
            for target, new in zip(targets, work):
                target.copy_(torch.where(keep, target, new))


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
    p.addcdiv_(exp_avg, denom, value=neg_step_size)
