"""The Debian format of the repository: reading a .deb, its index entry, and the APT index.

This module is the format seam: the rest of the master hands it archives and records and never
looks inside a .deb or an index itself. Another format (RPM, say) would be a sibling module with
the same functions: ``inspect``, ``pool_key``, ``stanza``, ``newest`` and ``render_release``
(the incremental writer in master/index.py assembles the files from them).
"""

from __future__ import annotations

import hashlib
import lzma
import struct
import subprocess
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from debian.deb822 import Deb822

from common import debian
from common.config import RepositorySettings
from common.errors import Unprocessable
from master.store import PackageRecord

REQUIRED_FIELDS = ("Package", "Version", "Architecture", "Maintainer", "Description")


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    version: str
    arch: str
    source: str
    control: Deb822


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha1: str
    sha256: str


def inspect(path: Path) -> ArchiveInfo:
    """Read and check a .deb: a valid archive whose data unpacks and whose control is complete."""
    fields = subprocess.run(["dpkg-deb", "--field", str(path)], capture_output=True, text=True)
    if fields.returncode != 0:
        reason = fields.stderr.strip().splitlines()[-1:] or ["unreadable"]
        raise Unprocessable(f"not a valid Debian archive: {reason[0]}")
    # Reading the whole data member proves the archive is not truncated or corrupt.
    contents = subprocess.run(["dpkg-deb", "--contents", str(path)], capture_output=True,
                              text=True)
    if contents.returncode != 0:
        reason = contents.stderr.strip().splitlines()[-1:] or ["unreadable"]
        raise Unprocessable(f"archive data is damaged: {reason[0]}")
    control = Deb822(fields.stdout)
    missing = [f for f in REQUIRED_FIELDS if not control.get(f)]
    if missing:
        raise Unprocessable(f"control file lacks {', '.join(missing)}")
    name, version, arch = control["Package"], control["Version"], control["Architecture"]
    if not debian.PACKAGE_NAME_RE.fullmatch(name):
        raise Unprocessable(f"control file names an invalid package {name!r}")
    if not debian.is_valid_version(version):
        raise Unprocessable(f"control file has an invalid version {version!r}")
    source = control.get("Source", name).split()[0]
    return ArchiveInfo(name=name, version=version, arch=arch, source=source, control=control)


def pool_key(info: ArchiveInfo, component: str) -> str:
    return f"{debian.pool_dir(component, info.source)}/" + debian.deb_filename(
        info.name, info.version, info.arch)


def stanza(info: ArchiveInfo, key: str, digests: Digests) -> str:
    """The archive's Packages entry, computed once when it is accepted."""
    entry = Deb822()
    for field, value in info.control.items():
        entry[field] = value
    entry["Filename"] = key
    entry["Size"] = str(digests.size)
    entry["MD5sum"] = digests.md5
    entry["SHA1"] = digests.sha1
    entry["SHA256"] = digests.sha256
    text: str = entry.dump()
    return text if text.endswith("\n") else text + "\n"


def newest(records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
    """For one index architecture: the newest version of each package (arch or all)."""
    best: dict[str, PackageRecord] = {}
    for rec in records:
        if rec.arch not in (arch, "all"):
            continue
        cur = best.get(rec.name)
        if cur is None or debian.version_key(rec.version) > debian.version_key(cur.version):
            best[rec.name] = rec
    return [best[name] for name in sorted(best)]


def render_packages(records: Iterable[PackageRecord]) -> bytes:
    return "\n".join(rec.stanza for rec in records).encode()


def _hashes(data: bytes) -> tuple[str, str, str]:
    return (hashlib.md5(data, usedforsecurity=False).hexdigest(),
            hashlib.sha1(data, usedforsecurity=False).hexdigest(),
            hashlib.sha256(data).hexdigest())


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
    sums = {name: _hashes(data) for name, data in sorted(files.items())}
    for title, idx in (("MD5Sum", 0), ("SHA1", 1), ("SHA256", 2)):
        lines.append(f"{title}:")
        for name, hashes in sums.items():
            lines.append(f" {hashes[idx]} {len(files[name]):>16} {name}")
    return ("\n".join(lines) + "\n").encode()


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
