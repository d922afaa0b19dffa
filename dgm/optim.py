"""Optimisers that never move reserved parameters.

Zeroing a gradient is not enough to freeze a weight: weight decay and momentum still move it.
:class:`ReservedGuard` makes any ``torch.optim`` optimiser leave the reserved entries of masked
layers, and their optimiser state, bit-identical: it snapshots them before each ``step`` and
puts them back after. :class:`~dgm.frozen_adam.FrozenAdam` skips them inside its own update (one
fused step, what the trainer uses).
"""

from __future__ import annotations

import torch
from torch import nn

from .frozen_adam import FrozenAdam
from .layers import MaskedLayer

__all__ = ["FrozenAdam", "ReservedGuard", "reserved_masks"]


def reserved_masks(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """Every masked layer's parameters in ``model`` -> bool mask of their reserved entries."""
    out = {}
    for layer in model.modules():
        if isinstance(layer, MaskedLayer) and layer.task > 0:
            for name, mask in layer.reserved_masks().items():
                if mask.any():
                    out[getattr(layer, name)] = mask
    return out


class ReservedGuard:
    """Keep ``optimizer`` off the reserved entries of ``model``'s masked layers.

    The guard reads the masks once and again whenever a masked layer consolidates, grows or
    loads (each layer counts its changes in ``version``), not at every step. Removing the guard:
    :meth:`remove`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module):
        self.optimizer, self.model = optimizer, model
        self.refresh()
        self._saved = None
        self._handles = [optimizer.register_step_pre_hook(self._save),
                         optimizer.register_step_post_hook(self._restore)]

    def refresh(self) -> None:
        """Read the reserved masks now (done automatically when a layer changes)."""
        self._masks = reserved_masks(self.model)
        self._stamp = self._versions()

    def _versions(self):
        return [(id(m), m.version) for m in self.model.modules() if isinstance(m, MaskedLayer)]

    def _tensors(self, p):
        state = self.optimizer.state.get(p, {})
        return [p] + [v for v in state.values() if torch.is_tensor(v) and v.shape == p.shape]

    @torch.no_grad()
    def _save(self, *_):
        if self._versions() != self._stamp:
            self.refresh()
        self._saved = {p: [t[m].clone() for t in self._tensors(p)] for p, m in self._masks.items()}

    @torch.no_grad()
    def _restore(self, *_):
        for p, m in self._masks.items():
            tensors = self._tensors(p)
            saved = self._saved[p]
            # State created by this very step (first step) held nothing before: reserved stays zero.
            for i, t in enumerate(tensors):
                t[m] = saved[i] if i < len(saved) else 0
        self._saved = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
