"""Debian's format on the worker: packing a .deb with dpkg-deb, and building Debian source
packages (the format's own kind of source) with dpkg-buildpackage."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common import arch as archmod
from common.config import Settings
from common.definition import PackageDefinition
from common.formats.deb import DEB
from common.formats.deb.source import unpack_debian_source
from worker.formats import BuildResult
from worker.formats.deb import package, source

if TYPE_CHECKING:
    from worker.environment import BuildEnvironment


class DebBuilder:
    format = DEB

    def pack(self, definition: PackageDefinition, arch: str, destdir: Path, outdir: Path,
             env: dict[str, str], out: IO[str]) -> Path:
        return package.pack(definition, arch, destdir, outdir, env, out)

    def build_source(self, settings: Settings, snapshot: bytes, arch: str, workdir: Path,
                     env: BuildEnvironment, out: IO[str], cancel: threading.Event
                     ) -> BuildResult:
        ws = settings.worker
        src, local = unpack_debian_source(snapshot, workdir / "snapshot")
        # Fetched and unpacked by the worker, into the area the build steps will write.
        tree = source.fetch(src, env.area / "src", out, local,
                            state_dir=Path(ws.work_dir) / "apt-sources", cancel=cancel)
        return source.build_source(tree, arch, env, out, ws.build_timeout, cancel)

    def index_lists(self, client: Any, repo: dict[str, Any], filename: str) -> bool:
        arch = DEB.parse_archive_filename(filename).arch
        index_arch = arch if arch != archmod.ALL else repo["architectures"][0]
        text: str = client.get_text(f"/repo/dists/{repo['suite']}/{repo['component']}/"
                                    f"binary-{index_arch}/Packages")
        return any(line.startswith("Filename: ") and line.endswith("/" + filename)
                   for line in text.splitlines())


DEB_BUILDER = DebBuilder()
