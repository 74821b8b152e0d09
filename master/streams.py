"""What long responses (the event stream, a followed log) share: whether this process is
stopping, and a cooperative wait.

gunicorn waits for open responses when it stops a process (up to graceful_timeout), so a
response that would go on forever must notice the stop itself. `master serve` hands each
gunicorn process's worker object to `attach` (a post_worker_init hook); its ``alive`` turns
False on SIGTERM, and `wait` checks it at least every `CHECK` seconds. Under gevent
(``master serve``) the sleep is gevent's, so a waiting stream costs a greenlet, not a thread.
"""

from __future__ import annotations

import time
from typing import Any

#: The longest a stream goes without looking at whether its process is stopping.
CHECK = 0.5

_worker: Any = None


def attach(worker: Any) -> None:
    """Remember this process's gunicorn worker (called once in each process)."""
    global _worker
    _worker = worker


def alive() -> bool:
    """False once this process was asked to stop."""
    return _worker is None or bool(getattr(_worker, "alive", True))


def wait(seconds: float) -> bool:
    """Sleep about ``seconds`` (cooperatively), waking early when the process stops; whether
    it is still alive."""
    end = time.monotonic() + seconds
    while alive():
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, CHECK))
    return False
