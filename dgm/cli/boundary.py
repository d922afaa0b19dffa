"""The error boundary shared by the console scripts (``dgm-train``, ``dgm-data``, ``dgm-results``).

Exit status of every script:

- ``0``: done.
- ``2``: an expected failure, shown as one line on stderr, ``PROG: error: MESSAGE``: a malformed
  command line, a setting out of its range, a missing or damaged input file (config file, data
  set, checkpoint, ``metrics.json``, each named), an output folder that cannot be written, or
  another refusal of the operating system (permissions, a full disk).
- ``130``: interrupted (Ctrl-C).
- ``1``: a bug in dgm: its traceback, then a line asking to report it.

Expected failures are :class:`dgm.errors.DGMError` (and ``OSError``); anything else is a bug.
"""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable

from ..errors import DGMError, Interrupted, UsageError


class Parser(argparse.ArgumentParser):
    """``argparse`` whose command-line errors are :class:`UsageError` (one line, exit 2) rather than
    a usage block printed from inside the parser."""

    def error(self, message: str):
        raise UsageError(message)


def console_script(prog: str) -> Callable:
    """Decorate ``body(argv)`` into a console script's ``main(argv=None) -> exit status``."""
    def wrap(body: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], int]:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            try:
                body(argv)
            except SystemExit as exc:  # argparse's --help
                return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except KeyboardInterrupt:
                return _fail(prog, Interrupted("interrupted"))
            except DGMError as exc:
                return _fail(prog, exc)
            except OSError as exc:
                where = ": ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
                print(f"{prog}: error: {where + ': ' if where else ''}{exc.strerror or exc}", file=sys.stderr)
                return 2
            except Exception as exc:  # noqa: BLE001 - whatever is not expected is a bug
                traceback.print_exc()
                print(f"{prog}: internal error ({type(exc).__name__}): this is a bug in dgm; please report it "
                      "with the traceback above and the command that gave it", file=sys.stderr)
                return 1
            return 0
        return main
    return wrap


def _fail(prog: str, exc: DGMError) -> int:
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"{prog}: {'' if isinstance(exc, Interrupted) else 'error: '}{message}", file=sys.stderr)
    return exc.exit_code
