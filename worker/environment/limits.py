"""What a build step may use (`StepLimits`), and how a running step is held to it (`Watch`).

Each limit has a fast stop the kernel applies to each process, and a measurement of the whole
build every `LIMIT_CHECK_INTERVAL` seconds that fails the build when it is past the limit:

- processes: RLIMIT_NPROC for the build user; the build user's processes, counted;
- disk: RLIMIT_FSIZE for each file; what the build's area holds, plus its in-memory /tmp,
  /var/tmp and /dev/shm (each mounted with a size, `StepLimits.tmpfs_size`), plus, without a
  sandbox, what the build user owns in the machine's shared folders (`SHARED_FOLDERS`);
- memory: RLIMIT_AS for each process; for the build as a whole a cgroup of its own whose
  ``memory.max`` is the limit (`MemoryGroup`: the kernel itself keeps the build under it, and
  its OOM kills are counted), or, where the worker cannot make one (no cgroup v2 with the memory
  controller, a read-only cgroupfs in a container), the memory of all the build's processes
  summed (`memory_of`: proportional, so pages shared between its processes count once; a
  cheaper bound, `memory_bound`, is read first) plus its in-memory folders.

The summed measurement sees what the build holds once a second, so a build can pass the limit
by what it allocates within a second before it is stopped; the cgroup cannot be passed. Memory
the kernel holds for a build without it being mapped in a process or stored in its folders
(a memfd never mapped, pipe buffers, the kernel's own tables) is seen only by the cgroup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: How often a running build step is measured against its limits (seconds).
LIMIT_CHECK_INTERVAL = 1.0
#: The folders a sandbox mounts in memory (with a size) for each build step.
SANDBOX_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 (inside the sandbox)
#: The machine's folders that any user may write: without a sandbox, what the build user
#: makes in them counts toward its disk limit, and is removed when the build user is released.
SHARED_FOLDERS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/run/lock"))  # noqa: S108

MiB = 2**20


@dataclass(frozen=True)
class StepLimits:
    """What a build step may use (see common.config.LimitSettings); 0: no limit."""

    memory: int = 0
    processes: int = 0
    disk: int = 0

    def prefix(self) -> list[str]:
        """A `prlimit` command line that sets the per-process limits for what it runs (limits
        survive the change of user, so the build user's processes keep them)."""
        options = ["--core=0"]
        if self.memory:
            options.append(f"--as={self.memory}")
        if self.processes:
            options.append(f"--nproc={self.processes}")
        if self.disk:
            options.append(f"--fsize={self.disk}")
        return ["prlimit", *options, "--"]

    @property
    def tmpfs_size(self) -> int:
        """The size of each in-memory folder of a sandbox (/tmp, /var/tmp, /dev/shm): what is
        in it is both memory and files, so the smaller of the two limits; 0: no size."""
        sizes = [size for size in (self.memory, self.disk) if size]
        return min(sizes) if sizes else 0

    def tmpfs(self, path: str) -> list[str]:
        """bwrap arguments for an in-memory folder anyone may write, of `tmpfs_size`."""
        size = ["--size", str(self.tmpfs_size)] if self.tmpfs_size else []
        return ["--perms", "1777", *size, "--tmpfs", path]


NO_LIMITS = StepLimits()


# -- what a build is made of -------------------------------------------------------------------


def user_processes(uid: int) -> int:
    """How many processes ``uid`` runs on this machine (its build user's, for a build)."""
    return len(_pids_of_user(uid))


def _pids_of_user(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (for a worker that is not root: its build steps
    run as its own user, in a PID namespace of their own, so their processes stay below)."""
    return [pid for pid, _ in _tree(root)]


def _tree(root: int) -> list[tuple[int, int]]:
    """``root`` and every process below it, each with its parent, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[tuple[int, int]] = []
    todo = [(root, 0)]
    while todo:
        pid, parent = todo.pop()
        found.append((pid, parent))
        todo.extend((child, pid) for child in children.get(pid, ()))
    return found


def memory_of(pid: int) -> int:
    """The memory a process holds, in bytes: its share of the anonymous and shared-memory
    pages it maps (a page mapped by n processes counts 1/n in each, so a build's processes
    summed count each page once) and of what of them is swapped out. File pages (programs,
    libraries, the page cache) are left out: the kernel can drop them. 0 if it is gone."""
    return _proc_sum(f"/proc/{pid}/smaps_rollup", (b"Pss_Anon:", b"Pss_Shmem:", b"SwapPss:"))


def memory_bound(pid: int) -> int:
    """At least `memory_of` the process, in bytes, read from counters the kernel keeps (its
    resident anonymous and shared-memory pages and its swap, each page counted whole even
    when shared): cheap, where `memory_of` walks the process's page tables. 0 if it is gone."""
    return _proc_sum(f"/proc/{pid}/status", (b"RssAnon:", b"RssShmem:", b"VmSwap:"))


def _proc_sum(path: str, fields: tuple[bytes, ...]) -> int:
    """The sum, in bytes, of the kB ``fields`` of a /proc file; 0 if the process is gone."""
    total = 0
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(fields):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def _entries(folders: Iterable[Path],
             descend: Callable[[os.stat_result], bool]) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``folders`` (its path and its lstat), links not followed, going down
    into the folders that ``descend`` admits; what vanishes meanwhile is skipped."""
    todo = list(folders)
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    yield entry.path, st
                    if stat.S_ISDIR(st.st_mode) and descend(st):
                        todo.append(Path(entry.path))
        except OSError:
            continue


def folder_usage(path: Path) -> int:
    """Bytes ``path`` holds on disk, counted without following links."""
    return sum(st.st_blocks * 512 for _, st in _entries([path], lambda st: True))


def entry_usage(path: Path) -> int:
    """Bytes one entry holds on disk: a file, or a folder and everything in it."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    inside = folder_usage(path) if stat.S_ISDIR(st.st_mode) else 0
    return st.st_blocks * 512 + inside


def shared_files(uid: int, folders: Iterable[Path] = SHARED_FOLDERS) -> list[Path]:
    """What ``uid`` made in the machine's shared folders: the entries it owns there, found by
    going down only through folders anyone may write (the only way into them)."""
    roots = [folder for folder in folders if folder.is_dir() and not folder.is_symlink()]
    return [Path(path) for path, st in _entries(
        roots, lambda st: st.st_uid != uid and bool(st.st_mode & stat.S_IWOTH))
        if st.st_uid == uid]


def remove_shared_files(uid: int, folders: Iterable[Path] = SHARED_FOLDERS) -> None:
    """Delete what ``uid`` left in the machine's shared folders (called when none of its
    processes runs; links are removed, never followed)."""
    for path in shared_files(uid, folders):
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
        except OSError:
            continue


def _own_mount_namespace() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


def sandbox_tmp_usage(pids: Sequence[int]) -> int:
    """Bytes in the in-memory folders of the sandbox the processes ``pids`` run in (seen
    through the first of them that runs in a mount namespace other than the worker's); 0 if
    none does. Watch gives the sandbox's own process (`Watch._sandbox_view`): a build's
    process could move to a namespace of its own whose folders are empty (``unshare -Urm``)
    and hide what its other processes wrote."""
    mine = _own_mount_namespace()
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino == mine:
                continue
            used = 0
            for mount in SANDBOX_TMP:
                st = os.statvfs(f"/proc/{pid}/root{mount}")
                used += (st.f_blocks - st.f_bfree) * st.f_frsize
            return used
        except OSError:
            continue  # it ended: the next one
    return 0


# -- a cgroup of the build's own ---------------------------------------------------------------

#: The cgroup, at the top of the machine's cgroup v2 hierarchy, that holds the builds' own.
BUILDS_GROUP = "pkgfarm-builds"
_ENTER = ('echo 0 > "$1" || { echo "pkgfarm: the build step could not enter its cgroup $1" '
          '>&2; exit 125; }; shift; exec "$@"')
_UNSET = object()
_parent: object | Path | None = _UNSET


def cgroup2_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Where cgroup v2 hierarchies are mounted (their top, not a part of them)."""
    found = []
    try:
        text = mountinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        mine, _, fs = line.partition(" - ")
        fields = mine.split()
        if fs.split()[:1] == ["cgroup2"] and len(fields) > 4 and fields[3] == "/":
            found.append(Path(fields[4].replace("\\040", " ")))
    return found


def builds_parent() -> Path | None:
    """The cgroup that holds the builds' cgroups, made (once per process) where this worker
    can: as root, in a writable cgroup v2 hierarchy that offers the memory controller. None
    elsewhere: the builds' memory is then measured (see the module's text)."""
    global _parent
    if _parent is _UNSET:
        _parent = find_builds_parent(cgroup2_mounts()) if os.geteuid() == 0 else None
        if _parent is not None and not _can_enter(_parent):
            _parent = None
        if _parent is None:
            log.info("no cgroup with the memory controller can be made here: a build's "
                     "memory is measured every %.0f s instead", LIMIT_CHECK_INTERVAL)
    return _parent if isinstance(_parent, Path) else None


def _can_enter(parent: Path) -> bool:
    """Whether a command can be moved into a build's cgroup under ``parent`` (tried once with
    a group of its own: a cgroup namespace or a delegation rule may refuse it)."""
    group = MemoryGroup.make(f"probe-{os.getpid()}", 2**30, parent)
    if group is None:
        return False
    try:
        result = subprocess.run([*group.enter(), "true"], capture_output=True, text=True,
                                check=False)
    finally:
        group.close()
    if result.returncode != 0:
        log.info("build cgroups cannot be entered here: %s", result.stderr.strip())
    return result.returncode == 0


def find_builds_parent(mounts: Sequence[Path]) -> Path | None:
    """`BUILDS_GROUP` at the top of the first of the cgroup v2 hierarchies ``mounts`` where
    it can be made with the memory controller for its children."""
    for top in mounts:
        found = _make_parent(top)
        if found is not None:
            return found
    return None


def _make_parent(top: Path) -> Path | None:
    try:
        if "memory" not in (top / "cgroup.controllers").read_text().split():
            return None
        if "memory" not in (top / "cgroup.subtree_control").read_text().split():
            (top / "cgroup.subtree_control").write_text("+memory")
        parent = top / BUILDS_GROUP
        parent.mkdir(exist_ok=True)
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            (parent / "cgroup.subtree_control").write_text("+memory")
        return parent
    except OSError as exc:
        log.info("no cgroup for builds under %s: %s", top, exc.strerror or exc)
        with contextlib.suppress(OSError):
            (top / BUILDS_GROUP).rmdir()
        return None


class MemoryGroup:
    """A cgroup of one build step's own (``build-UID`` under `BUILDS_GROUP`) whose
    ``memory.max`` is the build's memory limit; no swap, and an OOM kill stops every process
    of the group (``memory.oom.group``). Its command prefix moves the step into it before it
    starts anything."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def make(cls, name: str, limit: int, parent: Path | None = None) -> MemoryGroup | None:
        """The group, or None where the worker cannot make one."""
        parent = parent if parent is not None else builds_parent()
        if parent is None or not limit:
            return None
        group = cls(parent / name)
        try:
            if group.path.is_dir():
                group.close()  # one a worker that died left
            group.path.mkdir()
            (group.path / "memory.max").write_text(str(limit))
            for setting, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if (group.path / setting).exists():
                    (group.path / setting).write_text(value)
        except OSError as exc:
            log.warning("no cgroup for the build (%s); its memory is measured instead",
                        exc.strerror or exc)
            group.close()
            return None
        return group

    def enter(self) -> list[str]:
        """The command prefix that runs what follows inside the group."""
        return ["sh", "-c", _ENTER, "pkgfarm-cgroup", str(self.path / "cgroup.procs")]

    def oom_kills(self) -> int:
        """How many of the group's processes the kernel killed for its memory limit."""
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def close(self) -> None:
        """Kill what still runs in the group, and remove it."""
        for _ in range(50):
            try:
                pids = (self.path / "cgroup.procs").read_text().split()
            except OSError:
                break
            if not pids:
                break
            if (self.path / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    (self.path / "cgroup.kill").write_text("1")
            else:
                for pid in pids:
                    with contextlib.suppress(OSError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)
        for _ in range(20):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


# -- the watch ---------------------------------------------------------------------------------


class Watch:
    """What a running build step is measured against every `LIMIT_CHECK_INTERVAL` seconds
    (see the module's text); reaching a limit fails the build, not only a refused fork or
    write.

    ``uid`` is the build user (its processes are the build's; None: a worker that is not root,
    whose step's processes are those below the step's own); ``sandboxed``: the step runs in a
    sandbox with in-memory folders (`SANDBOX_TMP`), counted as disk and as memory; otherwise
    what the build user owns in `SHARED_FOLDERS` counts as disk. ``group``: the step's cgroup.
    """

    def __init__(self, area: Path, limits: StepLimits, uid: int | None = None, *,
                 sandboxed: bool = False, group: MemoryGroup | None = None) -> None:
        self.area, self.limits, self.uid = area, limits, uid
        self.sandboxed, self.group = sandboxed, group
        self.pid: int | None = None

    def attach(self, pid: int) -> None:
        """The step's own process (started, not yet measured)."""
        self.pid = pid

    def _pids(self) -> list[int]:
        if self.uid is not None:
            return _pids_of_user(self.uid)
        return _descendants(self.pid) if self.pid is not None else []

    def _sandbox_view(self, pids: list[int]) -> list[int]:
        """The processes to see the sandbox's in-memory folders through: the parent of the
        step's first process of the build user (bubblewrap's own, which runs as root in the
        sandbox's namespaces and which the build cannot move); for a worker that is not root,
        the step's processes from its top down."""
        if self.pid is None:
            return pids
        tree = _tree(self.pid)
        if self.uid is None:
            return [pid for pid, _ in tree]
        build = set(pids)
        return next(([parent] for pid, parent in tree if pid in build), [])

    def problem(self, what: str) -> str | None:
        """Why the step must stop now, or None."""
        limits = self.limits
        if not (limits.processes or limits.disk or limits.memory):
            return None
        pids = self._pids()
        if self.uid is not None and limits.processes:
            running = len(pids)
            if running >= limits.processes * 9 // 10:
                return (f"{what} ran {running} processes, at its processes limit of "
                        f"{limits.processes}, and was stopped")
        in_memory = sandbox_tmp_usage(self._sandbox_view(pids)) if self.sandboxed else 0
        if limits.disk:
            used = folder_usage(self.area) + in_memory
            if not self.sandboxed and self.uid is not None:
                used += sum(entry_usage(path) for path in shared_files(self.uid))
            if used > limits.disk:
                return (f"{what} used {used // MiB} MiB of disk (its folder, /tmp, /var/tmp "
                        f"and /dev/shm), more than its disk limit of {limits.disk // MiB} "
                        "MiB, and was stopped")
        if limits.memory:
            if self.group is not None:
                return self.ended(what)
            # The cheap bound first; the pages the build's processes share (after a fork)
            # are counted once only when it is past the limit.
            used = sum(memory_bound(pid) for pid in pids) + in_memory
            if used > limits.memory:
                used = sum(memory_of(pid) for pid in pids) + in_memory
            if used > limits.memory:
                return (f"{what} used {used // MiB} MiB of memory (all its processes "
                        f"together, with its /tmp, /var/tmp and /dev/shm), more than its "
                        f"memory limit of {limits.memory // MiB} MiB, and was stopped")
        return None

    def ended(self, what: str) -> str | None:
        """Why a step that ended failed all the same: the kernel stopped a process of it for
        the memory limit of its cgroup."""
        if self.group is None:
            return None
        kills = self.group.oom_kills()
        if kills:
            return (f"{what} reached its memory limit of {self.limits.memory // MiB} MiB (all "
                    f"its processes together): the kernel stopped {kills} of its processes, "
                    "and the build was stopped")
        return None

    def explain(self, code: int, lines: Sequence[str]) -> str:
        """Words for a failed step's exit that name the limit it probably reached (from its
        exit status and its last lines of output), or ''."""
        limits = self.limits
        text = "\n".join(lines)
        if limits.disk and (code in (128 + signal.SIGXFSZ, -signal.SIGXFSZ)
                            or "File size limit exceeded" in text):
            return (f"; a file reached {limits.disk // MiB} MiB, the disk limit (also the "
                    "largest file a build may write)")
        if limits.disk and self.sandboxed and "No space left on device" in text:
            places = "its /tmp, /var/tmp and /dev/shm"
            return (f'; its output says "No space left on device": {places} hold at most '
                    f"{limits.tmpfs_size // MiB} MiB, and its disk limit is "
                    f"{limits.disk // MiB} MiB")
        if limits.memory:
            for words in ("Out of memory", "Cannot allocate memory", "MemoryError",
                          "bad_alloc", "memory exhausted"):
                if words in text:
                    return (f'; its output says "{words}": a process may have reached the '
                            f"memory limit of {limits.memory // MiB} MiB (which also bounds "
                            "each process's address space)")
        if limits.processes and "fork" in text and "Resource temporarily unavailable" in text:
            return (f"; its output says it could not fork: the build user may run at most "
                    f"{limits.processes} processes (its processes limit)")
        return ""


@contextlib.contextmanager
def step_limits(area: Path, limits: StepLimits, uid: int | None, *,
                sandboxed: bool) -> Iterator[tuple[list[str], Watch]]:
    """What one build step runs under: the command prefix that applies ``limits`` (the
    step's cgroup, where one can be made, then the per-process limits) and the `Watch` that
    measures it; the cgroup goes when the step is over."""
    group = MemoryGroup.make(f"build-{uid}", limits.memory) if uid is not None else None
    try:
        yield ([*(group.enter() if group else []), *limits.prefix()],
               Watch(area, limits, uid, sandboxed=sandboxed, group=group))
    finally:
        if group is not None:
            group.close()
