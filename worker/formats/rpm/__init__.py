"""RPM on the worker: packing an .rpm with rpmbuild, and checking dnf's index lists it.

RPM has no source packages of the farm's kind: every rpm is made from a definition.
"""

from __future__ import annotations

import gzip
import re
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from common.config import Settings
from common.definition import PackageDefinition
from common.errors import BuildFailed
from common.formats.rpm import RPM
from worker.formats import BuildResult
from worker.formats.rpm import package

if TYPE_CHECKING:
    from worker.environment import BuildEnvironment

_PRIMARY_RE = re.compile(r'<data type="primary">.*?<location href="([^"]+)"', re.S)


class RpmBuilder:
    format = RPM

    def pack(self, definition: PackageDefinition, arch: str, destdir: Path, outdir: Path,
             env: dict[str, str], out: IO[str]) -> Path:
        return package.pack(definition, arch, destdir, outdir, env, out)

    def build_source(self, settings: Settings, snapshot: bytes, arch: str, workdir: Path,
                     env: BuildEnvironment, out: IO[str], cancel: threading.Event
                     ) -> BuildResult:
        raise BuildFailed("rpm has no source packages the farm builds: rpms are made from "
                          "definitions only")

    def index_lists(self, client: Any, repo: dict[str, Any], filename: str) -> bool:
        """Whether the suite's primary metadata, as repomd.xml names it, lists ``filename``."""
        root = f"/repo/rpm/{repo['suite']}/"
        m = _PRIMARY_RE.search(client.get_text(root + "repodata/repomd.xml"))
        if m is None:
            return False
        data = client.get_bytes(root + m[1])
        primary = gzip.decompress(data)
        return f'<location href="packages/{filename}"/>'.encode() in primary


RPM_BUILDER = RpmBuilder()
