"""Building a package definition: its script fills a staged tree, its format packs it.

The build script runs in the unpacked sources with ``$DESTDIR`` pointing at an empty tree, in a
build environment (worker.environment: this machine, confined by bubblewrap, or a clean root of
its own) that stops the script and everything it started on a time limit. The archive is then
made from the tree by the job's package format (worker.formats), never by the script.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO

from common import arch as archmod
from common import formats as common_formats
from common.definition import SNAPSHOT_SOURCES, PackageDefinition
from common.errors import BuildFailed
from worker import formats
from worker.environment import BuildEnvironment, HostEnvironment, Log
from worker.environment.processes import PATH
from worker.formats import BuildResult


def build_definition(
    definition: PackageDefinition, arch: str, workdir: Path, out: IO[str], log: Log,
    *, timeout: float, install_deps: bool = True, sandbox: str = "none",
    cancel: threading.Event | None = None, environment: BuildEnvironment | None = None,
    fmt: str = common_formats.BUILD_HOST,
) -> BuildResult:
    """Build ``definition`` for ``arch`` inside ``workdir`` (which holds the unpacked snapshot)
    and pack it as format ``fmt``.

    ``workdir`` must contain ``sources/`` (the build's working directory); the package tree is
    made in ``workdir/root`` and the archive in ``workdir/out``. The build dependencies are
    installed and the script run in ``environment`` (its folder must hold ``workdir``); by
    default a `HostEnvironment` of ``workdir`` with ``install_deps`` and ``sandbox``.
    """
    if definition.architecture != archmod.ALL and not archmod.is_known(arch):
        raise BuildFailed(f"unknown architecture {arch!r}")
    packer = formats.get(fmt)
    srcdir = workdir / SNAPSHOT_SOURCES
    srcdir.mkdir(parents=True, exist_ok=True)
    destdir = workdir / "root"
    destdir.mkdir()
    outdir = workdir / "out"
    outdir.mkdir()
    if environment is None:
        environment = HostEnvironment(workdir, sandbox=sandbox, install_deps=install_deps,
                                      log=log, timeout=timeout, cancel=cancel)
    version = common_formats.build_host().full_version(definition.version, definition.release)
    env = {
        "PATH": PATH,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "DESTDIR": str(destdir),
        "PKGFARM_PACKAGE": definition.name,
        "PKGFARM_VERSION": version,
        "PKGFARM_ARCH": arch,
        "DEB_HOST_ARCH": arch,
        # The snapshot's time (see common.definition.snapshot): unchanged input, same archive.
        "SOURCE_DATE_EPOCH": str(int(definition.path.stat().st_mtime)),
    }
    with environment:
        environment.install(list(definition.build_depends), out)
        log(f"building {definition.name} {version} for {arch}")
        script_path = workdir / "build.sh"
        script_path.write_text("set -eu\numask 022\n" + definition.build)
        environment.run(["bash", str(script_path)], srcdir, env, timeout, out, cancel)
    archive = packer.pack(definition, arch, destdir, outdir, env, out)
    log(f"built {archive.name} ({archive.stat().st_size} bytes)")
    return BuildResult([archive])
