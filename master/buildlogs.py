"""Build logs on the master's disk: one file per attempt, appended to as the worker sends it.

Both the API (``GET …/log?follow=1``) and ``master logs --follow`` read them through here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from master.store import Job, Store


def log_path(data_dir: str | Path, job: Job, attempt: int | None = None) -> Path:
    return Path(data_dir) / "logs" / str(job.id) / f"{attempt or job.attempt}.log"


def follow(store: Store, data_dir: str | Path, job_id: int, poll: float = 0.5
           ) -> Iterator[bytes]:
    """The current attempt's log so far, then what the worker adds, until the job ends."""
    offset, attempt = 0, None
    while True:
        job = store.get_job(job_id)
        if job is None:
            return
        if attempt is not None and job.attempt != attempt:
            yield f"\n[pkgfarm: attempt {job.attempt} starts]\n".encode()
            offset = 0
        attempt = job.attempt
        ended = job.state.is_final
        path = log_path(data_dir, job)
        if path.is_file():
            with open(path, "rb") as fh:
                fh.seek(offset)
                while chunk := fh.read(64 * 1024):
                    offset += len(chunk)
                    yield chunk
        if ended:
            return
        time.sleep(poll)
