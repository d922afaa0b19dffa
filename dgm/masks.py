"""The mask schedule and mask-gradient rules of DGM, as plain formulas.

* :func:`sharpness` -- the annealed sharpness ``s`` of ``sigmoid(s * logits)``.
* :func:`compensate_logit_grad_` -- HAT's embedding gradient compensation.
* :func:`sparsity_regularizer` -- ``R = sum(m_t * (1 - m_<t)) / sum(1 - m_<t)`` over all layers.
"""

from __future__ import annotations

import torch


def sharpness(epoch: int, epochs: int, batch: int, batches: int, s_max: float) -> float:
    """Sharpness ``s`` at ``batch`` of ``epoch``.

    The schedule of the official code: the epoch's ceiling grows linearly from ``1/s_max`` to
    ``s_max`` over the epochs, ``S_e = (s_max - 1/s_max) * e / E + 1/s_max``, and within the epoch
    ``s`` grows linearly from ``1/S_e`` to ``S_e``: ``s = (S_e - 1/S_e) * b / B + 1/S_e``. (The
    paper, Sec. 3.1, anneals ``s`` within each epoch as in HAT; the outer ramp is the official
    code's.) At consolidation ``s = s_max`` is used, so a logit's sign decides its bit.
    """
    if s_max < 1:
        raise ValueError(f"s_max must be >= 1, got {s_max}")
    if not (0 <= epoch < epochs and 0 <= batch < batches):
        raise ValueError(f"need 0 <= epoch < epochs and 0 <= batch < batches, got "
                         f"epoch={epoch}, epochs={epochs}, batch={batch}, batches={batches}")
    ceiling = (s_max - 1 / s_max) * epoch / epochs + 1 / s_max
    return (ceiling - 1 / ceiling) * batch / batches + 1 / ceiling


def compensate_logit_grad_(logits: torch.Tensor, s: float, s_max: float, clamp: float = 50.0) -> None:
    """HAT's compensation, in place: ``grad *= s_max / s * (cosh(clamp(s*e)) + 1) / (cosh(e) + 1)``.

    Without it the mask gradient ``s * m * (1 - m)`` vanishes while ``s`` is small (Serra et al.,
    HAT, Sec. 2.5). The clamp keeps ``cosh`` finite.
    """
    if logits.grad is None:
        return
    e = logits.detach()
    num = torch.cosh(torch.clamp(s * e, -clamp, clamp)) + 1
    den = torch.cosh(e) + 1
    logits.grad.mul_(s_max / s * num / den)


def sparsity_regularizer(terms) -> torch.Tensor:
    """``sum(num) / sum(den)`` over the ``(num, den)`` pairs of every masked layer.

    Each layer gives ``num = sum(m_t * (1 - m_<t))`` and ``den = sum(1 - m_<t)`` over its own
    mask entries (weights for DGMw, units for DGMa), so the ratio is the share of the still-free
    capacity that the current task takes (paper, Eq. 3; summed over layers as in the official code).
    """
    terms = list(terms)
    if not terms:
        raise ValueError("sparsity_regularizer: no masked layers")
    num = sum(n for n, _ in terms)
    den = sum(d for _, d in terms)
    return num / max(den, 1)


__all__ = ["sharpness", "compensate_logit_grad_", "sparsity_regularizer"]
