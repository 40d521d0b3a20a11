"""One lock primitive for everything two processes must not do at once: an exclusive `flock` on
a lock file. The kernel drops it when the holder exits, however it exits (SIGKILL included), so
a crashed process never leaves a stale lock. Local filesystems only: flock over NFS is not
dependable, which is why a sweep on remote storage is not locked (see `cobra.sweep.tuner`).
`hold` refuses at once when another process holds the lock, `locked` waits for it."""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cobra.errors import CobraError

_held: dict[Path, IO[str]] = {}  # open lock files: closing one would release its lock


def hold(path: Path, what: str) -> None:
    """Hold the lock on `path` until `release`d or this process exits; when another holds it, a
    CobraError says what is busy and which process has it."""
    path = Path(path)
    if path in _held:
        return
    handle = open(path, "a+")  # noqa: SIM115 - kept open on purpose: it is the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder else ""
        raise CobraError(f"{what} is in use by another process{who}; wait for it to end, or "
                         f"stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[path] = handle


def release(path: Path) -> None:
    """Give up a lock taken with `hold` (its file stays: removing it would race a waiter)."""
    handle = _held.pop(Path(path), None)
    if handle is not None:
        handle.close()


def release_all() -> None:
    """Give up every lock `hold` took: a command's end, when more may follow in this process."""
    for path in list(_held):
        release(path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Wait for the lock on `path` and hold it for a `with` block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock
