"""User errors: one clear line on stderr and exit status 2; tracebacks only for bugs.

Every CLI parses its flags with :class:`ArgumentParser` and runs its ``main`` through
:func:`run_cli`. Library code raises :class:`UserError` (or a subclass) for anything the user
can fix: a missing or malformed file, a bad flag, a resume that does not match. The message
names the file or flag, says what is wrong and what to do. Any other exception is a bug and keeps
its traceback. ``--debug`` (every CLI has it, via :class:`ArgumentParser`) or ``CHEXZERO_DEBUG=1``
shows the traceback of a user error too.

Operating-system errors on the user's files (not found, permission denied, disk full) are
user errors as well: :func:`run_cli` turns an ``OSError`` that carries a file name into one
line naming the file and the reason.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

DEBUG_ENV = "CHEXZERO_DEBUG"
USER_ERROR_EXIT = 2



class UserError(Exception):
    """A problem with the user's inputs or flags that the user can fix (not a bug)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for every CLI: a bad flag is one line with exit status 2 like any other user error
    (the usage is on ``--help``), and ``--debug`` is there for :func:`run_cli`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help=f"show the Python traceback of an error (also: {DEBUG_ENV}=1)")

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USER_ERROR_EXIT, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (argparse names the flag in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"
    return parse


positive_int = int_at_least(1)       # a count or a size
non_negative_int = int_at_least(0)   # e.g. worker processes, 0 meaning none


def os_error_message(err: OSError) -> str:
    """One line for an OSError on a file: which file, what happened, what to do."""
    name = err.filename if err.filename is not None else "a file"
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        return f"{name}: no space left on the device. Free space (or write elsewhere) and run again; " \
               "a resumable output can be continued with --resume"
    if err.errno == errno.EFBIG:
        return f"{name}: file too large for this file system or its size limit. Write elsewhere and run again"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"{name}: permission denied. Check the path, or write elsewhere"
    if err.errno == errno.ENOENT:
        return f"{name}: no such file or folder. Check the path"
    return f"{name}: {reason}"


def read_json(path: str | Path, what: str, source: str | None = None, fix: str = "") -> object:
    """The JSON in ``path``. A missing, unreadable or malformed file is one ``UserError`` line that
    starts with ``source`` (default: the path), names ``what`` the file should be and ends with ``fix``."""
    source = source or str(path)
    then = f"; {fix}" if fix else ""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{source}: no such {what}; check the path{then}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{source}: not valid JSON ({err}){then}") from None
    except OSError as err:
        raise UserError(f"{source}: cannot read the {what} ({err.strerror or err}){then}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{source}: not valid JSON ({err.msg}, line {err.lineno}){then}") from None


def _debug_wanted(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(main: Callable[[list[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a CLI's ``main(argv)``; a user error becomes one line on stderr and exit status 2.

    Returns ``main``'s integer exit status (0 for anything else it returns). ``KeyboardInterrupt``
    exits 130 with one line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = Path(sys.argv[0]).name or "chexzero"
    try:
        status = main(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError) as err:
        if not isinstance(err, UserError) and err.filename is None and err.errno is None:
            raise  # an OSError without a file or errno is not about the user's files
        if _debug_wanted(args):
            raise
        message = os_error_message(err) if isinstance(err, OSError) and not isinstance(err, UserError) else str(err)
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return USER_ERROR_EXIT
    return status if isinstance(status, int) else 0
