"""The one file lock of the project: flock on a lock file, shared or exclusive, waiting or not.

Locks coordinate processes that share a folder: gunicorn's processes writing the index or
sending jobs, workers making a base, apt states used by several builds.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(Exception):
    """A non-waiting lock was held by someone else."""


@contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold ``path``'s lock for the ``with`` block (the file is made if missing). With
    ``wait=False`` a lock held elsewhere raises `LockBusy` at once.

    Waiting polls with short sleeps instead of blocking in flock: in the master's event-loop
    processes (gevent) a sleep lets the other connections go on, a blocked flock would not.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        pause = 0.001
        while True:
            try:
                fcntl.flock(fh, mode)
                break
            except BlockingIOError:
                if not wait:
                    raise LockBusy(str(path)) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
