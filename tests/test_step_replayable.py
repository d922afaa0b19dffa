"""Consecutive training steps of a task dispatch exactly the same ops: a CUDA graph captured once
per task can replay the step.

:class:`dgm.step_audit.OpRecorder` records every op a step dispatches (name, shapes, dtypes and
every non-tensor argument); two consecutive steps of :func:`dgm.methods.dgm.train_step` (after a
first one, which creates the optimisers' state) must record the same, for DGMw and DGMa, the MLP
and the DCGAN, on every backend that runs on the CPU (the ``dgm_task`` fixture). The sharpness anneals between them, so a
per-step value passed from the host would show. Replay must dispatch the same ops whichever
consolidated tasks its rows belong to.
"""

from __future__ import annotations

import torch

from dgm.methods.dgm import train_step
from dgm.step_audit import OpRecorder, differing_ops


def _recorded(fn) -> list:
    with OpRecorder() as recorder:
        fn()
    return recorder.ops


def _first_difference(a: list, b: list) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"op {at}: {a[at] if at < len(a) else None} vs {b[at] if at < len(b) else None}"


def test_the_recorder_sees_a_value_passed_from_the_host():
    """A number the host passes is an argument of the op it reaches: the audit must see it."""
    x = torch.ones(3)
    assert differing_ops(_recorded(lambda: x.mul(0.5)), _recorded(lambda: x.mul(0.7))) == 1
    assert differing_ops(_recorded(lambda: x.mul(0.5)), _recorded(lambda: x.mul(0.5))) == 0


def test_consecutive_steps_dispatch_the_same_ops(dgm_task):
    state, x, y = dgm_task
    train_step(state, x, y)
    s_before = state.generator.body[0].s.clone()
    first = _recorded(lambda: train_step(state, x, y))
    second = _recorded(lambda: train_step(state, x, y))
    assert not torch.equal(state.generator.body[0].s, s_before)  # the sharpness annealed meanwhile
    assert len(first) > 100
    assert differing_ops(first, second) == 0, _first_difference(first, second)


def test_replay_dispatches_the_same_ops_whichever_tasks_it_replays(dgm_task):
    generator = dgm_task[0].generator.eval()
    one_task = torch.zeros(6, dtype=torch.long)
    both = torch.tensor([0, 1, 1, 0, 1, 0])
    generator.generate(one_task * 2, one_task)  # the replay tables are built once per consolidation
    runs = [_recorded(lambda rows=rows: generator.generate(2 * rows + 1, rows)) for rows in (one_task, both)]
    assert differing_ops(*runs) == 0, _first_difference(*runs)
