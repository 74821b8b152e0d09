"""Running a build's commands as a process tree of their own, with a time limit and a stop.

Every command a build runs (the build script, apt-get, dpkg-buildpackage, mmdebstrap) goes
through `run_process`: a session of its own, its output copied to the build log as it comes,
and on the time limit or a cancel the whole process group killed.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from common.errors import BuildCancelled, BuildFailed

Log = Callable[[str], None]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The folder, inside the build's work folder, that holds a clean build's root.

def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to the process group ``proc`` leads (its session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def run_process(argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float,
                out: IO[str], cancel: threading.Event | None = None,
                what: str = "the build script", hint: str = "",
                tail: collections.deque[str] | None = None) -> None:
    """Run ``argv`` in a session of its own, its output copied to ``out`` as it comes.

    The last lines are kept in ``tail`` (for error messages). On the time limit or ``cancel``
    the whole process group is killed and BuildFailed or BuildCancelled raised; a non-zero
    exit raises BuildFailed naming ``what`` and the status, followed by ``hint``.
    """
    out.flush()
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        raise BuildFailed(f"{what} could not be started: {exc.strerror or exc}") from exc
    assert proc.stdout is not None
    lock = threading.Lock()

    def copy() -> None:
        assert proc.stdout is not None
        try:
            for raw in iter(proc.stdout.readline, b""):
                text = raw.decode("utf-8", "replace")
                with lock:
                    out.write(text)
                    out.flush()
                if tail is not None:
                    tail.append(text.rstrip("\n"))
        except (OSError, ValueError):
            return  # the pipe was closed under it: a process outside the group kept it open

    copier = threading.Thread(target=copy, name="output-copy", daemon=True)
    copier.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                code = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    _kill_group(proc)
                    raise BuildCancelled("the build was stopped: this attempt is no longer "
                                         "this worker's") from None
                if time.monotonic() > deadline:
                    _kill_group(proc)
                    raise BuildFailed(f"{what} ran longer than its limit of {timeout:.0f} s "
                                      "and was stopped") from None
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        copier.join(timeout=10)
        proc.stdout.close()
    if code != 0:
        raise BuildFailed(f"{what} failed with exit status {code}{hint}")


def note(out: IO[str], log: Log | None, message: str) -> None:
    if log is not None:
        log(message)
    else:
        out.write(f"pkgfarm: {message}\n")
        out.flush()


