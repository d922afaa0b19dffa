"""Count what a DGM training step and a replay dispatch, on the CPU: the facts that say whether the
step can be captured once per task as a CUDA graph (:mod:`dgm.step_audit`).

    python -m benchmarks.count_launches --out benchmarks/results/launches-<date>.json

Per configuration (the paper's MNIST and CIFAR-10 sizes, DGMw and DGMa), task (2 and 10: the
step of that task, the tasks before it learned with random masks and consolidated) and backend
(every backend that runs on the CPU):

* ``ops_per_step``: ops one eager step dispatches (each a kernel launch, or more, on a GPU);
* ``differing_ops_between_steps``: ops where two consecutive steps of the task differ (name,
  shapes, dtypes, non-tensor arguments); a step a CUDA graph can replay has none;
* ``host_syncs_step``: reads of device values on the host by the package's code in those steps.

Per configuration and backend, for a generator with 10 consolidated tasks: ``replay_ops[T]``, the
ops of one ``generate`` of ``batch_size`` rows spread over the first ``T`` tasks, and
``host_syncs_replay[T]``. Every count is of one call after a first, warm-up call (optimiser state
and cached masks exist by then). Prints the tables in Markdown; ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton's kernels run under its interpreter (as in the tests)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dgm import ops  # after the interpreter's switch
from dgm.config import TrainConfig, load_config_file
from dgm.methods.dgm import build_generator, train_step
from dgm.step_audit import (
    HostReads,
    OpRecorder,
    consolidate_random_tasks,
    consolidated_task,
    differing_ops,
)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
# name -> (shipped config, settings changed); the DGMa CIFAR variant takes mnist_dgma's DGMa settings.
CONFIGS = {
    "mnist_dgmw": ("mnist_dgmw", {}),
    "mnist_dgma": ("mnist_dgma", {}),
    "cifar10_dgmw": ("cifar10_dgmw", {}),
    "cifar10_dgma": ("cifar10_dgmw", {"method": "dgma", "ngf": 20, "s_max": 1e5, "lambda_reg": 0.01}),
}
CHANNELS = {"mnist": 1, "cifar10": 3}
TASKS = (2, 10)
NUM_CLASSES = 10
REPLAY_TASKS = range(1, NUM_CLASSES + 1)
SLOW = {"triton": "the paper's conv sizes under the Triton interpreter take minutes per step (--backends triton "
                  "to run them anyway)"}


def load(name: str) -> TrainConfig:
    base, overrides = CONFIGS[name]
    return TrainConfig.from_dict({**load_config_file(CONFIGS_DIR / f"{base}.json"), **overrides, "device": "cpu"})


def _recorded(fn):
    """``(ops, host reads)`` of one call of ``fn``."""
    with HostReads() as reads, OpRecorder() as recorder:
        fn()
    return recorder.ops, reads.calls


def count_step(config: TrainConfig, backend: str, task: int) -> dict:
    """The step of ``task`` (1-based; ``task - 1`` tasks consolidated before)."""
    state, x, y = consolidated_task(config, backend, torch.device("cpu"), task - 1,
                                    channels=CHANNELS[config.dataset])
    step = functools.partial(train_step, state, x, y)
    step()
    first, reads_first = _recorded(step)
    second, reads_second = _recorded(step)
    return {"ops_per_step": len(first), "differing_ops_between_steps": differing_ops(first, second),
            "host_syncs_step": len(reads_first) + len(reads_second),
            "host_sync_sites_step": sorted({site for _, site in reads_first + reads_second})}


def count_replay(config: TrainConfig, backend: str) -> dict:
    """One ``generate`` of ``batch_size`` rows over the first T tasks of 10 consolidated ones."""
    torch.manual_seed(config.seed)
    generator = build_generator(config, NUM_CLASSES, CHANNELS[config.dataset], backend)
    consolidate_random_tasks(generator, NUM_CLASSES)
    generator.eval()
    rng = torch.Generator().manual_seed(0)
    replay_ops, syncs, sites = {}, {}, set()
    for tasks in REPLAY_TASKS:
        row_task = torch.arange(config.batch_size) % tasks  # task k learned class k
        labels = row_task.clone()
        replay = functools.partial(generator.generate, labels, row_task, generator=rng)
        replay()
        recorded, reads = _recorded(replay)
        replay_ops[str(tasks)], syncs[str(tasks)] = len(recorded), len(reads)
        sites |= {site for _, site in reads}
    return {"replay_ops": replay_ops, "host_syncs_replay": syncs, "host_sync_sites_replay": sorted(sites)}


def markdown(result: dict) -> str:
    lines = ["| config | task | backend | ops per step | differing ops between steps | host syncs (2 steps) |",
             "|---|---:|---|---:|---:|---:|"]
    for row in result["step"]:
        lines.append(f"| {row['config']} | {row['task']} | {row['backend']} | {row['ops_per_step']} | "
                     f"{row['differing_ops_between_steps']} | {row['host_syncs_step']} |")
    lines += ["", "| config | backend | replay ops T=1 | T=2 | T=5 | T=10 | host syncs T=1 | T=10 |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["replay"]:
        r, h = row["replay_ops"], row["host_syncs_replay"]
        lines.append(f"| {row['config']} | {row['backend']} | {r['1']} | {r['2']} | {r['5']} | {r['10']} | "
                     f"{h['1']} | {h['10']} |")
    for backend, reason in sorted({(row["backend"], row["reason"]) for row in result["skipped"]}):
        lines.append(f"\n{backend}: not counted, {reason}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--backends", nargs="+", choices=ops.BACKENDS, help="default: every backend that runs on "
                        "the CPU, the slow ones (" + ", ".join(SLOW) + ") left out")
    parser.add_argument("--tasks", nargs="+", type=int, default=list(TASKS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (counts do not depend on them)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"date": datetime.date.today().isoformat(), "device": "cpu", "torch": torch.__version__,
              "python": platform.python_version(), "step": [], "replay": [], "skipped": []}
    for name in args.configs:
        config = load(name)
        for backend in args.backends or ops.BACKENDS:
            reason = ops.unavailable_reason(backend, "linear", torch.device("cpu"))
            if reason is None and args.backends is None:
                reason = SLOW.get(backend)
            if reason is not None:
                result["skipped"].append({"config": name, "backend": backend, "reason": reason})
                continue
            began = time.perf_counter()
            for task in args.tasks:
                result["step"].append({"config": name, "method": config.method, "task": task, "backend": backend,
                                       **count_step(config, backend, task)})
            result["replay"].append({"config": name, "backend": backend, "rows": config.batch_size,
                                     **count_replay(config, backend)})
            print(f"{name} {backend}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    text = markdown(result)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
