"""Expected failures: what a user can cause and fix (settings, input files, the output folder), as
opposed to bugs.

The console scripts show a :class:`DGMError` as one line and exit with its ``exit_code``; any other
exception is a bug and shows its traceback (:mod:`dgm.cli.boundary`). Each type also derives from
``ValueError`` (``Interrupted`` and ``DistributedError``, failures of the run's processes, excepted),
so code that caught the ``ValueError`` these failures used to be keeps working.
"""

from __future__ import annotations

import json


class DGMError(Exception):
    """An expected failure, with a message that says what is wrong and where."""

    exit_code = 2


class UsageError(DGMError, ValueError):
    """A malformed command line (unknown flag, missing argument)."""


class ConfigError(DGMError, ValueError):
    """A setting with a value it does not allow: ``<setting> = <value>: <what is allowed>``.

    ``setting`` is the field name of :class:`~dgm.config.TrainConfig`; :meth:`labelled` renames it
    after where the value came from (``--lr``, ``run.json: lr``)."""

    def __init__(self, setting: str, value, allowed: str, *, label: str | None = None):
        self.setting, self.value, self.allowed, self.label = setting, value, allowed, label
        super().__init__(f"{label or setting} = {show(value)}: {allowed}")

    def labelled(self, label: str | None) -> ConfigError:
        return self if label is None else ConfigError(self.setting, self.value, self.allowed, label=label)


class DataError(DGMError, ValueError):
    """A data set's files are missing, unreadable or not what their format promises."""


class CheckpointError(DGMError, ValueError):
    """A checkpoint is missing, damaged, or not a dgm checkpoint that fits the run."""


class ResultsError(DGMError, ValueError):
    """A run folder's ``metrics.json`` is missing or damaged, or runs cannot be tabulated together."""


class DistributedError(DGMError, RuntimeError):
    """A data-parallel run cannot go on: a rank stopped or did not answer in time, the launcher's
    environment is wrong, or the ranks' models diverged (:mod:`dgm.distributed`)."""


class Interrupted(DGMError):
    """The user stopped the program (Ctrl-C): exit status 130, the shell's for SIGINT."""

    exit_code = 130


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception raised by other code (PyTorch, scipy, PIL) as one short line: its type and the
    start of its message, whitespace collapsed."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def show(value) -> str:
    """A setting's value as the user wrote it: JSON for strings, booleans and null, Python for the
    rest (``inf``, ``nan``, ``[1, 2]``)."""
    if value is None or isinstance(value, (bool, str)):
        return json.dumps(value)
    return repr(value)


__all__ = ["CheckpointError", "ConfigError", "DGMError", "DataError", "DistributedError", "Interrupted",
           "ResultsError", "UsageError", "one_line", "show"]
