"""The package-format seam on the master's side: checking archives and keeping repositories.

A `RepositoryFormat` reads and checks an uploaded archive of its format, says where it goes in
the pool and what its index entry is, decides which records an index lists, writes (and signs)
the whole index of its format, and tells clients how to use the repository. Everything else on
the master (API, store, scheduler, repository, CLI) speaks only this interface and asks `get`
for a format by name. docs/FORMATS.md describes how to add one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from common import formats as common_formats
from common.formats import PackageFormat

if TYPE_CHECKING:
    from common.config import Settings
    from master.signing import Signer
    from master.storage import Storage
    from master.store import IndexKey, PackageRecord, Store


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha1: str
    sha256: str


@dataclass(frozen=True)
class ArchiveInfo:
    """What an accepted archive holds, as its format read and checked it."""

    name: str
    version: str
    #: the farm's architecture name (``all`` for arch-independent)
    arch: str
    #: the source package it was built from (pool layout, build checks)
    source: str
    #: its metadata, parsed and checked: only fields the format allows, in its order
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class IndexContext:
    """What a format's index writer works with."""

    settings: Settings
    store: Store
    storage: Storage
    signer: Signer | None

    def groups_to_render(self, fmt: str, dirty: set[IndexKey], full: bool
                         ) -> dict[IndexKey, list[PackageRecord]]:
        """The store groups of format ``fmt`` an index update renders (the dirty ones, or
        every group of every suite and component when ``full``), each with its records (none
        for a group that was emptied)."""
        from master.store import GROUPS, IndexKey

        repo = self.settings.repository
        keys = ({IndexKey(fmt, suite, comp, grp) for suite in repo.all_suites
                 for comp in repo.all_components for grp in range(GROUPS)} if full
                else {k for k in dirty if k.format == fmt})
        groups: dict[IndexKey, list[PackageRecord]] = {key: [] for key in keys}
        if keys:
            for rec in self.store.packages.in_groups(keys):
                groups[IndexKey(rec.format, rec.suite, rec.component, rec.grp)].append(rec)
        return groups


class RepositoryFormat(Protocol):
    @property
    def format(self) -> PackageFormat:
        """The shared half of the format (names, versions, architectures)."""

    def is_auxiliary(self, filename: str) -> bool:
        """Whether ``filename`` is a by-product kept with the build, never published (a
        Debian .buildinfo); the archive file names of the format are not."""

    def inspect(self, path: Path) -> ArchiveInfo:
        """Read and check an uploaded archive: its integrity and its metadata (Unprocessable,
        with the reason, for anything the format's own tools or rules would refuse)."""

    def pool_path(self, info: ArchiveInfo, component: str) -> str:
        """The storage key the archive is published at."""

    def index_entry(self, info: ArchiveInfo, pool_path: str, digests: Digests) -> str:
        """The archive's entry in the index, computed once when it is accepted."""

    def indexed(self, records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
        """Which of one suite's records the index of farm architecture ``arch`` lists."""

    def write_index(self, ctx: IndexContext, dirty: set[IndexKey], full: bool) -> None:
        """Write the format's index for the groups ``dirty`` (every group when ``full``),
        signed when ``ctx.signer`` is set. The caller holds the index lock."""

    def archive_alias(self, key: str) -> tuple[str, str] | None:
        """For a ``/repo/`` key that names an archive through a suite folder (where the
        format's client fetches archives beside its index): (suite, archive file name), which
        ``/repo/`` redirects to the archive's pool path; None for any other key."""

    def companions(self, pool_path: str) -> tuple[str, ...]:
        """The files the format keeps beside the archive at ``pool_path`` in the pool (a
        detached signature), which leave the pool with it."""

    def changes_in_place(self, key: str) -> bool:
        """Whether the file at ``key`` is rewritten under the same name (an index), so that
        clients must always get it whole."""

    def copy_rank(self, key: str) -> int | None:
        """Where ``key`` goes when a repository is copied between storages (lower first, so
        clients never see an index before what it names), or None when the key is not this
        format's."""

    def client_config(self, base_url: str, settings: Settings, signer: Signer | None,
                      suite: str | None = None) -> dict[str, str]:
        """How a stock client uses the repository's ``suite`` (default: where builds
        publish): ``url`` (its root), ``snippet`` (a ``sources.list`` line, a .repo file, a
        pacman.conf section), ``file`` (where the snippet goes), and when signed ``key_url``
        (the farm's public key as this client reads it) and ``setup`` (shell commands that make
        the client trust that key)."""


def newest_per_name(records: Iterable[PackageRecord], arch: str, fmt: PackageFormat
                    ) -> list[PackageRecord]:
    """For the index of farm architecture ``arch``: the newest version (in ``fmt``'s order) of
    each name among the records of that architecture or ``all``, by name."""
    best: dict[str, PackageRecord] = {}
    for rec in records:
        if rec.arch not in (arch, "all"):
            continue
        cur = best.get(rec.name)
        if cur is None or fmt.version_key(rec.version) > fmt.version_key(cur.version):
            best[rec.name] = rec
    return [best[name] for name in sorted(best)]


def _registry() -> dict[str, RepositoryFormat]:
    from master.formats.deb import DEB_REPOSITORY
    from master.formats.pacman import PACMAN_REPOSITORY
    from master.formats.rpm import RPM_REPOSITORY

    return {DEB_REPOSITORY.format.name: DEB_REPOSITORY,
            RPM_REPOSITORY.format.name: RPM_REPOSITORY,
            PACMAN_REPOSITORY.format.name: PACMAN_REPOSITORY}


FORMATS: dict[str, RepositoryFormat] = _registry()


def get(name: str) -> RepositoryFormat:
    common_formats.get(name)  # the error for an unknown name
    return FORMATS[name]


def build_host() -> BuildHostRepository:
    """The repository format that build environments install build dependencies from."""
    return cast("BuildHostRepository", FORMATS[common_formats.BUILD_HOST])


class BuildHostRepository(RepositoryFormat, Protocol):
    def build_sources(self, base_url: str, settings: Settings) -> list[str]:
        """The package sources a build may install build dependencies from: the farm's own
        repository, as the build environment's package manager reads it."""
