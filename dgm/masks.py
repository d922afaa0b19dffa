"""The mask schedule and mask-gradient rules of DGM, as plain formulas.

* :func:`sharpness` -- the annealed sharpness ``s`` of ``sigmoid(s * logits)``;
  :class:`SharpnessSchedule` -- the same for a training step, in device memory.
* :func:`compensate_logit_grad_` -- HAT's embedding gradient compensation.
* :func:`sparsity_regularizer` -- ``R = sum(m_t * (1 - m_<t)) / sum(1 - m_<t)`` over all layers.
"""

from __future__ import annotations

import torch


def sharpness(epoch: int, epochs: int, batch: int, batches: int, s_max: float) -> float:
    """Sharpness ``s`` at ``batch`` of ``epoch``: ``s = 1/s_max + (s_max - 1/s_max) * b / (B - 1)``.

    Within every epoch ``s`` grows linearly from ``1/s_max`` (an almost flat, trainable mask) to
    ``s_max`` (an almost binary one), as in HAT, which the paper adopts. ``epoch``/``epochs`` only
    validate the position. Consolidation binarises at the limit (``logits > 0``).
    """
    if s_max < 1:
        raise ValueError(f"s_max must be >= 1, got {s_max}")
    if not (0 <= epoch < epochs and 0 <= batch < batches):
        raise ValueError(f"need 0 <= epoch < epochs and 0 <= batch < batches, got "
                         f"epoch={epoch}, epochs={epochs}, batch={batch}, batches={batches}")
    return 1 / s_max + (s_max - 1 / s_max) * batch / max(batches - 1, 1)


class SharpnessSchedule:
    """:func:`sharpness` of every batch of an epoch, with HAT's gain ``s_max / s``, in device memory,
    and the position in the epoch as a device counter.

    :meth:`next` hands a step its ``s`` without the host passing a value, so every step of a task
    dispatches the same ops (what a CUDA graph replays). The table holds the host's double
    precision values rounded once to float32, the precision the ops compute ``s * logits`` in:
    the numbers are those of the host's schedule. The counter follows the task loop's batches
    (:func:`dgm.methods.base.minibatches`): one :meth:`next` per batch, from the first.
    """

    def __init__(self, batches: int, s_max: float, device: torch.device | str | None = None):
        values = [sharpness(0, 1, b, batches, s_max) for b in range(batches)]
        self.table = torch.tensor([(s, s_max / s) for s in values], dtype=torch.float32, device=device)
        self.batch = torch.zeros(1, dtype=torch.long, device=device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, s_max / s)`` of this batch as 0-d tensors; the counter moves to the next batch
        (the first again after an epoch's last)."""
        s, gain = self.table.index_select(0, self.batch)[0]
        self.batch.add_(1).remainder_(self.table.shape[0])
        return s, gain


def compensate_logit_grad_(logits: torch.Tensor, s: float | torch.Tensor, gain: float | torch.Tensor,
                           clamp: float = 50.0) -> None:
    """HAT's compensation, in place: ``grad *= gain * (cosh(clamp(s*e)) + 1) / (cosh(e) + 1)`` with
    ``gain = s_max / s`` (:class:`SharpnessSchedule` keeps both on the device).

    Without it the mask gradient ``s * m * (1 - m)`` vanishes while ``s`` is small (Serra et al.,
    HAT). The clamp keeps ``cosh`` finite.
    """
    if logits.grad is None:
        return
    e = logits.detach()
    num = torch.cosh(torch.clamp(s * e, -clamp, clamp)) + 1
    den = torch.cosh(e) + 1
    logits.grad.mul_(gain * num / den)


def sparsity_regularizer(terms) -> torch.Tensor:
    """``sum(num) / sum(den)`` over the ``(num, den)`` pairs of every masked layer.

    Each layer gives ``num = sum(m_t * (1 - m_<t))`` and ``den = sum(1 - m_<t)`` over its own
    mask entries (weights for DGMw, units for DGMa), so the ratio is the share of the still-free
    capacity that the current task takes (the paper's sparsity regulariser; summed over layers as in the official code).
    """
    terms = list(terms)
    if not terms:
        raise ValueError("sparsity_regularizer: no masked layers")
    num = sum(n for n, _ in terms)
    den = sum(d for _, d in terms)
    return num / max(den, 1)


__all__ = ["SharpnessSchedule", "sharpness", "compensate_logit_grad_", "sparsity_regularizer"]
