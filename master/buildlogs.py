"""Build logs on the master's disk: one file per attempt, appended to as the worker sends it.

A piece of log is streamed to disk as it arrives (never held whole in memory), and each
attempt's log is bounded: past `MAX_LOG_BYTES` the rest is dropped after one marker line, and
the build goes on. Pieces sent at the same time (by threads, greenlets or master processes)
are each spooled to a nameless file beside the log (at most what still fits, plus one byte),
then added whole, one at a time, under an exclusive lock on the log (`flock`): a piece is
never interleaved with another, and the bound and its one marker hold however many arrive
together. The lock is waited for by polling, so a greenlet that waits lets the others run.

Both the API (``GET …/log?follow=1``) and ``master logs --follow`` read the logs through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from master import streams
from master.store import Job, Store

#: The largest build log kept per attempt.
MAX_LOG_BYTES = 64 * 1024 * 1024
MARKER = b"\n[pkgfarm: the log reached its limit; the rest is dropped]\n"
CHUNK = 64 * 1024
#: How often a piece waiting for the log's lock tries again.
LOCK_POLL = 0.005


def log_path(data_dir: str | Path, job: Job, attempt: int | None = None) -> Path:
    return Path(data_dir) / "logs" / str(job.id) / f"{attempt or job.attempt}.log"


def start(data_dir: str | Path, job: Job) -> None:
    """An empty log for the job's current attempt."""
    path = log_path(data_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    """Hold an exclusive flock on ``fd``, waiting for it without blocking the process."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(LOCK_POLL)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def append(data_dir: str | Path, job: Job, attempt: int, stream: IO[bytes],
           limit: int = MAX_LOG_BYTES) -> int:
    """Add what ``stream`` holds to an attempt's log, up to the limit (see the module's
    text); the log's new size."""
    path = log_path(data_dir, job, attempt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        fd = out.fileno()
        # The log only grows, so what fits now is the most that can fit once the lock is
        # held: keep that much, and one byte more to know the piece is cut.
        keep = limit - os.fstat(fd).st_size + 1
        with tempfile.TemporaryFile(dir=path.parent) as spool:
            kept = 0
            while chunk := stream.read(CHUNK):
                if kept < keep:
                    part = chunk[:keep - kept]
                    spool.write(part)
                    kept += len(part)
            spool.seek(0)
            with _locked(fd):
                size = os.fstat(fd).st_size
                room = limit - size
                if kept == 0 or room < 0:
                    return size  # nothing sent, or the log is full and marked
                left = min(kept, room)
                while left > 0:
                    part = spool.read(min(CHUNK, left))
                    out.write(part)
                    left -= len(part)
                if kept > room:
                    out.write(MARKER)
                out.flush()
                return os.fstat(fd).st_size


class _JobLooks:
    """Jobs as this process last read them, for the followers of their logs: one store read
    per job every `REFRESH` seconds, however many follow it. A look may lag the store by up
    to REFRESH, never lead it (a job seen ended has ended)."""

    REFRESH = 0.25
    #: looks kept before the old ones are forgotten
    KEEP = 1000

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], tuple[float, Job | None]] = {}

    def get(self, store: Store, job_id: int) -> Job | None:
        now = time.monotonic()
        key = (str(store.path), job_id)
        hit = self.seen.get(key)
        if hit is not None and now - hit[0] < self.REFRESH:
            return hit[1]
        job = store.jobs.get(job_id)
        if len(self.seen) >= self.KEEP:
            self.seen = {k: v for k, v in self.seen.items() if now - v[0] < self.REFRESH}
        self.seen[key] = (now, job)
        return job


_looks = _JobLooks()


def follow(store: Store, data_dir: str | Path, job_id: int, poll: float = 0.5
           ) -> Iterator[bytes]:
    """The current attempt's log so far, then what the worker adds, until the job ends (or
    the master process stops)."""
    offset, attempt = 0, None
    # An empty first piece: the response's headers go out now, not with the first line of a
    # log that may stay empty for a while (a queued job, a slow start).
    yield b""
    while True:
        job = _looks.get(store, job_id)
        if job is None:
            return
        if attempt is not None and job.attempt != attempt:
            yield f"\n[pkgfarm: attempt {job.attempt} starts]\n".encode()
            offset = 0
        attempt = job.attempt
        ended = job.state.is_final
        path = log_path(data_dir, job)
        try:
            grown = path.stat().st_size > offset
        except OSError:
            grown = False  # no log yet
        if grown:
            with open(path, "rb") as fh:
                fh.seek(offset)
                while chunk := fh.read(CHUNK):
                    offset += len(chunk)
                    yield chunk
        if ended or not streams.wait(poll):
            return
