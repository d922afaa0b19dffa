"""``MaskedLinear``: ``nn.Linear`` with a per-task DGM mask."""

from __future__ import annotations

from .masked import DEFAULT_S_MAX, MaskedLayer


class MaskedLinear(MaskedLayer):
    """Drop-in ``nn.Linear(in_features, out_features, bias)`` with a DGM mask.

    ``mask="weight"`` (DGMw) learns a mask per weight, ``mask="activation"`` (DGMa) one per output
    unit. ``backend`` picks the op implementation (:mod:`dgm.ops`). ``forward(x, task=None)``;
    see :class:`~dgm.layers.masked.MaskedLayer` for the task lifecycle.
    """

    _OP = "linear"
    _OUT_DIM = 0
    _UNIT_DIM = -1
    _INPUT_DIMS = (1, None)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mask: str = "weight",
                 backend: str = "auto", s_max: float = DEFAULT_S_MAX, weight_init=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, mask, backend, s_max, weight_init, device, dtype)

    @property
    def in_features(self) -> int:
        return self.in_units

    @property
    def out_features(self) -> int:
        return self.out_units

    def _weight_shape(self, out_units, in_units):
        return (out_units, in_units)

    def _op_args(self):
        return ()

    def extra_repr(self) -> str:
        return f"in_features={self.in_units}, out_features={self.out_units}, bias={self.bias is not None}, " + \
            super().extra_repr()
