"""A fresh root per build: an overlay over the unpacked base, entered with bubblewrap, deleted
when the build ends."""

from __future__ import annotations

import collections
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from common.arch import host_arch
from common.config import WorkerSettings
from common.errors import BuildCancelled, BuildFailed
from common.formats.deb.apt import update_failures
from worker.environment.aptconfig import apt_problems, ca_settings, https_hosts
from worker.environment.bases import (
    base_tree,
    can_run,
    check_clean_tools,
    create_base,
    foreign_message,
    hold_tree,
    unpack,
)
from worker.environment.limits import SANDBOX_TMP, StepLimits, step_limits
from worker.environment.processes import (
    AREA,
    BUILD_USER,
    PATH,
    BuildUser,
    Log,
    drop_privileges,
    mount_parents,
    note,
    prepare_area,
    run_process,
    step_environment,
)

#: The folder, inside the build's own folder, that holds its clean root.
ROOT_NAME = ".pkgfarm-root"
#: Docker's default capability set: enough for apt, dpkg and builds as root in the root; not
#: enough to mount, load modules, trace other processes or reach the machine's devices.
KEPT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
#: Mounts the overlay (lower: the unpacked base; upper: the build's own changes) in a mount
#: namespace of its own, then execs the rest of the command line (bwrap) in it.
_OVERLAY_SCRIPT = ('mount -t overlay pkgfarm-root -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" '
                   '&& shift 4 && exec "$@"')


class CleanEnvironment:
    """A fresh root for one build, deleted when the outermost ``with`` ends (entering again
    inside is allowed).

    The root is an overlay: the base unpacked once (shared, read-only) below, and the build's
    own changes in ``workdir/.pkgfarm-root/upper`` above, mounted in a mount namespace of each
    command's own, so nothing is mounted on the machine and starting a root costs no copy.
    Where overlays cannot be mounted (``overlay=False``, or the probe fails: a worker in a
    container on overlayfs) the base is unpacked into ``workdir/.pkgfarm-root/tree`` instead.

    ``workdir`` is bound inside the root at its own path (``.pkgfarm-root`` hidden), so paths
    in it mean the same inside and out.
    """

    def __init__(self, settings: WorkerSettings, arch: str, workdir: Path,
                 extra_apt_lines: Sequence[str] = (), *, out: IO[str] | None = None,
                 log: Log | None = None, base: Path | None = None,
                 timeout: float | None = None, cancel: threading.Event | None = None,
                 overlay: bool = True) -> None:
        self.settings = settings
        self.ca_file = settings.ca_file
        self.arch = host_arch() if arch == "all" else arch
        #: the build's own folder (the worker's) and the one part of it build steps write
        self.private = Path(workdir).resolve()
        self.area = self.private / AREA
        self.build_uid: int | None = None  # taken from the machine's range while in use
        self._user: BuildUser | None = None
        self.limits = StepLimits(memory=settings.limits.memory_bytes,
                                 processes=settings.limits.processes,
                                 disk=settings.limits.disk_bytes)  # as limits_of() says
        self.root = self.private / ROOT_NAME
        self.out = out
        self.log = log
        self.base = base
        self.timeout = float(timeout if timeout is not None else settings.build_timeout)
        self.cancel = cancel
        self.overlay = overlay
        self.lower: Path | None = None
        self._hold: contextlib.ExitStack | None = None
        self._extra: list[str] = list(dict.fromkeys(extra_apt_lines))
        self._depth = 0
        self._updated = False
        #: seconds spent making the root ready (for the log and the measurements)
        self.prepare_seconds = 0.0

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def tree(self) -> Path:
        """Where files of the root are written from outside: the overlay's upper layer, or
        the unpacked tree."""
        return self.upper if self.lower is not None else self.root / "tree"

    # lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> CleanEnvironment:
        if self._depth == 0:
            try:
                self._prepare()
            except BaseException:
                self._remove()
                raise
        self._depth += 1
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._remove()

    def _say(self, out: IO[str] | None, message: str) -> None:
        target = out or self.out
        if target is not None:
            note(target, self.log, message)
        elif self.log is not None:
            self.log(message)

    def _prepare(self) -> None:
        check_clean_tools()
        if not can_run(self.arch):
            raise BuildFailed(foreign_message(self.arch))
        base = self.base or create_base(self.settings, self.arch, self.out, log=self.log)
        self._remove()
        self._user = BuildUser(self.settings.build_uid)
        self.build_uid = self._user.__enter__()
        prepare_area(self.area, self.build_uid)
        self.root.mkdir(parents=True)
        self.root.chmod(0o700)
        start = time.monotonic()
        how = "unpacked"
        if self.overlay and self._start_overlay(base):
            how = "an overlay on the shared unpacked"
        else:
            unpack(base, self.root / "tree")
        self._write_files()
        self.prepare_seconds = time.monotonic() - start
        self._say(None, f"clean {self.settings.base_suite} {self.arch} root: {how} "
                        f"{base.name}, ready in {self.prepare_seconds:.1f} s")

    def _start_overlay(self, base: Path) -> bool:
        """Use an overlay on the shared unpacked base, if this machine mounts one."""
        paths = [str(self.root), str(base.parent)]
        if any(c in p for p in paths for c in ",:\\\n"):
            return False  # mount's option syntax cannot carry these
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            return False
        lower = base_tree(base)
        hold = contextlib.ExitStack()
        hold.enter_context(hold_tree(lower))
        for sub in ("upper", "work", "merged"):
            (self.root / sub).mkdir()
        self.upper.chmod(0o755)
        self.lower, self._hold = lower, hold
        probe = subprocess.run(self.wrap(["true"], Path("/")), capture_output=True, text=True,
                               env={"PATH": PATH}, timeout=60)
        if probe.returncode == 0:
            return True
        self._say(None, "overlay mounts do not work here, so the base is unpacked for each "
                        f"build: {(probe.stderr or probe.stdout).strip()[-300:]}")
        self._release()
        for sub in ("upper", "work", "merged"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        return False

    def _release(self) -> None:
        self.lower = None
        if self._hold is not None:
            self._hold.close()  # and the shared hold on the unpacked base with it
            self._hold = None

    def _write_files(self) -> None:
        """What every clean root gets on top of the base: name resolution as on this machine,
        quiet non-interactive apt, no services started, the extra sources."""
        etc = self.tree / "etc"
        (etc / "apt" / "apt.conf.d").mkdir(parents=True, exist_ok=True)
        (etc / "apt" / "sources.list.d").mkdir(parents=True, exist_ok=True)
        for name in ("resolv.conf", "hosts"):
            target = etc / name
            if target.is_symlink() or target.exists():
                target.unlink()
            try:
                target.write_bytes(Path("/etc", name).read_bytes())
            except OSError:
                target.write_text("127.0.0.1 localhost\n" if name == "hosts" else "")
        (etc / "apt" / "apt.conf.d" / "90pkgfarm").write_text(
            'APT::Install-Recommends "false";\n'
            'APT::Get::Assume-Yes "true";\n'
            'Acquire::Languages "none";\n'
            'Acquire::Retries "3";\n'
            'Dpkg::Use-Pty "0";\n'
        )
        uid = self.build_uid
        self._append("etc/passwd", f"{BUILD_USER}:x:{uid}:{uid}:pkgfarm build user:"
                                   "/nonexistent:/bin/sh\n")
        self._append("etc/group", f"{BUILD_USER}:x:{uid}:\n")
        sbin = self.tree / "usr" / "sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        policy = sbin / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        self._write_sources()

    def _append(self, rel: str, line: str) -> None:
        """Add a line to a file of the root (copied up from the base first, in an overlay)."""
        target = self.tree / rel
        if not target.exists() and self.lower is not None and (self.lower / rel).is_file():
            shutil.copy2(self.lower / rel, target)
        with open(target, "a") as fh:
            fh.write(line)

    def _write_sources(self) -> None:
        target = self.tree / "etc" / "apt" / "sources.list.d" / "pkgfarm-extra.list"
        if self._extra:
            target.write_text("".join(f"{line}\n" for line in self._extra))
        else:
            target.unlink(missing_ok=True)
        trust = self.tree / "etc" / "apt" / "apt.conf.d" / "91pkgfarm-ca"
        if self.ca_file and https_hosts(self._extra):
            # The farm's CA, copied into the root, is what its https sources are checked with.
            inside = "/etc/ssl/certs/pkgfarm-farm-ca.pem"
            (self.tree / inside.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.ca_file, self.tree / inside.lstrip("/"))
            trust.write_text("".join(
                f'{key} "{value}";\n' for key, value in
                (setting.split("=", 1) for setting in ca_settings(self._extra, inside))))
        else:
            trust.unlink(missing_ok=True)

    def _remove(self) -> None:
        self._release()
        if self._user is not None:  # the build user goes back, its processes killed first
            self._user.__exit__()
            self._user = None
        if self.root.is_symlink():
            self.root.unlink()
        elif self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():  # a read-only folder a build left: open it and try again
                subprocess.run(["chmod", "-R", "u+rwX", str(self.root)], capture_output=True)
                shutil.rmtree(self.root, ignore_errors=True)

    # apt ---------------------------------------------------------------------------------

    def extra_sources(self, lines: Sequence[str]) -> None:
        self._extra.extend(line for line in lines if line not in self._extra)
        self._updated = False
        if self.root.is_dir():
            self._write_sources()

    def _apt(self, args: Sequence[str], out: IO[str], what: str) -> None:
        env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": "/root",
               "DEBIAN_FRONTEND": "noninteractive"}
        tail: collections.deque[str] = collections.deque(maxlen=300)
        try:
            if not self._updated:
                self._run_root(["apt-get", "-q", "update"], env, out,
                               what="apt-get update (in the clean root)", tail=tail)
                failed = update_failures(list(tail))
                if failed:
                    raise BuildFailed("apt-get update (in the clean root) could not fetch "
                                      "every index: " + "; ".join(failed[-3:]))
                tail.clear()
                self._updated = True
            self._run_root(["apt-get", "-q", "-y", "--no-install-recommends", *args], env, out,
                           what=what, tail=tail)
        except BuildCancelled:
            raise
        except BuildFailed as exc:
            raise BuildFailed(f"{exc.message}: {apt_problems(tail)}") from None

    def install(self, packages: Sequence[str], out: IO[str]) -> None:
        if not packages:
            return
        self._say(out, f"installing in the clean root: {', '.join(packages)}")
        try:
            self._apt(["satisfy", *packages], out, "apt-get satisfy")
        except BuildCancelled:
            raise
        except BuildFailed as exc:
            raise BuildFailed(f"could not install the build dependencies "
                              f"{', '.join(packages)}: {exc.message}") from None

    def build_dep(self, source_dir: Path, out: IO[str], arch_indep: bool | None) -> None:
        flag = {True: ["--indep-only"], False: ["--arch-only"], None: []}[arch_indep]
        self._say(out, f"installing the build dependencies of {source_dir.name} in the clean "
                       "root")
        self._apt(["build-dep", *flag, str(Path(source_dir).resolve())], out,
                  "apt-get build-dep")

    # commands ----------------------------------------------------------------------------

    def wrap(self, argv: Sequence[str], cwd: Path, *, network: bool = True,
             uid: int | None = None) -> list[str]:
        """The command line that runs ``argv`` in ``cwd`` inside the root: as root with a
        reduced set of capabilities, or as ``uid`` with none; offline unless ``network``.

        /tmp and /dev/shm are in memory, of the size the limits give. A build step (``uid``)
        sees the root read-only: it writes only its area and an in-memory /tmp, /var/tmp and
        /dev/shm, so nothing it does lands in the root's files on the worker's disk."""
        if not self.root.is_dir():
            raise BuildFailed("the clean environment is used outside its `with` block")
        caps: list[str] = ["--cap-drop", "ALL"]
        for cap in KEPT_CAPABILITIES:
            caps += ["--cap-add", cap]
        area = str(self.area)
        prefix: list[str] = []
        top = self.tree
        if self.lower is not None:
            top = self.root / "merged"
            prefix = ["unshare", "--mount", "--propagation", "private", "--",
                      "/bin/sh", "-c", _OVERLAY_SCRIPT, "pkgfarm-mount",
                      str(self.lower), str(self.upper), str(self.root / "work"), str(top)]
        in_memory = SANDBOX_TMP if uid is not None else ("/tmp", "/dev/shm")  # noqa: S108
        memory: list[str] = []
        for folder in in_memory:
            memory += self.limits.tmpfs(folder)
        # The area's folders are made after the in-memory ones, which may cover its place.
        return [*prefix, "bwrap", "--bind", str(top), "/",
                "--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys",
                *memory, *mount_parents(self.area), "--bind", area, area,
                *(["--remount-ro", "/"] if uid is not None else []),
                "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                *([] if network else ["--unshare-net"]),
                "--die-with-parent", "--new-session",
                *caps, "--chdir", str(cwd),
                *(drop_privileges(uid) if uid is not None else []), *argv]

    def _run_root(self, argv: Sequence[str], env: dict[str, str], out: IO[str], *, what: str,
                  tail: collections.deque[str] | None = None) -> None:
        """Run a command of the environment's own (apt) as root inside the root, online."""
        run_process(self.wrap(argv, self.area), cwd=self.private, env=env,
                    timeout=self.timeout, out=out, cancel=self.cancel, what=what, tail=tail)

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float,
            out: IO[str], cancel: threading.Event | None = None, *,
            what: str = "the build script", network: bool = False) -> None:
        wrapped = self.wrap(argv, Path(cwd).resolve(), network=network, uid=self.build_uid)
        with step_limits(self.area, self.limits, self.build_uid,
                         sandboxed=True) as (prefix, watch):
            run_process([*prefix, *wrapped], cwd=self.private,
                        env=step_environment(env, self.build_uid), timeout=timeout, out=out,
                        cancel=cancel or self.cancel, what=what, watch=watch)
