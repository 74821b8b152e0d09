"""Turning a package definition into a .deb in a fresh working directory.

The build script runs in the unpacked sources with ``$DESTDIR`` pointing at an empty tree, in a
session of its own so that a time limit stops the script and everything it started. The control
file is generated here from the definition (never from the script), and dpkg-deb packs the tree
with root ownership.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from debian.deb822 import Deb822

from common import arch as archmod
from common import debian
from common.definition import SNAPSHOT_SOURCES, PackageDefinition
from common.errors import BuildCancelled, BuildFailed

Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildOutput:
    archives: list[Path]


def control_fields(definition: PackageDefinition, arch: str, installed_size_kib: int) -> Deb822:
    """The DEBIAN/control of the binary package ``definition`` makes for ``arch``."""
    control = Deb822()
    control["Package"] = definition.name
    control["Version"] = definition.full_version
    control["Architecture"] = archmod.ALL if definition.architecture == archmod.ALL else arch
    control["Maintainer"] = definition.maintainer
    control["Installed-Size"] = str(installed_size_kib)
    for field, values in (("Depends", definition.depends),
                          ("Recommends", definition.recommends),
                          ("Conflicts", definition.conflicts),
                          ("Provides", definition.provides),
                          ("Replaces", definition.replaces)):
        if values:
            control[field] = ", ".join(values)
    control["Section"] = definition.section
    control["Priority"] = definition.priority
    if definition.homepage:
        control["Homepage"] = definition.homepage
    control["Description"] = debian.format_description(definition.description)
    return control


def installed_size_kib(root: Path) -> int:
    """Installed-Size as dpkg-gencontrol counts it: each file rounded up to 1 KiB, dirs 1 KiB."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "DEBIAN"]
        total += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += (st.st_size + 1023) // 1024 if not os.path.islink(
                os.path.join(dirpath, name)) else 1
    return max(total, 1)


def _md5sums(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        lines.append(f"{digest}  {rel.as_posix()}\n")
    return "".join(lines)


def missing_packages(names: list[str] | tuple[str, ...]) -> list[str]:
    """Which of the build dependencies (bare package names) dpkg does not have installed."""
    missing = []
    for relation in names:
        name = relation.split()[0].split(":")[0]
        out = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name],
                             capture_output=True, text=True)
        if out.returncode != 0 or out.stdout.strip() != "installed":
            missing.append(name)
    return missing


def install_build_depends(definition: PackageDefinition, allowed: bool, log: Log,
                          out: IO[str]) -> None:
    missing = missing_packages(definition.build_depends)
    if not missing:
        return
    if not allowed or os.geteuid() != 0:
        raise BuildFailed(f"missing build dependencies: {', '.join(missing)} (this worker "
                          "does not install packages; install them or run as root)")
    log(f"installing build dependencies: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise BuildFailed(f"apt-get could not install the build dependencies: "
                          f"{', '.join(missing)}")


def sandboxed(argv: list[str], workdir: Path, cwd: Path, sandbox: str) -> list[str]:
    """Wrap ``argv`` (to run in ``cwd``) so that it can write only inside ``workdir``.

    With bubblewrap the whole system is mounted read-only, /tmp is private, ``workdir`` is the
    one writable place, and the script runs in its own PID namespace that dies with bwrap, so
    killing bwrap stops everything the script started.
    """
    if sandbox == "none":
        return argv
    if shutil.which("bwrap") is None:
        raise BuildFailed("worker.sandbox is bwrap but bubblewrap is not installed "
                          "(apt-get install bubblewrap, or set worker.sandbox: none)")
    private_tmp = "/tmp"  # noqa: S108 (a fresh tmpfs inside the sandbox, not the host's /tmp)
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", private_tmp, "--bind", str(workdir), str(workdir),
            "--unshare-pid", "--die-with-parent", "--new-session",
            "--chdir", str(cwd), *argv]


def run_script(script: str, cwd: Path, env: dict[str, str], timeout: float, out: IO[str],
               *, sandbox: str = "none", cancel: threading.Event | None = None) -> None:
    """Run the build script with bash -e in its own session; kill the whole group on timeout.

    ``cancel`` stops the build from another thread (the attempt was taken away).
    """
    workdir = cwd.parent
    script_path = workdir / "build.sh"
    script_path.write_text("set -eu\numask 022\n" + script)
    argv = sandboxed(["bash", str(script_path)], workdir, cwd, sandbox)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    _kill_group(proc)
                    raise BuildCancelled("the build was stopped: this attempt is no longer "
                                         "this worker's") from None
                if time.monotonic() > deadline:
                    _kill_group(proc)
                    raise BuildFailed(f"the build script ran longer than its limit of "
                                      f"{timeout:.0f} s and was stopped") from None
    except BaseException:
        _kill_group(proc)
        raise
    if code != 0:
        hint = ""
        if sandbox != "none":
            hint = " (it may write only inside its own folder and $DESTDIR)"
        raise BuildFailed(f"the build script failed with exit status {code}{hint}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
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


def build_definition(
    definition: PackageDefinition, arch: str, workdir: Path, out: IO[str], log: Log,
    *, timeout: float, install_deps: bool = True, sandbox: str = "none",
    cancel: threading.Event | None = None,
) -> BuildOutput:
    """Build ``definition`` for ``arch`` inside ``workdir`` (which holds the unpacked snapshot).

    ``workdir`` must contain ``sources/`` (the build's working directory); the package tree is
    made in ``workdir/root`` and the archive in ``workdir/out``.
    """
    if definition.architecture != archmod.ALL and not archmod.is_known(arch):
        raise BuildFailed(f"unknown architecture {arch!r}")
    srcdir = workdir / SNAPSHOT_SOURCES
    srcdir.mkdir(parents=True, exist_ok=True)
    destdir = workdir / "root"
    destdir.mkdir()
    outdir = workdir / "out"
    outdir.mkdir()
    install_build_depends(definition, install_deps, log, out)

    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "DESTDIR": str(destdir),
        "PKGFARM_PACKAGE": definition.name,
        "PKGFARM_VERSION": definition.full_version,
        "PKGFARM_ARCH": arch,
        "DEB_HOST_ARCH": arch,
        # The snapshot's time (see common.definition.snapshot): unchanged input, same archive.
        "SOURCE_DATE_EPOCH": str(int(definition.path.stat().st_mtime)),
    }
    log(f"building {definition.name} {definition.full_version} for {arch}")
    out.flush()
    run_script(definition.build, srcdir, env, timeout, out, sandbox=sandbox, cancel=cancel)

    if (destdir / "DEBIAN").exists():
        raise BuildFailed("the build script must not write $DESTDIR/DEBIAN; pkgfarm makes it")
    debian_dir = destdir / "DEBIAN"
    debian_dir.mkdir()
    # dpkg-deb insists on 0755 for the control folder, whatever the worker's umask is.
    debian_dir.chmod(0o755)
    destdir.chmod(0o755)
    control = control_fields(definition, arch, installed_size_kib(destdir))
    (debian_dir / "control").write_text(control.dump())
    md5sums = _md5sums(destdir)
    if md5sums:
        (debian_dir / "md5sums").write_text(md5sums)
    filename = debian.deb_filename(definition.name, definition.full_version,
                                   control["Architecture"])
    archive = outdir / filename
    out.flush()
    result = subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(destdir), str(archive)],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )
    if result.returncode != 0:
        raise BuildFailed(f"dpkg-deb could not pack the package (exit status {result.returncode})")
    log(f"built {filename} ({archive.stat().st_size} bytes)")
    return BuildOutput([archive])
