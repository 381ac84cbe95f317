"""A run folder claimed by one process: an advisory ``flock`` on a file in it.

The operating system releases the lock when its process ends, however it ends, so a lock
left by a killed process is simply taken over by the next one; the file keeps the holder's
pid for the message of a process that finds it held.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Claimed(Exception):
    """A run folder is locked by another process; ``holder`` is its pid as it wrote it."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def claim(folder: str | os.PathLike, name: str):
    """Lock ``<folder>/<name>`` for this process without waiting and write its pid there;
    return the open lock file (closing it, or the end of the process, releases the claim).
    Raises :class:`Claimed` when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / name, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise Claimed(holder) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
