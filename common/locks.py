"""The one file lock of the project: flock on a lock file, shared or exclusive, waiting or not.

Locks coordinate processes that share a folder: gunicorn's processes writing the index or
sending jobs, workers making a base, apt states used by several builds.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(Exception):
    """A non-waiting lock was held by someone else."""


@contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold ``path``'s lock for the ``with`` block (the file is made if missing). With
    ``wait=False`` a lock held elsewhere raises `LockBusy` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fh, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
