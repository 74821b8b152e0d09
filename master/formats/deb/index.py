"""Writing the APT index incrementally, signed, with by-hash copies.

Packages are spread over `GROUPS` groups by a hash of their name. For every suite, component,
architecture and group the store's index cache keeps the rendered Packages text and its gzip
member and xz block. An upload, removal or promotion marks only its group dirty; a rebuild
renders the dirty groups again and concatenates the cached pieces into the files apt reads:
concatenated gzip members are one valid .gz file, and the xz blocks are framed into one .xz
stream (`xz_stream`). So the work of an update grows with the size of the changed group and
with copying bytes, not with compressing the whole repository again.

Files are written in the order a client needs: by-hash copies and the indexes first, then
`Release` and `Release.gpg`, and `InRelease` last, so a client fetching during an update sees
either the old `InRelease` (whose by-hash files are still there) or the new one.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate

from common.config import RepositorySettings
from common.formats.deb import DEB
from master.formats import IndexContext, newest_per_name
from master.store import IndexKey, PackageRecord

FORMAT = "deb"
#: by-hash files no index refers to any more are removed after this many seconds.
BY_HASH_GRACE = 3600.0


@dataclass(frozen=True)
class IndexGroup:
    """One group's share of a Packages file: its text, gzip member and xz block."""

    plain: bytes
    gz: bytes
    xz: bytes
    xz_unpadded: int
    xz_size: int

    _HEADER = struct.Struct("<QQQQ")

    def to_bytes(self) -> bytes:
        return (self._HEADER.pack(len(self.plain), len(self.gz), self.xz_unpadded, self.xz_size)
                + self.plain + self.gz + self.xz)

    @classmethod
    def from_bytes(cls, data: bytes) -> IndexGroup:
        n_plain, n_gz, unpadded, size = cls._HEADER.unpack_from(data)
        body = data[cls._HEADER.size:]
        return cls(body[:n_plain], body[n_plain:n_plain + n_gz], body[n_plain + n_gz:],
                   unpadded, size)


def newest(records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
    """For one index architecture: the newest version of each package (arch or all)."""
    return newest_per_name(records, arch, DEB)


def render_group(records: Iterable[PackageRecord], arch: str) -> IndexGroup:
    plain = "\n".join(rec.entry for rec in newest(records, arch)).encode()
    if plain:
        plain += b"\n"  # a blank line after the group's last stanza, before the next group's
    block, unpadded, size = xz_block(plain)
    gz = gzip.compress(plain, compresslevel=9, mtime=0) if plain else b""
    return IndexGroup(plain, gz, block, unpadded, size)


def _cache_key(suite: str, component: str, arch: str, grp: int) -> str:
    return f"{suite}/{component}/{arch}/{grp:03d}"


def render_release(repo: RepositorySettings, suite: str, files: dict[str, bytes],
                   date: float | None = None) -> bytes:
    lines = [
        f"Origin: {repo.origin}",
        f"Label: {repo.label}",
        f"Suite: {suite}",
        f"Codename: {suite}",
        f"Date: {formatdate(date, usegmt=True)}",
        f"Architectures: {' '.join(repo.architectures)}",
        f"Components: {' '.join(repo.all_components)}",
        "Description: packages built by pkgfarm",
        "Acquire-By-Hash: yes",
    ]
    sums = {name: (hashlib.md5(data, usedforsecurity=False).hexdigest(),
                   hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                   hashlib.sha256(data).hexdigest()) for name, data in sorted(files.items())}
    for title, idx in (("MD5Sum", 0), ("SHA1", 1), ("SHA256", 2)):
        lines.append(f"{title}:")
        for name, hashes in sums.items():
            lines.append(f" {hashes[idx]} {len(files[name]):>16} {name}")
    return ("\n".join(lines) + "\n").encode()


class IndexWriter:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx
        self.repo = ctx.settings.repository

    def write(self, dirty: set[IndexKey], full: bool = False) -> list[str]:
        """Render the dirty groups (every group if ``full``) and rewrite every suite touched;
        the suites written. The caller holds the index lock."""
        groups = self.ctx.groups_to_render(FORMAT, dirty, full)
        if not groups:
            return []
        pieces = {}
        for key, records in groups.items():
            for arch in self.repo.architectures:
                group = render_group(records, arch)
                pieces[_cache_key(key.suite, key.component, arch, key.grp)] = group.to_bytes()
        self.ctx.store.index.put(FORMAT, pieces)
        suites = sorted({k.suite for k in groups})
        for suite in suites:
            self._write_suite(suite)
        return suites

    def _groups(self, suite: str, component: str, arch: str) -> list[IndexGroup]:
        groups = [IndexGroup.from_bytes(data) for _, data in self.ctx.store.index.get_prefix(
            FORMAT, f"{suite}/{component}/{arch}/")]
        return [g for g in groups if g.plain]

    def _write_suite(self, suite: str) -> None:
        storage, signer = self.ctx.storage, self.ctx.signer
        files: dict[str, bytes] = {}
        for comp in self.repo.all_components:
            for arch in self.repo.architectures:
                groups = self._groups(suite, comp, arch)
                base = f"{comp}/binary-{arch}"
                files[f"{base}/Packages"] = b"".join(g.plain for g in groups)
                files[f"{base}/Packages.gz"] = (b"".join(g.gz for g in groups)
                                                or gzip.compress(b"", mtime=0))
                files[f"{base}/Packages.xz"] = xz_stream(
                    [(g.xz, g.xz_unpadded, g.xz_size) for g in groups if g.xz_size])
                files[f"{base}/Release"] = (
                    f"Archive: {suite}\nComponent: {comp}\nOrigin: {self.repo.origin}\n"
                    f"Label: {self.repo.label}\nArchitecture: {arch}\n").encode()
        top = f"dists/{suite}"
        for name, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            folder = name.rsplit("/", 1)[0]
            storage.put_bytes(f"{top}/{folder}/by-hash/SHA256/{digest}", data)
        for name, data in files.items():
            storage.put_bytes(f"{top}/{name}", data)
        release = render_release(self.repo, suite, files)
        if signer is not None:
            storage.put_bytes(f"{top}/Release.gpg", signer.detached(release))
        storage.put_bytes(f"{top}/Release", release)
        if signer is not None:
            storage.put_bytes(f"{top}/InRelease", signer.clearsign(release))
        self._expire_by_hash(top, files)

    def _expire_by_hash(self, top: str, files: dict[str, bytes]) -> None:
        current = {hashlib.sha256(data).hexdigest() for data in files.values()}
        cutoff = time.time() - BY_HASH_GRACE
        for key, mtime in self.ctx.storage.list(f"{top}/"):
            if "/by-hash/SHA256/" not in key:
                continue
            if key.rsplit("/", 1)[1] not in current and mtime < cutoff:
                self.ctx.storage.delete(key)


# -- xz: one stream framed from separately compressed blocks -----------------------------------
#
# apt reads only the first stream of a .xz file, so cached pieces cannot simply be concatenated
# as whole streams (gzip members can). Instead each piece is compressed as a one-block stream,
# its block is kept, and `xz_stream` frames the kept blocks with a stream header, an index of
# their sizes and a footer, as the .xz format (tukaani.org/xz/xz-file-format.txt) lays out.

_XZ_MAGIC = b"\xfd7zXZ\x00"
_XZ_FLAGS = b"\x00\x01"  # check type: CRC32


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def xz_block(data: bytes) -> tuple[bytes, int, int]:
    """``data`` as one xz block: (block bytes, unpadded size, uncompressed size)."""
    if not data:
        return b"", 0, 0
    stream = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=6)
    backward = (struct.unpack("<I", stream[-8:-4])[0] + 1) * 4
    index_start = len(stream) - 12 - backward
    index = stream[index_start:-12]
    count, pos = _read_varint(index, 1)
    if index[0] != 0 or count != 1:
        raise ValueError("liblzma made more than one block")
    unpadded, pos = _read_varint(index, pos)
    size, _ = _read_varint(index, pos)
    return stream[12:index_start], unpadded, size


def xz_stream(blocks: list[tuple[bytes, int, int]]) -> bytes:
    """One .xz stream holding ``blocks`` (from `xz_block`) in order."""
    header = _XZ_MAGIC + _XZ_FLAGS + struct.pack("<I", zlib.crc32(_XZ_FLAGS))
    index = b"\x00" + _varint(len(blocks)) + b"".join(
        _varint(unpadded) + _varint(size) for _, unpadded, size in blocks)
    index += b"\x00" * (-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    backward = struct.pack("<I", len(index) // 4 - 1)
    footer = struct.pack("<I", zlib.crc32(backward + _XZ_FLAGS)) + backward + _XZ_FLAGS + b"YZ"
    return header + b"".join(block for block, _, _ in blocks) + index + footer
