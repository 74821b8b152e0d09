"""Where a build runs: on this machine (`HostEnvironment`) or in a fresh root (`CleanEnvironment`).

Both are used per build as context managers and offer the same four things: add apt sources,
install packages (by name or relation), install an unpacked Debian source's build
dependencies, and run a command with a time limit that stops everything it started.

`HostEnvironment` is the farm's first way: packages are installed on this machine with apt-get
(as root), and commands run confined by bubblewrap (the system read-only, only the build's
folder writable) when the worker's sandbox is ``bwrap``.

`CleanEnvironment` is the default: each build gets a root of its own, unpacked from a cached
base tarball of ``base_suite`` (``mmdebstrap --variant=buildd``, made on first use under a file
lock, made again when older than ``base_max_age``), with the build's folder bound inside it at
the same path and the machine's network shared. Commands run in it as root under bubblewrap, in
their own PID namespace, with Docker's default capability set; packages are installed inside
it. The root is deleted when the build ends, so the machine is left as it was and no build sees
what another installed.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from common.aptsources import update_failures
from common.config import WorkerSettings, host_arch
from common.errors import BuildCancelled, BuildFailed

Log = Callable[[str], None]

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The folder, inside the build's work folder, that holds a clean build's root.
ROOT_NAME = ".pkgfarm-root"
#: What the base has besides the buildd variant (apt-utils: debconf configures packages as
#: they are installed; ca-certificates: https mirrors and masters).
BASE_INCLUDE = ("apt-utils", "ca-certificates")
#: Docker's default capability set: enough for apt, dpkg and builds as root in the root; not
#: enough to mount, load modules, trace other processes or reach the machine's devices.
KEPT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)
#: The program qemu registers with binfmt_misc for each Debian CPU that is not the machine's.
QEMU_NAMES = {
    "amd64": "x86_64", "arm64": "aarch64", "armhf": "arm", "armel": "arm", "i386": "i386",
    "ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64el": "mips64el",
    "mipsel": "mipsel", "loong64": "loongarch64", "ppc64": "ppc64", "powerpc": "ppc",
    "sparc64": "sparc64", "alpha": "alpha", "hppa": "hppa", "m68k": "m68k", "sh4": "sh4",
}
#: Architectures a machine runs without emulation besides its own.
NATIVE_EXTRA = {"amd64": ("i386", "x32"), "arm64": ("armhf", "armel")}


class BuildEnvironment(Protocol):
    """One build's environment; enter it before use, leave it when the build is over."""

    #: the Debian architecture of what runs inside (the machine's, or an emulated one)
    arch: str

    def __enter__(self) -> BuildEnvironment: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def extra_sources(self, lines: Sequence[str]) -> None:
        """Add one-line apt sources (``deb [trusted=yes] http://MASTER/repo stable main``);
        apt reads them before the next installation."""

    def install(self, packages: Sequence[str], out: IO[str]) -> None:
        """Install packages given by name or relation; BuildFailed names what is missing."""

    def build_dep(self, source_dir: Path, out: IO[str], arch_indep: bool | None) -> None:
        """Install what building the unpacked Debian source needs: with -A
        (``arch_indep=True``), -B (False) or -b (None)."""

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float,
            out: IO[str], cancel: threading.Event | None = None, *,
            what: str = "the build script") -> None:
        """Run ``argv`` in ``cwd``; BuildFailed on a non-zero exit or the time limit,
        BuildCancelled when ``cancel`` is set; everything it started is stopped."""


# -- running a process tree --------------------------------------------------------------------


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


def _note(out: IO[str], log: Log | None, message: str) -> None:
    if log is not None:
        log(message)
    else:
        out.write(f"pkgfarm: {message}\n")
        out.flush()


def _apt_problems(tail: Sequence[str]) -> str:
    """apt's own complaint, from the last lines it printed."""
    lines = [ln.strip() for ln in tail
             if ln.startswith(("E:", "Err:")) or "but it is not" in ln
             or "but it is a virtual" in ln or ln.strip().startswith("Depends:")]
    return "; ".join(dict.fromkeys(lines)) or "see the log"


def https_hosts(lines: Sequence[str]) -> list[str]:
    """The host names of the ``https://`` sources among one-line apt entries."""
    hosts = []
    for line in lines:
        for word in line.split():
            if word.startswith("https://"):
                host = urllib.parse.urlsplit(word).hostname
                if host and host not in hosts:
                    hosts.append(host)
    return hosts


def ca_settings(lines: Sequence[str], ca_file: str) -> list[str]:
    """apt settings that make the ``https://`` sources among ``lines`` (the farm's own
    repository) trusted through ``ca_file`` alone, host by host; other sources keep the
    system's CAs."""
    return [f"Acquire::https::{host}::CaInfo={ca_file}" for host in https_hosts(lines)]


def relation_name(relation: str) -> str:
    """The package a relation's first alternative names (no version, arch or profile)."""
    return relation.split("|")[0].strip().split()[0].split(":")[0].split("(")[0]


# -- on this machine ---------------------------------------------------------------------------


def sandboxed(argv: Sequence[str], workdir: Path, cwd: Path, sandbox: str) -> list[str]:
    """Wrap ``argv`` (to run in ``cwd``) so that it can write only inside ``workdir``.

    With bubblewrap the whole system is mounted read-only, /tmp is private, ``workdir`` is the
    one writable place, and the command runs in its own PID namespace that dies with bwrap, so
    killing bwrap stops everything it started.
    """
    if sandbox == "none":
        return list(argv)
    if shutil.which("bwrap") is None:
        raise BuildFailed("worker.sandbox is bwrap but bubblewrap is not installed "
                          "(apt-get install bubblewrap, or set worker.sandbox: none)")
    private_tmp = "/tmp"  # noqa: S108 (a fresh tmpfs inside the sandbox, not the host's /tmp)
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", private_tmp, "--bind", str(workdir), str(workdir),
            "--unshare-pid", "--die-with-parent", "--new-session",
            "--chdir", str(cwd), *argv]


def missing_packages(names: Sequence[str]) -> list[str]:
    """Which of the packages (names or relations: the first alternative's name counts) dpkg
    does not have installed on this machine."""
    missing = []
    for relation in names:
        name = relation_name(relation)
        out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name],
                             capture_output=True, text=True)
        if out.returncode != 0 or out.stdout.strip() != "installed":
            missing.append(name)
    return missing


class HostEnvironment:
    """Builds on this machine: packages installed here with apt-get, commands confined by
    ``sandbox`` (``bwrap``: read-only system, only ``workdir`` writable; ``none``)."""

    def __init__(self, workdir: Path, *, sandbox: str = "none", install_deps: bool = True,
                 extra_apt_lines: Sequence[str] = (), log: Log | None = None,
                 timeout: float = 3600, cancel: threading.Event | None = None,
                 ca_file: str | None = None) -> None:
        self.workdir = Path(workdir)
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
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    # apt ---------------------------------------------------------------------------------

    def extra_sources(self, lines: Sequence[str]) -> None:
        self._extra.extend(line for line in lines if line not in self._extra)
        self._updated = False

    def _apt_options(self) -> list[str]:
        """With extra sources: apt reads a copy of the machine's source parts plus them (the
        machine's apt configuration stays as it is)."""
        if not self._extra:
            return []
        parts = self.workdir / ".apt-sources.d"
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
            run_process(["apt-get", "-q", *options, "update"], cwd=self.workdir, env=env,
                        timeout=self.timeout, out=out, cancel=self.cancel,
                        what="apt-get update", tail=tail)
            self._updated = True
        try:
            run_process(["apt-get", "-q", "-y", "--no-install-recommends", *options, *args],
                        cwd=self.workdir, env=env, timeout=self.timeout, out=out,
                        cancel=self.cancel, what=what, tail=tail)
        except BuildCancelled:
            raise
        except BuildFailed as exc:
            raise BuildFailed(f"{exc.message}: {_apt_problems(tail)}") from None

    def _may_install(self) -> bool:
        return self.install_deps and os.geteuid() == 0

    def install(self, packages: Sequence[str], out: IO[str]) -> None:
        missing = missing_packages(list(packages))
        if not missing:
            return
        if not self._may_install():
            raise BuildFailed(f"missing build dependencies: {', '.join(missing)} (this worker "
                              "does not install packages; install them or run as root)")
        _note(out, self.log, f"installing build dependencies: {' '.join(missing)}")
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
            _note(out, self.log, f"installing the build dependencies of {source_dir.name}")
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
            what: str = "the build script") -> None:
        hint = ""
        if self.sandbox != "none":
            hint = " (it may write only inside its own folder and $DESTDIR)"
        run_process(sandboxed(argv, self.workdir, cwd, self.sandbox), cwd=cwd, env=env,
                    timeout=timeout, out=out, cancel=cancel or self.cancel, what=what,
                    hint=hint)


# -- the base of clean roots -------------------------------------------------------------------


def bases_dir(settings: WorkerSettings) -> Path:
    return Path(settings.base_dir or os.path.join(settings.work_dir, "bases"))


def base_path(settings: WorkerSettings, arch: str) -> Path:
    """Where the base tarball of ``settings.base_suite`` for ``arch`` is kept."""
    return bases_dir(settings) / f"{settings.base_suite}-{arch}.tar.zst"


def base_meta_path(settings: WorkerSettings, arch: str) -> Path:
    """Where what was recorded when the base was made is kept."""
    return bases_dir(settings) / f"{settings.base_suite}-{arch}.json"


def base_info(settings: WorkerSettings, arch: str) -> dict[str, object] | None:
    """What was recorded when the base was made (mirror, suite, seconds, bytes), or None."""
    meta = base_meta_path(settings, arch)
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def base_is_fresh(settings: WorkerSettings, arch: str) -> bool:
    path = base_path(settings, arch)
    info = base_info(settings, arch)
    if not path.is_file() or info is None:
        return False
    if info.get("mirror") != settings.base_mirror or info.get("suite") != settings.base_suite:
        return False
    return time.time() - path.stat().st_mtime <= settings.base_max_age


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def can_run(arch: str) -> bool:
    """Whether this machine runs ``arch`` programs: its own, a native companion (i386 on
    amd64), or one qemu is registered for with binfmt_misc."""
    machine = host_arch()
    if arch in (machine, *NATIVE_EXTRA.get(machine, ())):
        return True
    qemu = QEMU_NAMES.get(arch)
    if qemu is None:
        return False
    entry = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{qemu}"
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def _check_clean_tools() -> None:
    if os.geteuid() != 0:
        raise BuildFailed("worker.environment is clean, which needs the worker to run as root "
                          "(or set worker.environment: host)")
    for tool, package in (("bwrap", "bubblewrap"), ("mmdebstrap", "mmdebstrap"),
                          ("zstd", "zstd")):
        if shutil.which(tool) is None:
            raise BuildFailed(f"worker.environment is clean but {tool} is not installed "
                              f"(apt-get install {package})")


def create_base(settings: WorkerSettings, arch: str, out: IO[str] | None = None, *,
                force: bool = False, log: Log | None = None) -> Path:
    """The base tarball for ``arch``: made (or made again when ``force``, stale, or made from
    another mirror or suite) with mmdebstrap under a lock several workers share, else kept.

    Making it is recorded beside it (``SUITE-ARCH.json``: seconds taken, bytes) and noted in
    ``out``. The new tarball replaces the old one atomically; builds unpacking the old one
    keep reading it.
    """
    path = base_path(settings, arch)
    if not force and base_is_fresh(settings, arch):
        return path
    _check_clean_tools()
    if not can_run(arch):
        raise BuildFailed(_foreign_message(arch))
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / f".{path.name}.lock"):
        if not force and base_is_fresh(settings, arch):
            return path  # another worker made it while this one waited
        log_file = None
        if out is None:
            log_file = open(folder / f"{settings.base_suite}-{arch}.log", "w")  # noqa: SIM115
            out = log_file
        try:
            return _make_base(settings, arch, path, out, log)
        finally:
            if log_file is not None:
                log_file.close()


def refresh_base(settings: WorkerSettings, arch: str, out: IO[str] | None = None) -> Path:
    """Make the base for ``arch`` again now, whatever its age."""
    return create_base(settings, arch, out, force=True)


def _make_base(settings: WorkerSettings, arch: str, path: Path, out: IO[str],
               log: Log | None) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tar.zst")
    tmp.unlink(missing_ok=True)
    mode = "root" if os.geteuid() == 0 else "unshare"
    argv = ["mmdebstrap", "--variant=buildd", f"--mode={mode}", f"--architectures={arch}",
            f"--include={','.join(BASE_INCLUDE)}",
            # Keep the package lists: a build's apt-get update then fetches only what changed.
            "--skip=cleanup/apt/lists",
            "--aptopt=Acquire::Languages \"none\"",
            "--dpkgopt=force-unsafe-io",
            settings.base_suite, str(tmp), settings.base_mirror]
    _note(out, log, f"making the {settings.base_suite} {arch} base with mmdebstrap from "
          f"{settings.base_mirror} (once; kept in {path.parent})")
    start = time.monotonic()
    env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": "/root",
           "TMPDIR": os.environ.get("TMPDIR", "/tmp")}  # noqa: S108 (mmdebstrap's own temp)
    try:
        run_process(argv, cwd=path.parent, env=env, timeout=3600, out=out,
                    what="mmdebstrap (making the clean base)")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.monotonic() - start
    size = tmp.stat().st_size
    info = {"suite": settings.base_suite, "mirror": settings.base_mirror, "arch": arch,
            "created": time.time(), "seconds": round(seconds, 1), "bytes": size,
            "include": list(BASE_INCLUDE)}
    os.replace(tmp, path)
    base_meta_path(settings, arch).write_text(json.dumps(info, indent=1) + "\n")
    _note(out, log, f"made the {settings.base_suite} {arch} base in {seconds:.1f} s "
          f"({size / 1024 / 1024:.0f} MiB compressed)")
    return path


def _foreign_message(arch: str) -> str:
    machine = host_arch()
    qemu = QEMU_NAMES.get(arch, arch)
    return (f"cannot build for {arch} in a clean environment on this {machine} machine: it "
            f"cannot run {arch} programs (no qemu-{qemu} registered with binfmt_misc; install "
            f"qemu-user-static and binfmt-support, or build {arch} on a {arch} worker)")


# -- the unpacked base: the read-only lower layer of clean roots --------------------------------


def _unpack(tarball: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    result = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-f", str(tarball),
                             "-C", str(dest)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildFailed(f"the clean root could not be unpacked from {tarball}: "
                          f"{result.stderr.strip()[-500:]}")
    dest.chmod(0o755)


def base_tree(base: Path) -> Path:
    """The base tarball unpacked once, beside it, as the shared read-only lower layer of clean
    roots: ``SUITE-ARCH.trees/<version>``, one folder per version of the tarball.

    Users hold a shared lock on ``<version>.inuse``; a version nobody holds is deleted once a
    newer one exists.
    """
    folder = base.parent / (base.name.split(".tar")[0] + ".trees")
    version = str(base.stat().st_mtime_ns)
    tree = folder / version
    done = folder / f"{version}.complete"
    if done.exists() and tree.is_dir():
        return tree
    with _file_lock(folder / ".lock"):
        if done.exists() and tree.is_dir():
            return tree
        tmp = folder / f".{version}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
        _unpack(base, tmp)
        os.replace(tmp, tree)
        done.write_text(f"{base}\n")
        for other in folder.iterdir():
            if other.is_dir() and other.name != version and not other.name.startswith("."):
                _remove_if_unused(folder, other)
    return tree


def _remove_if_unused(folder: Path, tree: Path) -> None:
    with open(folder / f"{tree.name}.inuse", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a build still uses it; the next new version tries again
        (folder / f"{tree.name}.complete").unlink(missing_ok=True)
        shutil.rmtree(tree, ignore_errors=True)
    (folder / f"{tree.name}.inuse").unlink(missing_ok=True)


# -- a clean root per build --------------------------------------------------------------------

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
        self.workdir = Path(workdir).resolve()
        self.root = self.workdir / ROOT_NAME
        self.out = out
        self.log = log
        self.base = base
        self.timeout = float(timeout if timeout is not None else settings.build_timeout)
        self.cancel = cancel
        self.overlay = overlay
        self.lower: Path | None = None
        self._inuse: IO[str] | None = None
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
            _note(target, self.log, message)
        elif self.log is not None:
            self.log(message)

    def _prepare(self) -> None:
        _check_clean_tools()
        if not can_run(self.arch):
            raise BuildFailed(_foreign_message(self.arch))
        base = self.base or create_base(self.settings, self.arch, self.out, log=self.log)
        self._remove()
        self.root.mkdir(parents=True)
        start = time.monotonic()
        how = "unpacked"
        if self.overlay and self._start_overlay(base):
            how = "an overlay on the shared unpacked"
        else:
            _unpack(base, self.root / "tree")
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
        inuse = open(lower.parent / f"{lower.name}.inuse", "a")  # noqa: SIM115 (held open)
        fcntl.flock(inuse, fcntl.LOCK_SH)
        for sub in ("upper", "work", "merged"):
            (self.root / sub).mkdir()
        self.upper.chmod(0o755)
        self.lower, self._inuse = lower, inuse
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
        if self._inuse is not None:
            self._inuse.close()  # and its shared lock with it
            self._inuse = None

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
        sbin = self.tree / "usr" / "sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        policy = sbin / "policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        self._write_sources()

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
                self.run(["apt-get", "-q", "update"], self.workdir, env, self.timeout, out,
                         what="apt-get update (in the clean root)", _tail=tail)
                failed = update_failures(list(tail))
                if failed:
                    raise BuildFailed("apt-get update (in the clean root) could not fetch "
                                      "every index: " + "; ".join(failed[-3:]))
                tail.clear()
                self._updated = True
            self.run(["apt-get", "-q", "-y", "--no-install-recommends", *args], self.workdir,
                     env, self.timeout, out, what=what, _tail=tail)
        except BuildCancelled:
            raise
        except BuildFailed as exc:
            raise BuildFailed(f"{exc.message}: {_apt_problems(tail)}") from None

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

    def wrap(self, argv: Sequence[str], cwd: Path) -> list[str]:
        """The command line that runs ``argv`` in ``cwd`` inside the root."""
        if not self.root.is_dir():
            raise BuildFailed("the clean environment is used outside its `with` block")
        caps: list[str] = ["--cap-drop", "ALL"]
        for cap in KEPT_CAPABILITIES:
            caps += ["--cap-add", cap]
        work = str(self.workdir)
        private_tmp = "/tmp"  # noqa: S108 (a fresh tmpfs inside the root)
        private_shm = "/dev/shm"  # noqa: S108 (the same)
        prefix: list[str] = []
        top = self.tree
        if self.lower is not None:
            top = self.root / "merged"
            prefix = ["unshare", "--mount", "--propagation", "private", "--",
                      "/bin/sh", "-c", _OVERLAY_SCRIPT, "pkgfarm-mount",
                      str(self.lower), str(self.upper), str(self.root / "work"), str(top)]
        return [*prefix, "bwrap", "--bind", str(top), "/",
                "--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys",
                "--perms", "1777", "--tmpfs", private_tmp,
                "--perms", "1777", "--tmpfs", private_shm,
                "--bind", work, work,
                "--tmpfs", str(self.root),  # the root, seen through the bound folder: hidden
                "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session",
                *caps, "--chdir", str(cwd), *argv]

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float,
            out: IO[str], cancel: threading.Event | None = None, *,
            what: str = "the build script",
            _tail: collections.deque[str] | None = None) -> None:
        run_process(self.wrap(argv, Path(cwd).resolve()), cwd=self.workdir, env=env,
                    timeout=timeout, out=out, cancel=cancel or self.cancel, what=what,
                    tail=_tail)


def environment_for(settings: WorkerSettings, arch: str, workdir: Path,
                    extra_apt_lines: Sequence[str] = (), *, out: IO[str] | None = None,
                    log: Log | None = None, cancel: threading.Event | None = None,
                    label_only: bool = False) -> BuildEnvironment:
    """The environment ``settings.environment`` asks for, to build for ``arch`` in ``workdir``.

    ``all`` builds on the machine's architecture. In clean mode an architecture the machine
    cannot run raises BuildFailed, unless ``label_only`` (a YAML definition, whose architecture
    is only a label): then a root of the machine's architecture stands in, as host mode does.
    """
    if settings.environment == "host":
        return HostEnvironment(workdir, sandbox=settings.sandbox,
                               install_deps=settings.install_build_depends,
                               extra_apt_lines=extra_apt_lines, log=log,
                               timeout=settings.build_timeout, cancel=cancel,
                               ca_file=settings.ca_file)
    target = host_arch() if arch == "all" else arch
    if not can_run(target):
        if not label_only:
            raise BuildFailed(_foreign_message(target))
        target = host_arch()
    return CleanEnvironment(settings, target, workdir, extra_apt_lines, out=out, log=log,
                            cancel=cancel)
