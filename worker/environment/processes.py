"""Running a build's commands as a process tree of their own, with a time limit and a stop.

Every command a build runs (the build script, apt-get, dpkg-buildpackage, mmdebstrap) goes
through `run_process`: a session of its own, its output copied to the build log as it comes
(up to the log's limit, `BuildLog`), and on the time limit, a cancel or a limit of the build
(`worker.environment.limits`) the whole process group killed.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import io
import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from common.errors import BuildCancelled, BuildFailed
from common.locks import LockBusy, file_lock
from worker.environment.limits import (
    LIMIT_CHECK_INTERVAL,
    Watch,
    remove_shared_files,
    user_processes,
)

log = logging.getLogger(__name__)

Log = Callable[[str], None]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The name the build user has inside clean roots (where pkgfarm writes its passwd entry).
BUILD_USER = "pkgfarm-build"
#: The sub-folder of a build's folder that its steps may write; the rest is the worker's.
AREA = "area"
#: The most of its commands' output a build's log keeps: half what the master keeps of an
#: attempt's log, so that the worker's own lines after a cut still reach it.
LOG_OUTPUT_LIMIT = 32 * 2**20
#: The line that marks where a build's log was cut.
LOG_CUT = ("\n[pkgfarm: the build's output reached the log's limit of {mib} MiB; the rest is "
           "dropped, and the build goes on]\n")
#: How much of the output a step reads at once, and the longest line kept for messages.
_CHUNK = 64 * 1024
_LINE_MAX = 4096


def prepare_area(area: Path, uid: int | None) -> None:
    """Make the build's writable area (its ``home`` and ``tmp`` inside), owned by the build
    user when there is one and closed to every other user; the folder above stays the
    worker's (traversable, not writable)."""
    area.parent.chmod(0o711)
    for sub in ("", "home", "tmp"):
        (area / sub).mkdir(parents=True, exist_ok=True)
    if uid is not None:
        give_to(area, uid)
        area.chmod(0o700)


def mount_parents(*paths: Path) -> list[str]:
    """bwrap arguments, to come before the mounts, that make every folder above ``paths``
    (mount points) a folder anyone may pass through, as on the machine (the folders bwrap
    makes for a mount point on its own are for root alone)."""
    parents = sorted({parent for path in paths for parent in path.parents
                      if parent != Path("/")}, key=lambda p: len(p.parts))
    args: list[str] = []
    for parent in parents:
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def check_reachable(path: Path) -> None:
    """BuildFailed unless anyone may pass through every folder above ``path`` (the build user
    must reach its area without a sandbox that makes the way)."""
    for parent in path.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            raise BuildFailed(f"the build user cannot reach its folder: {parent} is closed to "
                              "others (chmod o+x it, or put worker.work_dir elsewhere)")


def give_to(path: Path, uid: int) -> None:
    """Hand ``path`` and everything under it to ``uid`` (links themselves, never what they
    point to)."""
    os.lchown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def remove_tree(path: Path) -> None:
    """Delete a build's folder, also what a build left read-only (never following links)."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        subprocess.run(["chmod", "-R", "u+rwX", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def step_environment(env: dict[str, str], uid: int | None) -> dict[str, str]:
    """A build step's variables, with the user it runs as."""
    if uid is None:
        return env
    return {**env, "USER": BUILD_USER, "LOGNAME": BUILD_USER}


#: How many build users a machine has: ids ``build_uid`` … ``build_uid + BUILD_USERS - 1``,
#: one per build running at once, so that limits, clean-ups and areas are a build's own.
BUILD_USERS = 64
#: Where the builds of this machine (of every worker on it) take their build user.
BUILD_USER_LOCKS = Path("/run/pkgfarm-build-users")


class BuildUser:
    """One build user id of the machine's range, held (a file lock) while a build uses it."""

    def __init__(self, first: int, count: int = BUILD_USERS,
                 locks: Path = BUILD_USER_LOCKS, *, shared_folders: bool = False) -> None:
        """``shared_folders``: the builds run without a sandbox and may leave files in the
        machine's shared folders (`SHARED_FOLDERS`), which are removed with the user."""
        self.first, self.count, self.locks = first, count, locks
        self.shared_folders = shared_folders
        self.uid: int | None = None
        self._held: contextlib.ExitStack | None = None

    def __enter__(self) -> int:
        self.locks.mkdir(mode=0o755, parents=True, exist_ok=True)
        for uid in range(self.first, self.first + self.count):
            held = contextlib.ExitStack()
            try:
                held.enter_context(file_lock(self.locks / f"{uid}.lock", wait=False))
            except LockBusy:
                continue
            # Nothing of a build before may still run as it (else the next id), nor find
            # what it left in the machine's /tmp.
            if not kill_user_processes(uid):
                log.warning("build user %d still runs processes that would not die; "
                            "taking another", uid)
                held.close()
                continue
            self.uid, self._held = uid, held
            if self.shared_folders:
                remove_shared_files(uid)
            return uid
        raise BuildFailed(f"all {self.count} build users ({self.first}…"
                          f"{self.first + self.count - 1}) are in use on this machine")

    def __exit__(self, *exc: object) -> None:
        if self.uid is not None:
            if not kill_user_processes(self.uid):
                log.warning("build user %d still runs processes that would not die",
                            self.uid)
            if self.shared_folders:
                remove_shared_files(self.uid)
        if self._held is not None:
            self._held.close()
        self.uid, self._held = None, None


def drop_privileges(uid: int) -> list[str]:
    """A `setpriv` command line that runs what follows as ``uid`` (group ``uid``), with no
    supplementary groups, no capabilities, and no way back to root (no new privileges:
    setuid programs do not raise it)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def kill_user_processes(uid: int, wait: float = 5.0) -> bool:
    """Kill every process of ``uid`` (whatever a build left running outside a sandbox), and
    wait up to ``wait`` seconds until none is left, not even one dead and not yet collected by
    the machine's init (each counts toward the build user's process limit); False if some
    are left then."""
    deadline = time.monotonic() + wait
    # Only the worker starts processes as a build user: with none running, none can appear,
    # and the kill (a process of its own, as that user) is spared (most builds leave nothing).
    while user_processes(uid):
        if time.monotonic() > deadline:
            return False
        subprocess.run([*drop_privileges(uid), "kill", "-KILL", "-1"], capture_output=True,
                       check=False)
        if user_processes(uid):
            time.sleep(0.05)
    return True


def take_tree(made: Path, dest: Path, owner: int | None) -> Path:
    """Move the folder a build made (``made``, inside its writable area) to ``dest``, a
    place only the worker can reach, and return it; BuildFailed if ``made`` is not a folder
    the build user owns (a symbolic link, a file, anything the build swapped in).

    Called when nothing the build started runs any more, so nothing can change ``made``
    between the check and the move; after the move nothing of the build can reach it.
    """
    try:
        st = os.lstat(made)
    except FileNotFoundError:
        raise BuildFailed(f"the build removed {made.name}/, which it must fill") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BuildFailed(f"{made.name}/ was replaced by something that is not a folder (a "
                          "link, say); nothing of it is used")
    if owner is not None and st.st_uid != owner:
        raise BuildFailed(f"{made.name}/ is not the folder the build was given")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(made, dest)
    return dest

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


class BuildLog(io.TextIOWrapper):
    """A build's log file (text), which keeps at most ``limit`` bytes of its commands' output:
    past it one marker line, and the rest is read and dropped (the commands never wait on a
    full pipe) while the build goes on. The worker's own lines are always written."""

    def __init__(self, path: Path, limit: int = LOG_OUTPUT_LIMIT) -> None:
        super().__init__(open(path, "wb"), encoding="utf-8", errors="replace")  # noqa: SIM115
        self.limit = limit
        self.kept = 0
        self.cut = False

    def admit(self, chunk: bytes) -> tuple[bytes, bool]:
        """The part of ``chunk`` (a command's output) the log keeps, and whether the log is
        cut here (its marker then follows that part)."""
        if self.cut:
            return b"", False
        room = self.limit - self.kept
        if len(chunk) <= room:
            self.kept += len(chunk)
            return chunk, False
        self.kept, self.cut = self.limit, True
        return chunk[:room], True

    def marker(self) -> str:
        return LOG_CUT.format(mib=self.limit // 2**20)


def run_process(argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float,
                out: IO[str], cancel: threading.Event | None = None,
                what: str = "the build script", hint: str = "",
                tail: collections.deque[str] | None = None,
                watch: Watch | None = None) -> None:
    """Run ``argv`` in a session of its own, its output copied to ``out`` as it comes (within
    the limit of a `BuildLog`).

    The last lines are kept in ``tail`` (for error messages). On the time limit, ``cancel``,
    or a limit that ``watch`` finds reached, the whole process group is killed and
    BuildFailed or BuildCancelled raised; a non-zero exit raises BuildFailed naming ``what``
    and the status, followed by ``hint`` and, with a ``watch``, the limit the output or the
    status points to.
    """
    out.flush()
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        raise BuildFailed(f"{what} could not be started: {exc.strerror or exc}") from exc
    assert proc.stdout is not None
    if watch is not None:
        watch.attach(proc.pid)
    lock = threading.Lock()
    recent: collections.deque[str] = collections.deque(maxlen=20)
    keep = max(recent.maxlen or 0, (tail.maxlen or 10_000) if tail is not None else 0)

    def copy() -> None:
        """Copy the output in chunks (a line may be endless), as text, into the log, and its
        last lines into ``recent`` and ``tail``."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = b""
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except (OSError, ValueError):
                return  # the pipe was closed under it: a process outside the group kept it
            if not chunk:
                break
            kept, cut = out.admit(chunk) if isinstance(out, BuildLog) else (chunk, False)
            if kept or cut:
                text = decoder.decode(kept, final=cut)
                with lock:
                    out.write(text + (out.marker() if isinstance(out, BuildLog) and cut
                                      else ""))
                    out.flush()
            # Only the last lines matter: split off at most ``keep`` of them.
            parts = (pending + chunk).rsplit(b"\n", keep + 1)
            pending = parts.pop()[-_LINE_MAX:]
            if len(parts) > keep:
                del parts[0]  # the lines before the last ``keep``: none of them is kept
            for raw in parts:
                line = raw[-_LINE_MAX:].decode("utf-8", "replace")
                recent.append(line)
                if tail is not None:
                    tail.append(line)
        if pending:
            line = pending.decode("utf-8", "replace")
            recent.append(line)
            if tail is not None:
                tail.append(line)
        if not (isinstance(out, BuildLog) and out.cut):
            text = decoder.decode(b"", final=True)
            if text:
                with lock:
                    out.write(text)
                    out.flush()

    copier = threading.Thread(target=copy, name="output-copy", daemon=True)
    copier.start()
    deadline = time.monotonic() + timeout
    next_measure = time.monotonic() + LIMIT_CHECK_INTERVAL
    try:
        while True:
            try:
                code = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                if watch is not None and time.monotonic() > next_measure:
                    next_measure = time.monotonic() + LIMIT_CHECK_INTERVAL
                    problem = watch.problem(what)
                    if problem:
                        _kill_group(proc)
                        raise BuildFailed(problem) from None
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
    problem = watch.ended(what) if watch is not None else None
    if problem:
        raise BuildFailed(problem)
    if code != 0:
        why = watch.explain(code, list(recent)) if watch is not None else ""
        raise BuildFailed(f"{what} failed with exit status {code}{hint}{why}")


def note(out: IO[str], log: Log | None, message: str) -> None:
    if log is not None:
        log(message)
    else:
        out.write(f"pkgfarm: {message}\n")
        out.flush()


