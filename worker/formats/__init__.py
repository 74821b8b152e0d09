"""The package-format seam on the worker's side: packing a staged tree into an archive, and
building a format's own kind of source.

The worker task, the build of a definition and the CLI ask `get` for a format by name and use
only the `ArchiveBuilder` interface; docs/FORMATS.md says how to add a format.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from common import formats as common_formats
from common.formats import PackageFormat

if TYPE_CHECKING:
    from common.config import Settings
    from common.definition import PackageDefinition
    from worker.environment import BuildEnvironment


@dataclass(frozen=True)
class BuildResult:
    """What a build made: the archives to publish, and by-products that are uploaded with them
    and kept with the build, never published (a Debian source's .buildinfo)."""

    archives: list[Path]
    by_products: tuple[Path, ...] = ()


class ArchiveBuilder(Protocol):
    @property
    def format(self) -> PackageFormat:
        """The shared half of the format (names, versions, architectures)."""

    def pack(self, definition: PackageDefinition, arch: str, destdir: Path, outdir: Path,
             env: dict[str, str], out: IO[str]) -> Path:
        """The archive of the staged tree ``destdir`` (made by the definition's build script
        for farm arch ``arch``), written into ``outdir``."""

    def build_source(self, settings: Settings, snapshot: bytes, arch: str, workdir: Path,
                     env: BuildEnvironment, out: IO[str], cancel: threading.Event
                     ) -> BuildResult:
        """Fetch and build the format's own kind of source a snapshot names (a Debian source);
        BuildFailed for a format that has none."""

    def index_lists(self, client: Any, repo: dict[str, Any], filename: str) -> bool:
        """Whether the repository's public index lists ``filename`` (``repo`` as the master's
        health answer describes it)."""


def _registry() -> dict[str, ArchiveBuilder]:
    from worker.formats.deb import DEB_BUILDER
    from worker.formats.pacman import PACMAN_BUILDER
    from worker.formats.rpm import RPM_BUILDER

    return {DEB_BUILDER.format.name: DEB_BUILDER, RPM_BUILDER.format.name: RPM_BUILDER,
            PACMAN_BUILDER.format.name: PACMAN_BUILDER}


FORMATS: dict[str, ArchiveBuilder] = _registry()


def get(name: str) -> ArchiveBuilder:
    common_formats.get(name)  # the error for an unknown name
    return FORMATS[name]
