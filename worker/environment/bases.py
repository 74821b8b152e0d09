"""The base of clean roots: a tarball of ``base_suite`` made once with mmdebstrap, and the same
base unpacked once as the shared read-only lower layer of every root's overlay."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from common.arch import host_arch
from common.config import WorkerSettings
from common.errors import BuildFailed
from common.locks import LockBusy, file_lock
from worker.environment.processes import PATH, Log, note, run_process

#: What the base has besides the buildd variant (apt-utils: debconf configures packages as
#: they are installed; ca-certificates: https mirrors and masters; fakeroot: dpkg-buildpackage
#: as the unprivileged build user).
BASE_INCLUDE = ("apt-utils", "ca-certificates", "fakeroot")
#: The program qemu registers with binfmt_misc for each Debian CPU that is not the machine's.
QEMU_NAMES = {
    "amd64": "x86_64", "arm64": "aarch64", "armhf": "arm", "armel": "arm", "i386": "i386",
    "ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64el": "mips64el",
    "mipsel": "mipsel", "loong64": "loongarch64", "ppc64": "ppc64", "powerpc": "ppc",
    "sparc64": "sparc64", "alpha": "alpha", "hppa": "hppa", "m68k": "m68k", "sh4": "sh4",
}
#: Architectures a machine runs without emulation besides its own.
NATIVE_EXTRA = {"amd64": ("i386", "x32"), "arm64": ("armhf", "armel")}


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
    if info.get("include") != list(BASE_INCLUDE):
        return False  # made with other packages than this worker's bases get
    return time.time() - path.stat().st_mtime <= settings.base_max_age


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


def check_clean_tools() -> None:
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
    check_clean_tools()
    if not can_run(arch):
        raise BuildFailed(foreign_message(arch))
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f".{path.name}.lock"):
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
    note(out, log, f"making the {settings.base_suite} {arch} base with mmdebstrap from "
          f"{settings.base_mirror} (once; kept in {path.parent})")
    start = time.monotonic()
    env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": "/root",
           "TMPDIR": os.environ.get("TMPDIR", "/tmp")}  # noqa: S108 (mmdebstrap's own temp)
    try:
        run_process(argv, cwd=path.parent, env=env, timeout=3600,
                    out=out if log is None else StageRelay(out, log),  # type: ignore[arg-type]
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
    note(out, log, f"made the {settings.base_suite} {arch} base in {seconds:.1f} s "
          f"({size / 1024 / 1024:.0f} MiB compressed)")
    return path


class StageRelay:
    """mmdebstrap's output on its way to ``out``, its stage lines (``I: downloading packages
    with apt...``) also passed to ``log``: the progress of a base that takes a minute or more,
    for whoever waits on it (``worker package-add --now`` prints each as it comes)."""

    def __init__(self, out: IO[str], log: Log) -> None:
        self.out = out
        self.log = log

    def write(self, text: str) -> int:
        self.out.write(text)
        if text.startswith("I: "):
            self.log(f"base: {text[3:].strip()}")
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def foreign_message(arch: str) -> str:
    machine = host_arch()
    qemu = QEMU_NAMES.get(arch, arch)
    return (f"cannot build for {arch} in a clean environment on this {machine} machine: it "
            f"cannot run {arch} programs (no qemu-{qemu} registered with binfmt_misc; install "
            f"qemu-user-static and binfmt-support, or build {arch} on a {arch} worker)")


# -- the unpacked base: the read-only lower layer of clean roots --------------------------------


def unpack(tarball: Path, dest: Path) -> None:
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
    with file_lock(folder / ".lock"):
        if done.exists() and tree.is_dir():
            return tree
        tmp = folder / f".{version}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
        unpack(base, tmp)
        os.replace(tmp, tree)
        done.write_text(f"{base}\n")
        for other in folder.iterdir():
            if other.is_dir() and other.name != version and not other.name.startswith("."):
                _remove_if_unused(folder, other)
    return tree


def _remove_if_unused(folder: Path, tree: Path) -> None:
    try:
        with file_lock(folder / f"{tree.name}.inuse", wait=False):
            (folder / f"{tree.name}.complete").unlink(missing_ok=True)
            shutil.rmtree(tree, ignore_errors=True)
    except LockBusy:
        return  # a build still uses it; the next new version tries again
    (folder / f"{tree.name}.inuse").unlink(missing_ok=True)


def hold_tree(tree: Path) -> AbstractContextManager[None]:
    """A shared hold on an unpacked base while a root uses it (it is not removed then)."""
    return file_lock(tree.parent / f"{tree.name}.inuse", shared=True)
