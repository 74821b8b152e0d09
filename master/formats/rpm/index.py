"""Writing each suite's rpm-md repository incrementally, with a signed repomd.xml.

Layout under ``/repo/``: one repository per suite at ``rpm/<suite>/`` holding every component
and architecture (dnf picks the architectures it can install):
``rpm/<suite>/repodata/repomd.xml`` (+ ``repomd.xml.asc``) names
``rpm/<suite>/repodata/<sha256>-{primary,filelists,other}.xml.gz``, whose packages are at
``rpm/<suite>/packages/<file>``: an alias that the master answers with a redirect to the shared
pool (``rpm/pool/<component>/<letter>/<source>/<file>``), so a promotion between suites shares
the pool's file. The public key is ``rpm/RPM-GPG-KEY-pkgfarm``.

Packages are spread over the store's groups (by name). For every suite, component and group the
store's index cache keeps the group's three metadata texts (the ``<package>`` elements
createrepo_c wrote at upload, for the newest version of each name and architecture) and a gzip
member of each. An update renders only the dirty groups; the files dnf reads are a small gzip
member with the XML head (and the package count), the cached members, and one with the tail:
concatenated gzip members are one valid .gz file. repomd.xml needs the sha256 of each file and
of its uncompressed text, which is hashing, not compressing, the whole repository.

Files are written in the order a client needs: the data files first, under names that carry
their checksum (so a client holding the old repomd.xml still finds the files it names), then
repomd.xml, then repomd.xml.asc. Between those two writes (a few milliseconds) a client may get
the new repomd.xml with the old signature, or the reverse; its signature check then fails and
dnf refuses the metadata for that run (it never uses unverified metadata), and the next refresh
succeeds. Data files no repomd.xml names any more are removed after an hour.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from common.formats.rpm import RPM
from master.formats import IndexContext
from master.formats.rpm.archive import KINDS, entry_pieces
from master.store import IndexKey, PackageRecord

FORMAT = "rpm"
KEY_FILE = "rpm/RPM-GPG-KEY-pkgfarm"
#: data files no repomd.xml names are removed after this many seconds
GRACE = 3600.0
_HEADS = {
    "primary": ('<metadata xmlns="http://linux.duke.edu/metadata/common" '
                'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{n}">\n',
                "</metadata>"),
    "filelists": ('<filelists xmlns="http://linux.duke.edu/metadata/filelists" '
                  'packages="{n}">\n', "</filelists>"),
    "other": ('<otherdata xmlns="http://linux.duke.edu/metadata/other" packages="{n}">\n',
              "</otherdata>"),
}
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'


def newest(records: Iterable[PackageRecord], arch: str | None = None) -> list[PackageRecord]:
    """The newest version of each name and architecture (of farm arch ``arch`` or ``all``
    only, when given), by name."""
    best: dict[tuple[str, str], PackageRecord] = {}
    for rec in records:
        if arch is not None and rec.arch not in (arch, "all"):
            continue
        cur = best.get((rec.name, rec.arch))
        if cur is None or RPM.version_key(rec.version) > RPM.version_key(cur.version):
            best[(rec.name, rec.arch)] = rec
    return [best[k] for k in sorted(best)]


@dataclass(frozen=True)
class Group:
    """One group's share of the three metadata files: its count, texts and gzip members."""

    count: int
    plain: tuple[bytes, bytes, bytes]
    gz: tuple[bytes, bytes, bytes]

    _HEADER = struct.Struct("<Q6Q")

    def to_bytes(self) -> bytes:
        parts = [*self.plain, *self.gz]
        return self._HEADER.pack(self.count, *map(len, parts)) + b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Group:
        count, *sizes = cls._HEADER.unpack_from(data)
        pos, parts = cls._HEADER.size, []
        for size in sizes:
            parts.append(data[pos:pos + size])
            pos += size
        return cls(count, (parts[0], parts[1], parts[2]), (parts[3], parts[4], parts[5]))


def render_group(records: Iterable[PackageRecord]) -> Group:
    listed = newest(records)
    texts = {kind: [] for kind in KINDS}  # type: dict[str, list[str]]
    for rec in listed:
        pieces = entry_pieces(rec.entry)
        for kind in KINDS:
            texts[kind].append(pieces[kind])
    plain = tuple("".join(texts[kind]).encode() for kind in KINDS)
    gz = tuple(gzip.compress(p, compresslevel=6, mtime=0) if p else b"" for p in plain)
    return Group(len(listed), plain, gz)  # type: ignore[arg-type]


def cache_key(suite: str, component: str, grp: int) -> str:
    return f"{suite}/{component}/{grp:03d}"


@dataclass(frozen=True)
class MetadataFile:
    kind: str
    data: bytes  # gzip
    open_sha256: str
    open_size: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def href(self) -> str:
        return f"repodata/{self.sha256}-{self.kind}.xml.gz"


def assemble(kind: str, count: int, groups: list[Group]) -> MetadataFile:
    index = KINDS.index(kind)
    head_text, tail_text = _HEADS[kind]
    head = (_XML_DECL + head_text.format(n=count)).encode()
    tail = tail_text.encode()
    digest = hashlib.sha256(head)
    size = len(head) + len(tail)
    members = [gzip.compress(head, mtime=0)]
    for g in groups:
        if g.plain[index]:
            digest.update(g.plain[index])
            size += len(g.plain[index])
            members.append(g.gz[index])
    digest.update(tail)
    members.append(gzip.compress(tail, mtime=0))
    return MetadataFile(kind, b"".join(members), digest.hexdigest(), size)


def render_repomd(files: list[MetadataFile], revision: int) -> bytes:
    lines = [_XML_DECL.rstrip("\n"),
             '<repomd xmlns="http://linux.duke.edu/metadata/repo" '
             'xmlns:rpm="http://linux.duke.edu/metadata/rpm">',
             f"  <revision>{revision}</revision>"]
    for f in files:
        lines += [f'  <data type="{f.kind}">',
                  f'    <checksum type="sha256">{f.sha256}</checksum>',
                  f'    <open-checksum type="sha256">{f.open_sha256}</open-checksum>',
                  f'    <location href="{f.href}"/>',
                  f"    <timestamp>{revision}</timestamp>",
                  f"    <size>{len(f.data)}</size>",
                  f"    <open-size>{f.open_size}</open-size>",
                  "  </data>"]
    lines.append("</repomd>")
    return ("\n".join(lines) + "\n").encode()


class IndexWriter:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx
        self.repo = ctx.settings.repository

    def write(self, dirty: set[IndexKey], full: bool = False) -> list[str]:
        """Render the dirty groups (every group if ``full``) and rewrite each suite touched;
        the suites written. The caller holds the index lock."""
        groups = self.ctx.groups_to_render(FORMAT, dirty, full)
        if not groups:
            return []
        self.ctx.store.index.put(FORMAT, {
            cache_key(k.suite, k.component, k.grp): render_group(records).to_bytes()
            for k, records in groups.items()})
        suites = sorted({k.suite for k in groups})
        for suite in suites:
            self.write_suite(suite)
        if self.ctx.signer is not None and (full or not self.ctx.storage.exists(KEY_FILE)):
            self.ctx.storage.put_bytes(KEY_FILE, self.ctx.signer.public_key(armor=True))
        return suites

    def groups(self, suite: str) -> list[Group]:
        groups = [Group.from_bytes(data) for _, data in
                  self.ctx.store.index.get_prefix(FORMAT, f"{suite}/")]
        return [g for g in groups if g.count]

    def write_suite(self, suite: str, revision: int | None = None) -> None:
        storage, signer = self.ctx.storage, self.ctx.signer
        groups = self.groups(suite)
        count = sum(g.count for g in groups)
        files = [assemble(kind, count, groups) for kind in KINDS]
        top = f"rpm/{suite}"
        for f in files:
            storage.put_bytes(f"{top}/{f.href}", f.data)
        repomd = render_repomd(files, revision or int(time.time()))
        storage.put_bytes(f"{top}/repodata/repomd.xml", repomd)
        if signer is not None:
            storage.put_bytes(f"{top}/repodata/repomd.xml.asc", signer.detached(repomd))
        self._expire(top, {f.href.rsplit("/", 1)[1] for f in files})

    def _expire(self, top: str, current: set[str]) -> None:
        cutoff = time.time() - GRACE
        for key, mtime in self.ctx.storage.list(f"{top}/repodata/"):
            name = key.rsplit("/", 1)[1]
            if (name.endswith(".xml.gz") and name not in current and mtime < cutoff):
                self.ctx.storage.delete(key)
