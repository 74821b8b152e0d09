"""Writing pacman's databases incrementally, signed.

A repository root is ``pacman/<suite>/<component>/<arch>/`` (pacman's architecture names;
``any`` packages are listed in every architecture's database), holding ``<repo>.db`` and
``<repo>.files`` with their binary detached signatures ``.sig``. The repository's name is
``pkgfarm-<suite>`` for the farm's main component and ``pkgfarm-<suite>-<component>`` for the
others (`repo_name`).

A database is a gzip-compressed tar of one folder per package, ``<name>-<version>/desc``
(``.files`` adds ``files``), as repo-add writes it. Packages are spread over the store's
groups by a hash of their name; for every suite, component, architecture and group the store's
index cache keeps that group's tar members, already gzip-compressed, for both databases.
Concatenated gzip members are one gzip stream, and concatenated tar members one tar,
so an update renders only its dirty groups, joins the cached pieces, closes the tar and signs
the two files. Each package's own detached signature, which ``SigLevel = Required`` asks for,
is made once, when a database first lists it, and cached by the signing key and the
archive's sha256; it is both the entry's %PGPSIG% and the file ``<pool path>.sig`` beside the
archive in the pool (pacman 6.0 downloads that file even when the entry carries the
signature, from the address the archive was finally served from, after the redirect).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import tarfile
from collections.abc import Iterable

from common.formats.pacman import PACMAN
from master.formats import IndexContext, newest_per_name
from master.store import IndexKey, PackageRecord

FORMAT = "pacman"
#: The end of a tar: two zero blocks, as its own gzip member.
TAR_END = gzip.compress(b"\0" * 1024, compresslevel=6, mtime=0)
_HEADER = struct.Struct("<QQQ")


def repo_name(suite: str, component: str, main_component: str) -> str:
    return f"pkgfarm-{suite}" if component == main_component else f"pkgfarm-{suite}-{component}"


def repo_root(suite: str, component: str, pacman_arch: str) -> str:
    return f"pacman/{suite}/{component}/{pacman_arch}"


def newest(records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
    """For one database (farm arch ``arch``): the newest version of each package (of that
    architecture or ``all``); a pacman database holds one version of a name."""
    return newest_per_name(records, arch, PACMAN)


def _member(name: str, data: bytes | None, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.mtime = mtime
    info.uname = info.gname = "root"
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        return info.tobuf(format=tarfile.PAX_FORMAT)
    info.mode = 0o644
    info.size = len(data)
    return (info.tobuf(format=tarfile.PAX_FORMAT) + data
            + b"\0" * (-len(data) % tarfile.BLOCKSIZE))


def desc(entry: dict[str, str], signature: bytes | None) -> bytes:
    sig = ""
    if signature is not None:
        sig = f"%PGPSIG%\n{base64.b64encode(signature).decode()}\n\n"
    return (entry["head"] + sig + entry["tail"]).encode()


def render_group(records: list[PackageRecord], signatures: dict[str, bytes]) -> bytes:
    """One group's pieces of the two databases (db tar, files tar, each gzip-compressed) and
    the pool paths it lists (whose signature files sit beside them)."""
    db = io.BytesIO()
    files = io.BytesIO()
    for rec in records:
        entry = json.loads(rec.entry)
        folder, mtime = entry["dir"], int(rec.uploaded_at)
        text = desc(entry, signatures.get(rec.sha256))
        head = _member(folder + "/", None, mtime) + _member(f"{folder}/desc", text, mtime)
        db.write(head)
        files.write(head + _member(f"{folder}/files", entry["files"].encode(), mtime))
    db_gz = gzip.compress(db.getvalue(), compresslevel=6, mtime=0) if db.tell() else b""
    files_gz = (gzip.compress(files.getvalue(), compresslevel=6, mtime=0) if files.tell()
                else b"")
    names = "\n".join(rec.pool_path for rec in records).encode()
    return _HEADER.pack(len(db_gz), len(files_gz), len(names)) + db_gz + files_gz + names


def split_piece(data: bytes) -> tuple[bytes, bytes, list[str]]:
    n_db, n_files, n_names = _HEADER.unpack_from(data)
    body = data[_HEADER.size:]
    names = body[n_db + n_files:n_db + n_files + n_names].decode()
    return body[:n_db], body[n_db:n_db + n_files], names.split("\n") if names else []


def _cache_key(suite: str, component: str, arch: str, grp: int) -> str:
    return f"db/{suite}/{component}/{arch}/{grp:03d}"


class IndexWriter:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx
        self.repo = ctx.settings.repository

    def write(self, dirty: set[IndexKey], full: bool = False) -> list[tuple[str, str]]:
        """Render the dirty groups (every group if ``full``) and rewrite the databases of every
        suite and component touched; those (suite, component). The caller holds the index
        lock."""
        groups = self.ctx.groups_to_render(FORMAT, dirty, full)
        if not groups:
            return []
        pieces: dict[str, bytes] = {}
        signature_files: dict[str, bytes] = {}
        stale: list[str] = []
        for key, records in groups.items():
            for arch in self.repo.architectures:
                cache_key = _cache_key(key.suite, key.component, arch, key.grp)
                listed = newest(records, arch)
                signatures = self._signatures(listed)
                pieces[cache_key] = render_group(listed, signatures)
                # pacman fetches <archive>.sig from where the archive was served (after the
                # redirect to the pool) for SigLevel = Required: new ones are written before
                # the database names them; those of archives no record keeps, removed after.
                old = self.ctx.store.index.get_prefix(FORMAT, cache_key)
                before = set(split_piece(old[0][1])[2]) if old and not full else set()
                now = {rec.pool_path for rec in listed}
                for rec in listed:
                    if rec.pool_path not in before and rec.sha256 in signatures:
                        signature_files[f"{rec.pool_path}.sig"] = signatures[rec.sha256]
                stale += sorted(before - now)
        for path, sig in signature_files.items():
            self.ctx.storage.put_bytes(path, sig)
        self.ctx.store.index.put(FORMAT, pieces)
        touched = sorted({(k.suite, k.component) for k in groups})
        for suite, component in touched:
            for arch in self.repo.architectures:
                self._write_databases(suite, component, arch)
        for pool_path in stale:
            filename = pool_path.rsplit("/", 1)[1]
            if self.ctx.store.packages.by_filename(FORMAT, filename) is None:
                self.ctx.storage.delete(pool_path + ".sig")
        return touched

    def _signatures(self, records: list[PackageRecord]) -> dict[str, bytes]:
        """Each listed archive's detached signature, made once per signing key."""
        signer = self.ctx.signer
        if signer is None:
            return {}
        found: dict[str, bytes] = {}
        new: dict[str, bytes] = {}
        index = self.ctx.store.index
        for rec in records:
            if rec.sha256 in found:
                continue
            key = f"sig/{signer.fingerprint}/{rec.sha256}"
            cached = index.get_prefix(FORMAT, key)
            if cached:
                found[rec.sha256] = cached[0][1]
                continue
            sig = signer.detached(self.ctx.storage.get(rec.pool_path), armor=False)
            found[rec.sha256] = new[key] = sig
        if new:
            index.put(FORMAT, new)
        return found

    def _write_databases(self, suite: str, component: str, arch: str) -> None:
        storage, signer = self.ctx.storage, self.ctx.signer
        pieces = [split_piece(data) for _, data in self.ctx.store.index.get_prefix(
            FORMAT, f"db/{suite}/{component}/{arch}/")]
        db = b"".join(p[0] for p in pieces) + TAR_END
        files = b"".join(p[1] for p in pieces) + TAR_END
        name = repo_name(suite, component, self.repo.component)
        root = repo_root(suite, component, PACMAN.arch_name(arch))
        outputs = ((f"{root}/{name}.files", files), (f"{root}/{name}.db", db))
        signatures = {key: signer.detached(data, armor=False) for key, data in outputs
                      } if signer is not None else {}
        for key, data in outputs:
            storage.put_bytes(key, data)
            if key in signatures:
                storage.put_bytes(key + ".sig", signatures[key])
