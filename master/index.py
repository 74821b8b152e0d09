"""Writing the APT index incrementally, signed, with by-hash copies.

Packages are spread over `GROUPS` groups by a hash of their name. For every suite, component,
architecture and group the store keeps the rendered Packages text and its gzip member and xz
block. An upload, removal or promotion marks only its group dirty; a rebuild renders the dirty
groups again and concatenates the cached pieces into the files apt reads: concatenated gzip
members are one valid .gz file, and the xz blocks are framed into one .xz stream
(`debrepo.xz_stream`). So the work of an update grows with the size of the changed group and
with copying bytes, not with compressing the whole repository again.

Files are written in the order a client needs: by-hash copies and the indexes first, then
`Release` and `Release.gpg`, and `InRelease` last, so a client fetching during an update sees
either the old `InRelease` (whose by-hash files are still there) or the new one.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import time
import zlib
from collections.abc import Iterable

from common.config import RepositorySettings
from master import debrepo
from master.signing import Signer
from master.storage import Storage
from master.store import IndexGroup, PackageRecord, Store

log = logging.getLogger(__name__)

GROUPS = 256
#: by-hash files no index refers to any more are removed after this many seconds.
BY_HASH_GRACE = 3600.0


def group_of(name: str) -> int:
    return zlib.crc32(name.encode()) % GROUPS


def render_group(records: Iterable[PackageRecord], arch: str) -> IndexGroup:
    plain = debrepo.render_packages(debrepo.newest(records, arch))
    if plain:
        plain += b"\n"  # a blank line after the group's last stanza, before the next group's
    block, unpadded, size = debrepo.xz_block(plain)
    gz = gzip.compress(plain, compresslevel=9, mtime=0) if plain else b""
    return IndexGroup(plain, gz, block, unpadded, size)


class IndexWriter:
    def __init__(self, repo: RepositorySettings, store: Store, storage: Storage,
                 signer: Signer | None = None) -> None:
        self.repo, self.store, self.storage, self.signer = repo, store, storage, signer

    def write(self, full: bool = False) -> list[str]:
        """Render dirty groups (all groups if ``full``) and rewrite every suite touched.

        Returns the suites written. The caller holds the index lock.
        """
        dirty = self.store.dirty_groups()
        if full:
            dirty = {(suite, comp, grp) for suite in self.repo.all_suites
                     for comp in self.repo.all_components for grp in range(GROUPS)}
        if not dirty:
            return []
        by_group: dict[tuple[str, str, int], list[PackageRecord]] = {}
        for rec in self.store.records_in_groups(dirty):
            by_group.setdefault((rec.suite, rec.component, rec.grp), []).append(rec)
        pieces = {}
        for key in dirty:
            records = by_group.get(key, [])
            for arch in self.repo.architectures:
                pieces[(*key, arch)] = render_group(records, arch)
        self.store.save_groups(pieces)
        suites = sorted({suite for suite, _, _ in dirty} if not full else self.repo.all_suites)
        for suite in suites:
            self._write_suite(suite)
        self.store.clear_dirty(dirty)
        return suites

    def _write_suite(self, suite: str) -> None:
        files: dict[str, bytes] = {}
        for comp in self.repo.all_components:
            for arch in self.repo.architectures:
                groups = self.store.groups(suite, comp, arch)
                plain = b"".join(g.plain for g in groups)
                base = f"{comp}/binary-{arch}"
                files[f"{base}/Packages"] = plain
                files[f"{base}/Packages.gz"] = (b"".join(g.gz for g in groups)
                                                or gzip.compress(b"", mtime=0))
                files[f"{base}/Packages.xz"] = debrepo.xz_stream(
                    [(g.xz, g.xz_unpadded, g.xz_size) for g in groups if g.xz_size])
                files[f"{base}/Release"] = (
                    f"Archive: {suite}\nComponent: {comp}\nOrigin: {self.repo.origin}\n"
                    f"Label: {self.repo.label}\nArchitecture: {arch}\n").encode()
        top = f"dists/{suite}"
        for name, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            folder = name.rsplit("/", 1)[0]
            self.storage.put_bytes(f"{top}/{folder}/by-hash/SHA256/{digest}", data)
        for name, data in files.items():
            self.storage.put_bytes(f"{top}/{name}", data)
        release = debrepo.render_release(self.repo, suite, files)
        if self.signer is not None:
            self.storage.put_bytes(f"{top}/Release.gpg", self.signer.detached(release))
        self.storage.put_bytes(f"{top}/Release", release)
        if self.signer is not None:
            self.storage.put_bytes(f"{top}/InRelease", self.signer.clearsign(release))
        self._expire_by_hash(top, files)

    def _expire_by_hash(self, top: str, files: dict[str, bytes]) -> None:
        current = {hashlib.sha256(data).hexdigest() for data in files.values()}
        cutoff = time.time() - BY_HASH_GRACE
        for key, mtime in self.storage.list(f"{top}/"):
            if "/by-hash/SHA256/" not in key:
                continue
            if key.rsplit("/", 1)[1] not in current and mtime < cutoff:
                self.storage.delete(key)
