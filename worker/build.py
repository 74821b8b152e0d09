"""Building a package definition: its script fills a staged tree, its format packs it.

The build script runs in the unpacked sources with ``$DESTDIR`` pointing at an empty tree, in a
build environment (worker.environment: this machine, confined by bubblewrap, or a clean root of
its own) that stops the script and everything it started on a time limit. The archive is then
made from the tree by the job's package format (worker.formats), never by the script.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import IO

from common import arch as archmod
from common import formats as common_formats
from common.config import NetworkPolicy
from common.definition import SNAPSHOT_SOURCES, PackageDefinition
from common.errors import BuildFailed
from worker import formats
from worker.environment import BuildEnvironment, HostEnvironment, Log
from worker.environment.processes import PATH, give_to, take_tree
from worker.formats import BuildResult


def build_definition(
    definition: PackageDefinition, arch: str, workdir: Path, out: IO[str], log: Log,
    *, timeout: float, install_deps: bool = True, sandbox: str = "none",
    cancel: threading.Event | None = None, environment: BuildEnvironment | None = None,
    fmt: str = common_formats.BUILD_HOST, network_policy: str = NetworkPolicy.ALLOW,
) -> BuildResult:
    """Build ``definition`` for ``arch`` and pack it as format ``fmt``.

    ``workdir`` holds the unpacked snapshot (``sources/`` in it). The sources are copied into
    the environment's writable area (``src/``), the script runs there as a build step with
    ``$DESTDIR`` (``destdir/``) inside the area too; then the worker takes the tree out of
    the area (refusing anything but the folder it gave) and packs it where only the worker
    writes. By default the environment is a `HostEnvironment` of ``workdir`` with
    ``install_deps`` and ``sandbox``.
    """
    if definition.architecture != archmod.ALL and not archmod.is_known(arch):
        raise BuildFailed(f"unknown architecture {arch!r}")
    if definition.build_network and network_policy == NetworkPolicy.DENY:
        raise BuildFailed("the definition asks for the network during its build "
                          "(build_network: true), which this worker refuses "
                          "(worker.build_network: deny)")
    packer = formats.get(fmt)
    if environment is None:
        environment = HostEnvironment(workdir, sandbox=sandbox, install_deps=install_deps,
                                      log=log, timeout=timeout, cancel=cancel)
    if fmt not in definition.build_formats([fmt]):
        raise BuildFailed(f"the definition is made only as {', '.join(definition.formats or ())}"
                          f", not as {fmt}")
    definition.check_format(packer.format)
    version = packer.format.full_version(definition.version, definition.release)
    with environment:
        area = environment.area
        srcdir, destdir = area / "src", area / "destdir"
        shutil.copytree(workdir / SNAPSHOT_SOURCES, srcdir, symlinks=True)
        destdir.mkdir()
        if environment.build_uid is not None:
            give_to(srcdir, environment.build_uid)
            give_to(destdir, environment.build_uid)
        env = {
            "PATH": PATH,
            "HOME": str(area / "home"),
            "TMPDIR": str(area / "tmp"),
            "LANG": "C.UTF-8",
            "DESTDIR": str(destdir),
            "PKGFARM_PACKAGE": definition.name,
            "PKGFARM_VERSION": version,
            "PKGFARM_ARCH": arch,
            # The format the archive is made in (deb, rpm, pacman): one script serves all.
            "PKGFARM_FORMAT": fmt,
            "DEB_HOST_ARCH": arch,
            # The snapshot's time (see common.definition.snapshot): unchanged input, same
            # archive.
            "SOURCE_DATE_EPOCH": str(int(definition.path.stat().st_mtime)),
        }
        environment.install(list(definition.build_depends), out)
        log(f"building {definition.name} {version} for {arch}"
            + (" (with network)" if definition.build_network else ""))
        script = area / "build.sh"
        script.write_text("set -eu\numask 022\n" + definition.build)
        script.chmod(0o644)
        environment.run(["bash", str(script)], srcdir, env, timeout, out, cancel,
                        network=definition.build_network)
        pack = environment.private / "pack"
        tree = take_tree(destdir, pack / "root", environment.build_uid)
    outdir = pack / "out"
    outdir.mkdir()
    archive = packer.pack(definition, arch, tree, outdir, env, out)
    log(f"built {archive.name} ({archive.stat().st_size} bytes)")
    return BuildResult([archive])
