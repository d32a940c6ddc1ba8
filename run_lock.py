"""One writer per output: an advisory lock that a second process sees, and that a crash releases.

``with hold(path, "preprocessing"):`` takes an exclusive ``flock`` on ``<path>.lock`` and writes the
holder's pid and command into it. A second process asking for the same output is refused with
a :class:`~errors.UserError` that names the live process, instead of being told to resume or delete
work that is still being written. The kernel drops the lock when the holder exits, however it
exits (kill -9 included), so a stale lock file never blocks the next run.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from typing import Iterator

from errors import UserError


def lock_path(path: str | Path) -> Path:
    return Path(str(path) + ".lock")


@contextlib.contextmanager
def hold(path: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of output ``path`` for the block; refuse if a live process holds it."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{path} is being written by a live process ({holder}); wait for it to finish, "
                            f"or stop it first (then --resume continues its work)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what} ({' '.join(sys.argv)[:200]})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a new holder)
