"""Worker processes for CPU-bound maps (image decoding, phantom drawing) that never hang.

:func:`imap` is ``multiprocessing.Pool.imap`` made safe for how researchers call library code:

- Workers start with spawn, never fork: forking a parent whose OpenCV/torch thread pools are
  running can leave the children deadlocked on a lock held by a thread that was not copied.
- They never re-run the caller's ``__main__``. spawn normally prepares each child by re-running
  it (by path, or by module name under ``python -m``) so that functions defined there unpickle;
  a script without an ``if __name__ == "__main__":`` guard then calls the library again inside
  every starting worker, which dies, and ``python - < script.py`` names a file ``<stdin>`` that
  does not exist. ``multiprocessing.Pool`` replaced such dead workers forever. Here a launch
  sees a stand-in ``__main__`` with nothing to re-run, so ``func`` must live in an importable
  module (it always does in this project).
- A worker that cannot start, or dies (killed, out of memory, crashed), ends the map with
  :class:`WorkerPoolError`; ``Pool`` waited for its results forever.
- Closing the generator early (an exception, Ctrl-C) terminates the workers at once.

Nothing runs in a background thread: each worker has its own pipe, fed by the calling thread,
so a worker's exit is an end of file on its pipe, seen at the next send or receive.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.process
import signal
import sys
import threading
import types
from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

from errors import UserError

T = TypeVar("T")
R = TypeVar("R")

IN_FLIGHT = 2   # batches sent ahead to each worker: one to work on, one waiting
WINDOW = 4      # x workers: batches sent but not yet yielded (bounds the results held for reordering)


class WorkerPoolError(UserError):
    """A worker process stopped before finishing its share (could not start, killed, crashed)."""


_MAIN_SWAP = threading.Lock()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a worker is launched, show multiprocessing a ``__main__`` with nothing to re-run.

    Only a lookup of ``sys.modules["__main__"]`` made during a launch sees the stand-in; the
    real module keeps running with its own globals.
    """
    with _MAIN_SWAP:
        real = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")   # no __file__, no __spec__
        try:
            yield
        finally:
            if real is None:
                sys.modules.pop("__main__", None)
            else:
                sys.modules["__main__"] = real


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawn process launched with :func:`_main_module_hidden`."""

    @staticmethod
    def _Popen(process_obj):  # noqa: N802 (multiprocessing's name)
        with _main_module_hidden():
            return multiprocessing.context.SpawnProcess._Popen(process_obj)


class _WorkerContext(multiprocessing.context.SpawnContext):
    """spawn whose processes start from a fresh interpreter that never runs the caller's ``__main__``."""

    Process = _WorkerProcess


def _worker_loop(conn, func: Callable, initializer: Callable[[], None] | None) -> None:
    """A worker: batches of items in, their results out, on its own pipe, until ``None`` or the
    parent's end closes (the parent exited, however it exited). Ctrl-C is the parent's to
    handle (it stops the workers); a worker would only print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    try:
        while (batch := conn.recv()) is not None:
            conn.send([func(item) for item in batch])
    except (EOFError, OSError):
        pass


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running, its pipe closed"
    if code == -signal.SIGKILL:
        return "killed by SIGKILL: out of memory?"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


class _Workers:
    """Worker processes, each with its own pipe, fed batches by the calling thread alone."""

    def __init__(self, n: int, func: Callable, initializer: Callable[[], None] | None, what: str):
        ctx = _WorkerContext()
        self.what = what
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.queued: list[deque[int]] = []          # batch numbers sent to each worker, in order
        try:
            for _ in range(n):
                ours, theirs = ctx.Pipe(duplex=True)
                process = ctx.Process(target=_worker_loop, args=(theirs, func, initializer), daemon=True, name=what)
                try:
                    process.start()
                finally:
                    theirs.close()     # only the worker holds its end now: its exit is our end of file
                self.processes.append(process)
                self.conns.append(ours)
                self.queued.append(deque())
        except BaseException:
            self.close(finished=False)
            raise

    def send(self, number: int, batch: list) -> bool:
        """Give batch ``number`` to the least busy worker with room; False when none has."""
        k = min(range(len(self.conns)), key=lambda j: len(self.queued[j]))
        if len(self.queued[k]) >= IN_FLIGHT:
            return False
        self._checked(self.conns[k].send, batch)
        self.queued[k].append(number)
        return True

    def receive(self) -> list[tuple[int, list]]:
        """(batch number, results) of every batch that is ready, waiting for at least one."""
        busy = [k for k in range(len(self.conns)) if self.queued[k]]
        ready = self._checked(multiprocessing.connection.wait, [self.conns[k] for k in busy])
        return [(self.queued[k].popleft(), self._checked(self.conns[k].recv)) for k in busy if self.conns[k] in ready]

    def _checked(self, call, *args):
        try:
            return call(*args)
        except (EOFError, OSError):   # a worker's pipe closed: it is gone
            for process in self.processes:
                process.join(0.5)
            dead = next((p for p in self.processes if not p.is_alive()), self.processes[0])
            raise WorkerPoolError(
                f"a {self.what} process (pid {dead.pid}) stopped before finishing its share "
                f"({_exit_description(dead.exitcode)}): it could not start (its own error is printed above), "
                f"was killed or crashed. Fewer workers use less memory; 1 works in this process.") from None

    def close(self, finished: bool) -> None:
        """Let the workers exit (``finished``), or terminate them: their half-done work is not
        needed any more, and one stuck on a read must not keep the caller waiting."""
        for process, conn in zip(self.processes, self.conns):
            if finished:
                with contextlib.suppress(OSError):
                    conn.send(None)
            elif process.is_alive():
                process.terminate()
            conn.close()
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()


def imap(func: Callable[[T], R], items: Iterable[T], num_workers: int, *, batch: int = 4,
         initializer: Callable[[], None] | None = None, what: str = "worker") -> Iterator[R]:
    """``func(item)`` for every item, in order, from ``num_workers`` spawned processes.

    ``func`` and ``initializer`` must be importable (module-level functions, or
    ``functools.partial`` of one). ``batch`` items travel per round trip. With one worker, one
    item, or inside a daemonic process (a ``multiprocessing.Pool`` worker may not start
    processes) the map runs in this process.
    """
    items = list(items)
    if num_workers <= 1 or len(items) <= 1 or multiprocessing.current_process().daemon:
        yield from map(func, items)   # (the initializer sets up worker processes, not this one)
        return
    batches = [items[i:i + batch] for i in range(0, len(items), batch)]
    workers, finished = None, False
    try:
        workers = _Workers(min(num_workers, len(batches)), func, initializer, what)
        window = WINDOW * len(workers.processes)
        ready: dict[int, list] = {}
        sent = yielded = 0
        while yielded < len(batches):
            while sent < min(len(batches), yielded + window) and workers.send(sent, batches[sent]):
                sent += 1
            if yielded in ready:
                yield from ready.pop(yielded)
                yielded += 1
            else:
                ready.update(workers.receive())
        finished = True
    finally:
        if workers is not None:
            workers.close(finished)
