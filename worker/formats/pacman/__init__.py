"""pacman's format on the worker: packing a ``.pkg.tar.zst`` as makepkg does (`package`), and
reading the served database to see whether it lists an upload."""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from common.config import Settings
from common.definition import PackageDefinition
from common.errors import BuildFailed
from common.formats.pacman import PACMAN
from worker.formats import BuildResult
from worker.formats.pacman import package

if TYPE_CHECKING:
    from worker.environment import BuildEnvironment


def db_filenames(data: bytes) -> set[str]:
    """The %FILENAME% of every entry of a pacman database (a tar, gzip-compressed or not)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    names: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith("/desc"):
                continue
            handle = tar.extractfile(member)
            lines = handle.read().decode().split("\n") if handle else []
            for i, line in enumerate(lines[:-1]):
                if line == "%FILENAME%":
                    names.add(lines[i + 1])
    return names


class PacmanBuilder:
    format = PACMAN

    def pack(self, definition: PackageDefinition, arch: str, destdir: Path, outdir: Path,
             env: dict[str, str], out: IO[str]) -> Path:
        return package.pack(definition, arch, destdir, outdir, env, out)

    def build_source(self, settings: Settings, snapshot: bytes, arch: str, workdir: Path,
                     env: BuildEnvironment, out: IO[str], cancel: threading.Event
                     ) -> BuildResult:
        raise BuildFailed("the pacman format has no source packages of its own; pacman "
                          "packages are made from definitions")

    def index_lists(self, client: Any, repo: dict[str, Any], filename: str) -> bool:
        arch = PACMAN.parse_archive_filename(filename).arch
        config = repo["formats"]["pacman"]
        index_arch = arch if arch != "all" else repo["architectures"][0]
        path = urlsplit(config["db_url"].replace("$arch", PACMAN.arch_name(index_arch))).path
        return filename in db_filenames(client.get_bytes(path))


PACMAN_BUILDER = PacmanBuilder()
