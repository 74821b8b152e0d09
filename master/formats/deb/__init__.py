"""Debian's format on the master: .deb uploads, the pool, and the signed APT index.

Layout under ``/repo/`` (unchanged since the farm's first APT repository): the pool at
``pool/<component>/<prefix>/<source>/``, and per suite ``dists/<suite>/{InRelease, Release,
Release.gpg}`` with ``<component>/binary-<arch>/Packages{,.gz,.xz}`` and their by-hash copies.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from common.formats.deb import DEB, policy
from master.formats import ArchiveInfo, Digests, IndexContext
from master.formats.deb import archive
from master.formats.deb.index import IndexWriter, newest
from master.signing import KEY_FILE

if TYPE_CHECKING:
    from common.config import Settings
    from master.signing import Signer
    from master.store import IndexKey, PackageRecord

RELEASE_FILES = ("Release", "Release.gpg", "InRelease")


class DebRepository:
    format = DEB

    def is_auxiliary(self, filename: str) -> bool:
        return bool(policy.BUILDINFO_RE.fullmatch(filename))

    def inspect(self, path: Path) -> ArchiveInfo:
        return archive.inspect(path)

    def pool_path(self, info: ArchiveInfo, component: str) -> str:
        return archive.pool_path(info, component)

    def index_entry(self, info: ArchiveInfo, pool_path: str, digests: Digests) -> str:
        return archive.index_entry(info, pool_path, digests)

    def indexed(self, records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
        return newest(records, arch)

    def write_index(self, ctx: IndexContext, dirty: set[IndexKey], full: bool) -> None:
        IndexWriter(ctx).write(dirty, full)

    def archive_alias(self, key: str) -> tuple[str, str] | None:
        return None  # APT's index names each archive by its pool path

    def companions(self, pool_path: str) -> tuple[str, ...]:
        return ()

    def changes_in_place(self, key: str) -> bool:
        return key.startswith("dists/") and "/by-hash/" not in key

    def copy_rank(self, key: str) -> int | None:
        """Pool first, then by-hash copies, then the indexes, each suite's Release files
        last."""
        if key.startswith("pool/"):
            return 0
        if not key.startswith("dists/"):
            return None
        if "/by-hash/" in key:
            return 1
        if key.count("/") == 2 and key.rsplit("/", 1)[1] in RELEASE_FILES:
            return 3
        return 2

    def client_config(self, base_url: str, settings: Settings, signer: Signer | None,
                      suite: str | None = None) -> dict[str, str]:
        repo = settings.repository
        root = f"{base_url.rstrip('/')}/"
        option = ("[signed-by=/etc/apt/keyrings/pkgfarm.gpg]" if signer is not None
                  else "[trusted=yes]")
        components = " ".join(repo.all_components)
        config = {"url": root,
                  "snippet": f"deb {option} {root.rstrip('/')} {suite or repo.suite} "
                             f"{components}",
                  "file": "/etc/apt/sources.list.d/pkgfarm.list"}
        if signer is not None:
            config["key_url"] = f"{root}{KEY_FILE}"
            config["setup"] = ("sudo install -d -m 0755 /etc/apt/keyrings\n"
                               f"curl -fsSL {root}{KEY_FILE} | sudo tee "
                               "/etc/apt/keyrings/pkgfarm.gpg >/dev/null")
        return config

    def build_sources(self, base_url: str, settings: Settings) -> list[str]:
        repo = settings.repository
        return [f"deb [trusted=yes] {base_url.rstrip('/')} {repo.suite} {repo.component}"]


DEB_REPOSITORY = DebRepository()
