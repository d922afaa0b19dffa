"""``dgm-train``: run continual learning with Dynamic Generative Memory from the command line.

Settings come from :class:`dgm.config.TrainConfig` defaults, then ``--config FILE`` (JSON or
YAML, keys named like the flags), then the flags given on the command line, which win. Flags and
config files are checked against the same declaration of each setting, and the output folder,
checkpoint and data before anything is written: a run that cannot start leaves ``--out`` as it was.

Exit status (:mod:`dgm.cli.boundary`): 0 done; 2 a bad setting, input file or output folder, as
one line ``dgm-train: error: <setting> = <value>: <what is allowed>`` or naming the file; 130
interrupted (continue with ``--resume``); 1 a bug (traceback).

``--resume`` continues the run in ``--out`` from its newest checkpoint; when that one is damaged
the error names the newest one that loads, and ``--resume-from-valid`` continues from it.

``torchrun --nproc_per_node N -m dgm.cli.train ...`` runs it data-parallel on N processes
(:mod:`dgm.distributed`; docs/distributed.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import ops
from ..checkpoint import latest_checkpoint
from ..config import TrainConfig, check_device, kind, load_config_file, parse_setting, rule
from ..errors import ConfigError, Interrupted, show
from ..reporting import Reporter, format_summary
from .boundary import Parser, console_script

PROG = "dgm-train"
GROUPS = ("run", "model", "DGM")


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field, from its declaration. Every flag defaults to "not
    given" (``SUPPRESS``) so that a config file's value survives unless the flag is on the command
    line; values stay words here and are checked by :func:`dgm.config.parse_setting`."""
    p = Parser(prog=PROG, argument_default=argparse.SUPPRESS,
               description="Continual learning with Dynamic Generative Memory. Flags override --config.")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of settings (keys as the flags)")
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        r, base = rule(f.name), kind(f.name)[0]
        default = r.null if f.default is None else show(f.default)
        options = {"help": f"{r.help} (default: {default})".replace("%", "%%")}
        if base is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif r.metavar or r.choices:
            options["metavar"] = r.metavar or "{" + ",".join(r.choices) + "}"
        groups.get(r.group, groups["run"]).add_argument("--" + f.name.replace("_", "-"), **options)
    return p


def parse_config(argv: list[str] | None) -> TrainConfig:
    """Defaults < ``--config`` file < command-line flags; :class:`ConfigError` on a bad setting,
    named as it was given (``--lr``, ``FILE: lr``). ``--fused`` is resolved here into the
    ``backend`` it selects (:func:`resolve_fused`), so the settings saved with the run name the
    backend actually used."""
    return _parse(argv)[0]


def _parse(argv: list[str] | None) -> tuple[TrainConfig, dict[str, str]]:
    """:func:`parse_config`, and the name of each setting given as where it came from."""
    args = vars(build_parser().parse_args(argv))
    values, labels = {}, {}
    if "config" in args:
        path = args.pop("config")
        for key, value in load_config_file(path).items():
            name = str(key).replace("-", "_")
            values[name], labels[name] = value, f"{path}: {name}"
    try:
        for name, given in args.items():
            labels[name] = "--" + name.replace("_", "-")
            values[name] = given if isinstance(given, bool) else parse_setting(name, given)
        config = TrainConfig.from_dict(values)
        check_device(config.device)
    except ConfigError as exc:
        raise exc.labelled(labels.get(exc.setting)) from None
    if config.fused:
        config.backend, config.fused = resolve_fused(config.device), False
    return config, labels


def resolve_fused(device: str) -> str:
    """The backend ``--fused`` means on ``device`` (:func:`dgm.ops.fastest_backend`), with one
    warning on stderr when that is the reference."""
    import torch

    dev = torch.device(device)
    backend = ops.fastest_backend(dev)
    if backend == "reference":
        print(f"{PROG}: warning: --fused: no fused backend runs on {dev} ({ops.fused_unavailable_reason(dev)}); "
              "falling back to the reference backend", file=sys.stderr)
    return backend


@console_script(PROG)
def main(argv: list[str] | None) -> None:
    """Run ``dgm-train`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    config, labels = _parse(argv)
    from ..distributed import launched_rank
    from ..trainer import run  # heavy imports only once the flags are valid

    reporter = Reporter(config.out)
    try:
        metrics = run(config, reporter)
    except ConfigError as exc:  # the output folder or a checkpoint disagrees with a setting
        raise exc.labelled(labels.get(exc.setting)) from None
    except ops.BackendUnavailable as exc:
        raise ConfigError("backend", config.backend, str(exc)) from exc
    except KeyboardInterrupt:
        resumable = latest_checkpoint(config.out) is not None
        raise Interrupted("interrupted" + (f"; continue with --resume --out {config.out}" if resumable else "")) \
            from None
    finally:
        reporter.close()
    if launched_rank() == 0:  # under torchrun, rank 0 speaks for the run
        print(format_summary(metrics))


if __name__ == "__main__":
    sys.exit(main())
