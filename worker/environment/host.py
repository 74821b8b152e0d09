"""Building on this machine: packages installed here with apt-get (as root), commands confined
by bubblewrap (the system read-only, only the build's folder writable) when the worker's sandbox
is ``bwrap``."""

from __future__ import annotations

import collections
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from common.arch import host_arch
from common.errors import BuildCancelled, BuildFailed
from common.formats.deb.policy import first_alternatives
from worker.environment.aptconfig import apt_problems, ca_settings
from worker.environment.limits import NO_LIMITS, SANDBOX_TMP, StepLimits, step_limits
from worker.environment.processes import (
    AREA,
    BuildUser,
    Log,
    check_reachable,
    drop_privileges,
    kill_user_processes,
    mount_parents,
    note,
    prepare_area,
    run_process,
    step_environment,
)

#: What a sandboxed build step sees of this machine, read-only: its programs, libraries and
#: settings, and dpkg's database (dpkg-buildpackage checks build dependencies against it).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
                "/opt", "/var/lib/dpkg")


def listening_sockets(unix: Path = Path("/proc/net/unix")) -> list[Path]:
    """The unix sockets of this machine's network namespace bound to a path (as the kernel
    lists them: where they were bound)."""
    try:
        lines = unix.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7].startswith("/"):
            found.append(Path(fields[7]))
    return list(dict.fromkeys(found))


def exposed_sockets(mounted: Sequence[Path], sockets: Sequence[Path]) -> list[Path]:
    """Which ``sockets`` a sandbox that binds the folders ``mounted`` would show: each where it
    really is (links resolved), if it is a socket there. A read-only bind does not stop a
    connection to a socket, so these are covered."""
    roots = [os.path.realpath(m) for m in mounted]
    shown = []
    for sock in sockets:
        real = os.path.realpath(sock)
        try:
            if not stat.S_ISSOCK(os.lstat(real).st_mode):
                continue
        except OSError:
            continue
        if any(real.startswith(root.rstrip("/") + "/") for root in roots):
            shown.append(Path(real))
    return list(dict.fromkeys(shown))


def sandboxed(argv: Sequence[str], area: Path, cwd: Path, sandbox: str, *,
              network: bool = False, hidden: Sequence[Path] = (),
              uid: int | None = None, limits: StepLimits = NO_LIMITS) -> list[str]:
    """Wrap ``argv`` (to run in ``cwd``) so that it can write only inside ``area``.

    With bubblewrap the command sees only the system's programs and settings, read-only
    (`SYSTEM_PATHS`: no /home, /root, /srv, /var, /run, nor their sockets; a socket inside
    them that this machine's network namespace lists by its full path is covered; one bound
    by a relative path, or from another network namespace, is not: keep listening sockets
    out of those folders), with the ``hidden`` paths among them (the worker's config and
    keys) covered, private /dev, an in-memory /tmp, /var/tmp and /dev/shm of the size
    ``limits`` give, and ``area``, the one writable place on disk; the network is the
    sandbox's own loopback unless ``network``; and it runs in its own PID namespace that dies
    with bwrap, so killing bwrap stops everything it started. With ``uid`` the command runs as
    that unprivileged user.
    """
    drop = drop_privileges(uid) if uid is not None else []
    if sandbox == "none":
        return [*drop, *argv]
    if shutil.which("bwrap") is None:
        raise BuildFailed("worker.sandbox is bwrap but bubblewrap is not installed "
                          "(apt-get install bubblewrap, or set worker.sandbox: none)")
    mounted = [Path(p) for p in SYSTEM_PATHS if os.path.isdir(p) and not os.path.islink(p)]
    args = ["bwrap", *mount_parents(*mounted, Path("/var/tmp"), *hidden)]  # noqa: S108
    for system in SYSTEM_PATHS:
        if os.path.islink(system):
            args += ["--symlink", os.readlink(system), system]
        elif os.path.isdir(system):
            args += ["--ro-bind", system, system]
    for sock in exposed_sockets(mounted, listening_sockets()):
        args += ["--ro-bind", "/dev/null", str(sock)]
    args += ["--dev", "/dev", "--proc", "/proc"]
    for folder in SANDBOX_TMP:
        args += limits.tmpfs(folder)
    covers: list[str] = []
    folders = [path for path in hidden if path.is_dir()]
    for path in hidden:
        if any(folder in path.parents for folder in folders):
            continue  # inside a folder that is covered already
        if path.is_dir():
            args += ["--tmpfs", str(path)]
            # ... made read-only once the area hangs in it (a worker that is not root owns
            # what its sandbox mounts, and could write there otherwise).
            covers += ["--remount-ro", str(path)]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    # The area's folders are made after the masks, which may cover the place they hang in.
    args += [*mount_parents(area), "--bind", str(area), str(area), *covers,
             # The sandbox's own root (where the binds hang) is read-only too.
             "--remount-ro", "/",
             "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             *([] if network else ["--unshare-net"]),
             "--die-with-parent", "--new-session", "--chdir", str(cwd)]
    return [*args, *drop, *argv]


def missing_packages(names: Sequence[str]) -> list[str]:
    """Which of the packages (names or relations: the first alternative's name counts) dpkg
    does not have installed on this machine."""
    missing = []
    for name in first_alternatives(names):
        out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name],
                             capture_output=True, text=True)
        if out.returncode != 0 or out.stdout.strip() != "installed":
            missing.append(name)
    return missing


class HostEnvironment:
    """Builds on this machine: packages installed here with apt-get (as root), build steps
    confined by ``sandbox`` (``bwrap``: read-only system, only the area writable, offline;
    ``none``), as the build user when the worker is root.

    ``jobdir`` is the build's own folder, which only the worker can write; the build steps
    write only in its ``area`` sub-folder (see `BuildEnvironment`).
    """

    def __init__(self, jobdir: Path, *, sandbox: str = "none", install_deps: bool = True,
                 extra_apt_lines: Sequence[str] = (), log: Log | None = None,
                 timeout: float = 3600, cancel: threading.Event | None = None,
                 ca_file: str | None = None, build_uid: int | None = None,
                 limits: StepLimits = NO_LIMITS, hidden: Sequence[Path] = ()) -> None:
        self.private = Path(jobdir)
        self.area = self.private / AREA
        #: the first id of the machine's build users (None: the worker is not root)
        self.first_uid = build_uid if os.geteuid() == 0 else None
        self.build_uid: int | None = None
        self._user: BuildUser | None = None
        self._depth = 0
        self.limits = limits
        self.hidden = list(hidden)
        self.ca_file = ca_file
        self.sandbox = sandbox
        self.install_deps = install_deps
        self.log = log
        self.timeout = timeout
        self.cancel = cancel
        self.arch = host_arch()
        self._extra: list[str] = []
        self._updated = False
        if extra_apt_lines:
            self.extra_sources(extra_apt_lines)

    def __enter__(self) -> HostEnvironment:
        if self._depth == 0:
            if self.first_uid is not None:
                self._user = BuildUser(self.first_uid, shared_folders=self.sandbox == "none")
                self.build_uid = self._user.__enter__()
            try:
                prepare_area(self.area, self.build_uid)
                if self.build_uid is not None and self.sandbox == "none":
                    check_reachable(self.area)
            except BaseException:
                self._release()
                raise
        self._depth += 1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._release()

    def _release(self) -> None:
        """The build user goes back to the machine (its processes killed first)."""
        if self._user is not None:
            self._user.__exit__()
        self._user = None

    # apt ---------------------------------------------------------------------------------

    def extra_sources(self, lines: Sequence[str]) -> None:
        self._extra.extend(line for line in lines if line not in self._extra)
        self._updated = False

    def _apt_options(self) -> list[str]:
        """With extra sources: apt reads a copy of the machine's source parts plus them (the
        machine's apt configuration stays as it is)."""
        if not self._extra:
            return []
        parts = self.private / ".apt-sources.d"
        parts.mkdir(parents=True, exist_ok=True)
        machine_parts = Path("/etc/apt/sources.list.d")
        if machine_parts.is_dir():
            for item in machine_parts.iterdir():
                if item.is_file() and item.suffix in (".list", ".sources"):
                    shutil.copyfile(item, parts / item.name)
        (parts / "zz-pkgfarm-extra.list").write_text("".join(f"{ln}\n" for ln in self._extra))
        options = ["-o", f"Dir::Etc::sourceparts={parts}"]
        if self.ca_file:
            for setting in ca_settings(self._extra, self.ca_file):
                options += ["-o", setting]
        return options

    def _apt(self, args: Sequence[str], out: IO[str], what: str) -> None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        options = self._apt_options()
        tail: collections.deque[str] = collections.deque(maxlen=200)
        if options and not self._updated:
            run_process(["apt-get", "-q", *options, "update"], cwd=self.private, env=env,
                        timeout=self.timeout, out=out, cancel=self.cancel,
                        what="apt-get update", tail=tail)
            self._updated = True
        try:
            run_process(["apt-get", "-q", "-y", "--no-install-recommends", *options, *args],
                        cwd=self.private, env=env, timeout=self.timeout, out=out,
                        cancel=self.cancel, what=what, tail=tail)
        except BuildCancelled:
            raise
        except BuildFailed as exc:
            raise BuildFailed(f"{exc.message}: {apt_problems(tail)}") from None

    def _may_install(self) -> bool:
        return self.install_deps and os.geteuid() == 0

    def install(self, packages: Sequence[str], out: IO[str]) -> None:
        missing = missing_packages(list(packages))
        if not missing:
            return
        if not self._may_install():
            raise BuildFailed(f"missing build dependencies: {', '.join(missing)} (this worker "
                              "does not install packages; install them or run as root)")
        note(out, self.log, f"installing build dependencies: {' '.join(missing)}")
        try:
            self._apt(["install", *missing], out,
                      "apt-get install of the build dependencies")
        except BuildCancelled:
            raise
        except BuildFailed as exc:
            raise BuildFailed(f"apt-get could not install the build dependencies: "
                              f"{', '.join(missing)} ({exc.message})") from None

    def build_dep(self, source_dir: Path, out: IO[str], arch_indep: bool | None) -> None:
        flag = {True: ["--indep-only"], False: ["--arch-only"], None: []}[arch_indep]
        if self._may_install():
            note(out, self.log, f"installing the build dependencies of {source_dir.name}")
            self._apt(["build-dep", *flag, str(source_dir)], out, "apt-get build-dep")
            return
        check = {True: ["-A"], False: ["-B"], None: []}[arch_indep]
        result = subprocess.run(["dpkg-checkbuilddeps", *check], cwd=source_dir,
                                capture_output=True, text=True)
        if result.returncode != 0:
            words = (result.stderr or result.stdout).strip()
            unmet = words.split("Unmet build dependencies:", 1)[-1].strip()
            raise BuildFailed(f"missing build dependencies: {unmet} (this worker does not "
                              "install packages; install them or run as root)")

    # commands ----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float,
            out: IO[str], cancel: threading.Event | None = None, *,
            what: str = "the build script", network: bool = False) -> None:
        hint = ""
        if self.sandbox != "none":
            hint = " (it may write only inside its own folder and $DESTDIR, offline)"
        wrapped = sandboxed(argv, self.area, cwd, self.sandbox, network=network,
                            hidden=self.hidden, uid=self.build_uid, limits=self.limits)
        with step_limits(self.area, self.limits, self.build_uid,
                         sandboxed=self.sandbox != "none") as (prefix, watch):
            try:
                run_process([*prefix, *wrapped], cwd=cwd,
                            env=step_environment(env, self.build_uid), timeout=timeout,
                            out=out, cancel=cancel or self.cancel, what=what, hint=hint,
                            watch=watch)
            finally:
                if self.build_uid is not None and self.sandbox == "none":
                    kill_user_processes(self.build_uid)  # nothing the step started outlives it
