"""Turning a package definition into a .deb in a fresh working directory.

The build script runs in the unpacked sources with ``$DESTDIR`` pointing at an empty tree, in a
build environment (worker/environment.py: this machine, confined by bubblewrap, or a clean root
of its own) that stops the script and everything it started on a time limit. The control file
is generated here from the definition (never from the script), and dpkg-deb packs the tree with
root ownership. `BuildResult` is also what worker/debsource.py returns for Debian sources.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from debian.deb822 import Deb822

from common import arch as archmod
from common import debian
from common.definition import SNAPSHOT_SOURCES, PackageDefinition
from common.errors import BuildFailed
from worker.environment import BuildEnvironment, HostEnvironment, Log


@dataclass(frozen=True)
class BuildResult:
    """What a build made: its archives, and for a Debian source its .buildinfo and .changes."""

    archives: list[Path]
    buildinfo: Path | None = None
    changes: Path | None = None


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


def build_definition(
    definition: PackageDefinition, arch: str, workdir: Path, out: IO[str], log: Log,
    *, timeout: float, install_deps: bool = True, sandbox: str = "none",
    cancel: threading.Event | None = None, environment: BuildEnvironment | None = None,
) -> BuildResult:
    """Build ``definition`` for ``arch`` inside ``workdir`` (which holds the unpacked snapshot).

    ``workdir`` must contain ``sources/`` (the build's working directory); the package tree is
    made in ``workdir/root`` and the archive in ``workdir/out``. The build dependencies are
    installed and the script run in ``environment`` (its folder must hold ``workdir``); by
    default a `HostEnvironment` of ``workdir`` with ``install_deps`` and ``sandbox``, as before
    clean environments. The archive is packed here with dpkg-deb either way.
    """
    if definition.architecture != archmod.ALL and not archmod.is_known(arch):
        raise BuildFailed(f"unknown architecture {arch!r}")
    srcdir = workdir / SNAPSHOT_SOURCES
    srcdir.mkdir(parents=True, exist_ok=True)
    destdir = workdir / "root"
    destdir.mkdir()
    outdir = workdir / "out"
    outdir.mkdir()
    if environment is None:
        environment = HostEnvironment(workdir, sandbox=sandbox, install_deps=install_deps,
                                      log=log, timeout=timeout, cancel=cancel)

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
    with environment:
        environment.install(list(definition.build_depends), out)
        log(f"building {definition.name} {definition.full_version} for {arch}")
        script_path = workdir / "build.sh"
        script_path.write_text("set -eu\numask 022\n" + definition.build)
        environment.run(["bash", str(script_path)], srcdir, env, timeout, out, cancel)

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
    return BuildResult([archive])
