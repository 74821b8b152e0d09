"""The master's background loops (housekeeping, webhook deliveries), run by `master serve`'s
main process, gunicorn's arbiter, and by no other.

gunicorn forks its worker processes from the arbiter after the loops have started. Under
gevent (``master serve`` patches the standard library) a loop is a greenlet, and a fork keeps
every greenlet alive in the child. So each loop is started through `spawn`, which under gevent
makes a plain greenlet rather than a `threading.Thread` (a thread's copy ends in the child with
a KeyError from `threading`, whose table of threads the fork reset), and each loop ends where
`elsewhere` says it is a copy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any


def spawn(target: Callable[..., Any], *args: Any, name: str) -> None:
    """Start ``target(*args)`` in the background: a greenlet when gevent has patched
    `threading`, a daemon thread otherwise."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        monkey = None
    if monkey is not None and monkey.is_module_patched("threading"):
        import gevent

        gevent.spawn(target, *args).name = name
        return
    threading.Thread(target=target, args=args, name=name, daemon=True).start()


def elsewhere(pid: int) -> bool:
    """Whether this is a forked copy of a loop that process ``pid`` started."""
    return os.getpid() != pid
