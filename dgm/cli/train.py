"""``dgm-train``: run continual learning with Dynamic Generative Memory from the command line.

Settings come from :class:`dgm.config.TrainConfig` defaults, then ``--config FILE`` (JSON or
YAML, keys named like the flags), then the flags given on the command line, which win. Exit
status: 0 on success, 2 on bad usage or settings (one line on stderr naming the problem), 1 when
the run itself fails.
"""

from __future__ import annotations

import argparse
import sys
import traceback

import torch

from .. import ops
from ..checkpoint import CheckpointError
from ..config import ARCHS, DATASETS, METHODS, SELECTIONS, TrainConfig, load_config_file
from ..reporting import Reporter, format_summary

PROG = "dgm-train"


class UsageError(ValueError):
    """Bad flags or settings: exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """Every flag defaults to "not given" (``SUPPRESS``) so that a config file's value survives
    unless the flag is on the command line; the real defaults live in ``TrainConfig``."""
    p = argparse.ArgumentParser(prog=PROG, argument_default=argparse.SUPPRESS,
                                description="Continual learning with Dynamic Generative Memory. "
                                            "Flags override --config.")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of settings (keys as the flags)")
    run = p.add_argument_group("run")
    run.add_argument("--dataset", choices=DATASETS, help="dataset (default mnist5k)")
    run.add_argument("--data-root", metavar="DIR", help="where the datasets are (default: the data module's)")
    run.add_argument("--download", action=argparse.BooleanOptionalAction, help="download missing datasets")
    run.add_argument("--method", choices=METHODS,
                     help="dgmw: weight masks; dgma: activation masks; baselines: joint (real data of all "
                          "tasks so far, upper bound), finetune (new task only, lower bound), replay "
                          "(generative replay without masks or expansion)")
    run.add_argument("--tasks", type=int, metavar="N", help="train the first N tasks (default: all)")
    run.add_argument("--classes-per-task", type=int, metavar="N", help="classes per task (default 1)")
    run.add_argument("--epochs", type=int, metavar="N", help="epochs per task")
    run.add_argument("--batch-size", type=int, metavar="N")
    run.add_argument("--lr", type=float, help="Adam learning rate of G and D")
    run.add_argument("--mask-lr", type=float, help="Adam learning rate of the mask logits (default: --lr)")
    run.add_argument("--beta1", type=float, help="Adam beta1")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="cpu, cuda or cuda:INDEX")
    run.add_argument("--backend", choices=ops.CHOICES, help="masked-op implementation")
    run.add_argument("--fused", action=argparse.BooleanOptionalAction,
                     help="use the fastest fused backend of the device (overrides --backend; falls back "
                          "to the reference, with a warning, where none runs)")
    run.add_argument("--capture", action=argparse.BooleanOptionalAction,
                     help="on a CUDA device, capture the DGM training step once per task as a CUDA graph and "
                          "replay it (default; --no-capture: run every step eagerly); metrics.json says per task "
                          "whether it was captured")
    run.add_argument("--out", metavar="DIR", help="output folder (checkpoints, logs, metrics.json)")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction,
                     help="continue from the latest checkpoint in --out")
    run.add_argument("--selection", choices=SELECTIONS,
                     help="which epoch of a task is kept: official (best on the validation images of every "
                          "class seen: real data of earlier tasks, the official protocol; default), current "
                          "(best on the task's validation images plus generated ones of earlier classes), "
                          "last (the last epoch)")
    model = p.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHS, help="generator/discriminator family")
    model.add_argument("--image-size", type=int, metavar="PX")
    model.add_argument("--nz", type=int, help="latent size")
    model.add_argument("--ngf", type=int, help="generator width")
    model.add_argument("--ndf", type=int, help="discriminator width")
    model.add_argument("--hidden", type=int, help="hidden units of the mlp arch")
    dgm = p.add_argument_group("DGM")
    dgm.add_argument("--s-max", type=float, help="mask annealing maximum (default 1e4 dgmw, 1e5 dgma; "
                                                 "dgm methods only)")
    dgm.add_argument("--lambda-reg", type=float, help="sparsity regulariser weight (default 0.08 dgmw, 0.01 dgma; "
                                                      "dgm methods only)")
    dgm.add_argument("--lambda-class", type=float, help="weight of the AC-GAN class term in the generator's loss "
                                                        "(default 1; dgm methods only)")
    dgm.add_argument("--lambda-gp", type=float, help="WGAN gradient-penalty weight")
    dgm.add_argument("--replay-per-class", type=int, metavar="N", help="generated samples per old class")
    dgm.add_argument("--val-fraction", type=float, help="share of train held out for validation")
    dgm.add_argument("--train-per-class", type=int, metavar="N", help="cap on real training images per class")
    return p


def parse_config(argv: list[str] | None) -> TrainConfig:
    """Defaults < ``--config`` file < command-line flags; :class:`UsageError` on bad settings.
    ``--fused`` is resolved here into the ``backend`` it selects (:func:`resolve_fused`), so the
    settings saved with the run name the backend actually used."""
    args = vars(build_parser().parse_args(argv))
    values = {}
    if "config" in args:
        try:
            values = {k.replace("-", "_"): v for k, v in load_config_file(args.pop("config")).items()}
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    values.update(args)
    try:
        config = TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"bad settings: {exc}") from exc
    check_device(config.device)
    if config.fused:
        config.backend, config.fused = resolve_fused(config.device), False
    return config


def check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"--device {device!r} is not a device (expected cpu, cuda or cuda:INDEX)") from exc
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device!r} asks for a CUDA GPU, but torch sees none here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")


def resolve_fused(device: str) -> str:
    """The backend ``--fused`` means on ``device`` (:func:`dgm.ops.fastest_backend`), with one
    warning on stderr when that is the reference."""
    dev = torch.device(device)
    backend = ops.fastest_backend(dev)
    if backend == "reference":
        print(f"{PROG}: warning: --fused: no fused backend runs on {dev} ({ops.fused_unavailable_reason(dev)}); "
              "falling back to the reference backend", file=sys.stderr)
    return backend


def main(argv: list[str] | None = None) -> int:
    """Run ``dgm-train`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        config = parse_config(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), message already printed
        return int(exc.code or 0)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    from ..trainer import run  # heavy imports only once the flags are valid

    reporter = Reporter(config.out)
    try:
        metrics = run(config, reporter)
    except (CheckpointError, ops.BackendUnavailable) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume --out {config.out}", file=sys.stderr)
        return 130
    except Exception as exc:
        traceback.print_exc()
        print(f"{PROG}: error: the run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        reporter.close()
    print(format_summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
