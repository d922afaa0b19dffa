"""The methods of a continual run, by name: the registry :data:`LEARNERS` (``--method``).

Each method is a learner (:class:`~dgm.methods.base.Learner`), in a module of its own: ``dgmw``
and ``dgma`` (:mod:`~dgm.methods.dgm`: DGM with weight or activation masks) and the baselines that
frame them on the same data, classifier and protocol: ``joint`` (upper bound), ``finetune`` (lower
bound) and ``replay`` (generative replay without masks or expansion). What they share, the task
loop above all, is :mod:`~dgm.methods.base`.
"""

from __future__ import annotations

from .base import Learner
from .dgm import DGMLearner
from .finetune import FinetuneLearner
from .joint import JointLearner
from .replay import ReplayLearner
from .selection import SELECTIONS

LEARNERS: dict[str, type[Learner]] = {"dgmw": DGMLearner, "dgma": DGMLearner, "joint": JointLearner,
                                      "finetune": FinetuneLearner, "replay": ReplayLearner}
METHODS = tuple(LEARNERS)


def build_learner(config, num_classes: int, channels: int, backend: str, device) -> Learner:
    """The learner of ``config.method``."""
    return LEARNERS[config.method](config, num_classes, channels, backend, device)


__all__ = ["LEARNERS", "METHODS", "SELECTIONS", "Learner", "build_learner"]
