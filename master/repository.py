"""Accepting archives into the pool and keeping each format's index in step with it.

An upload is streamed to a temporary file beside the pool (never held in memory), hashed while
it is written, checked by its format, and only then renamed into the pool and recorded. Indexes
are rebuilt under a file lock, so one writer at a time across every gunicorn process; uploads
that land while a rebuild runs are folded into the next one instead of each paying for its own.
Nothing here knows a format: `master.formats` reads archives and writes indexes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from common import arch as archmod
from common.config import Settings
from common.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unprocessable
from common.formats import ArchiveName, PackageFormat, compare_versions
from common.locks import file_lock
from common.messages import UploadReceipt
from master import formats, metrics
from master.formats import ArchiveInfo, Digests, IndexContext, RepositoryFormat
from master.signing import KEY_FILE, Signer
from master.storage import LocalStorage, Storage
from master.store import Job, NewPackage, PackageRecord, StagedFile, Store

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024
ARCHIVE, AUXILIARY = "archive", "auxiliary"


def plain_filename(filename: str) -> str:
    if not filename or "\0" in filename or "/" in filename or "\\" in filename:
        raise BadRequest("filename must be a plain file name, without folders", field="filename")
    return filename


def format_of(filename: str, served: tuple[str, ...]) -> tuple[RepositoryFormat, ArchiveName]:
    """The served format whose archive names ``filename`` follows, and what the name says."""
    plain_filename(filename)
    problems = []
    for name in served:
        fmt = formats.get(name)
        try:
            return fmt, fmt.format.parse_archive_filename(filename)
        except ValueError as exc:
            problems.append(str(exc))
    raise BadRequest("; ".join(problems) or f"{filename!r} is no archive name", field="filename")


def _same_version(fmt: PackageFormat, a: str, b: str) -> bool:
    """Whether two versions name the same archive (a file name may leave the epoch out)."""
    return fmt.archive_filename("x", a, archmod.ALL) == fmt.archive_filename("x", b, archmod.ALL)


class Repository:
    def __init__(self, settings: Settings, store: Store, storage: Storage | None = None,
                 signer: Signer | None = None) -> None:
        self.settings = settings
        self.repo = settings.repository
        self.store = store
        data_dir = Path(settings.master.data_dir)
        self.storage: Storage = storage or LocalStorage(data_dir / "repo")
        self.incoming = data_dir / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.artifacts = data_dir / "artifacts"
        self.lock_path = data_dir / "index.lock"
        self.signer = signer
        self.formats: tuple[str, ...] = settings.repository.formats

    def discard_partial_uploads(self) -> None:
        """Remove what uploads cut short by a crash left in incoming/ (never in the pool)."""
        for part in self.incoming.glob("upload-*.part"):
            part.unlink(missing_ok=True)

    # -- upload --------------------------------------------------------------------------------

    def accept_upload(self, stream: IO[bytes], filename: str, sha256: str, *,
                      uploader: str | None, content_length: int | None = None) -> UploadReceipt:
        """Publish one archive now (an admin's upload by hand)."""
        fmt, named = format_of(filename, self.formats)
        tmp, digests = self._receive_checked(stream, sha256, content_length)
        try:
            info = fmt.inspect(tmp)
            self._check_names(fmt, info, named)
            key = fmt.pool_path(info, self.repo.component)
            receipt = self._publish(fmt, tmp, key, info, digests, uploader, None)
        finally:
            tmp.unlink(missing_ok=True)
        return receipt

    def stage_upload(self, stream: IO[bytes], filename: str, sha256: str, *, job: Job,
                     content_length: int | None = None) -> UploadReceipt:
        """Keep one file of a running attempt aside until the attempt publishes its set.

        Archives are checked as fully as for publication (and must be of the job's source,
        version and architecture); a by-product such as a .buildinfo is kept with the build,
        not in the pool.
        """
        fmt = formats.get(job.format)
        plain_filename(filename)
        named = None
        if not fmt.is_auxiliary(filename):
            try:
                named = fmt.format.parse_archive_filename(filename)
            except ValueError as exc:
                raise BadRequest(str(exc), field="filename") from None
        tmp, digests = self._receive_checked(stream, sha256, content_length)
        try:
            fields: dict[str, object] = {}
            if named is not None:
                info = fmt.inspect(tmp)
                self._check_names(fmt, info, named)
                # The archive's own version, epoch included, is the job's (in the format's
                # order: a file name may leave the epoch out, the header does not).
                if (info.source, info.arch) != (job.package, job.arch) or compare_versions(
                        fmt.format, info.version, job.version) != 0:
                    raise Unprocessable(
                        f"this build makes packages of {job.package} {job.version} for "
                        f"{job.arch}, not {info.name} ({info.source}) {info.version} "
                        f"{info.arch}", field="filename")
                key = fmt.pool_path(info, self.repo.component)
                fields = {"entry": fmt.index_entry(info, key, digests), "name": info.name,
                          "version": info.version, "arch": info.arch, "pool_path": key}
            folder = self.incoming / "staged" / f"{job.id}.{job.attempt}"
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / filename
            os.replace(tmp, dest)
            self.store.jobs.stage(StagedFile(
                job_id=job.id, attempt=job.attempt, filename=filename,
                kind=ARCHIVE if named is not None else AUXILIARY, path=str(dest),
                size=digests.size, sha256=digests.sha256, md5=digests.md5, sha1=digests.sha1,
                **fields))  # type: ignore[arg-type]
        finally:
            tmp.unlink(missing_ok=True)
        return UploadReceipt(filename=filename, pool_path=str(fields.get("pool_path") or ""),
                             sha256=digests.sha256, size=digests.size)

    def publish_job(self, job: Job, manifest: dict[str, str], uploader: str | None
                    ) -> list[str]:
        """Publish every archive an attempt staged, all together or none.

        ``manifest`` maps each file the worker made to its sha256; it must match what was
        staged exactly. Returns the archive file names now in the repository.
        """
        staged = {s.filename: s for s in self.store.jobs.staged(job.id, job.attempt)}
        missing = sorted(set(manifest) - set(staged))
        if missing:
            raise Unprocessable(f"never uploaded: {', '.join(missing)}", files=missing)
        for filename, sha in manifest.items():
            if staged[filename].sha256 != sha.lower():
                raise Unprocessable(f"{filename}: the manifest's sha256 differs from the "
                                    "uploaded file's", filename=filename)
        archives = [staged[f] for f in sorted(manifest) if staged[f].kind == ARCHIVE]
        if not archives:
            raise Unprocessable("a successful build must publish at least one archive")
        generation = None
        with self._index_lock():
            new = []
            for s in archives:
                existing = self.store.packages.by_filename(job.format, s.filename)
                if existing is None:
                    new.append(s)
                elif existing.sha256 != s.sha256 and existing.job_id != job.id:
                    raise Conflict(
                        f"{s.filename} is already published with different content "
                        f"(sha256 {existing.sha256}); bump the version to publish a change",
                        filename=s.filename)
            for s in new:
                assert s.pool_path is not None
                self.storage.put_file(Path(s.path), s.pool_path)
            if new:
                generation = self.store.packages.add([self._new(
                    job.format, name=s.name, version=s.version, arch=s.arch,
                    filename=s.filename, pool_path=s.pool_path, size=s.size, sha256=s.sha256,
                    entry=s.entry, uploaded_by=uploader, job_id=job.id) for s in new])
        keep = self.artifacts / str(job.id)
        for filename in manifest:
            if staged[filename].kind == AUXILIARY:
                keep.mkdir(parents=True, exist_ok=True)
                os.replace(staged[filename].path, keep / filename)
        self.discard_staged(job.id)
        if generation is not None:
            log.info("published %s for job %d", ", ".join(s.filename for s in new), job.id)
            self.rebuild_index(generation)
            self.apply_retention(job.format, {(str(s.name), str(s.arch)) for s in new})
        return [s.filename for s in archives]

    def _new(self, fmt: str, **fields: object) -> NewPackage:
        return NewPackage(format=fmt, suite=self.repo.suite, component=self.repo.component,
                          **fields)  # type: ignore[arg-type]

    def format_name(self, filename: str) -> str | None:
        """The served format whose archive names ``filename`` follows, or None."""
        try:
            return format_of(filename, self.formats)[0].format.name
        except BadRequest:
            return None

    def check_format(self, fmt: str | None) -> str | None:
        """``fmt`` when it is None or a format the repository serves; BadRequest else."""
        if fmt is not None and fmt not in self.formats:
            raise BadRequest(f"this repository serves no format {fmt!r} (it serves "
                             f"{', '.join(self.formats)})", field="format")
        return fmt

    def promote(self, name: str, version: str, source: str, target: str,
                fmt: str | None = None) -> list[str]:
        """Publish in suite ``target`` the archives of ``name`` ``version`` that ``source``
        has (of format ``fmt`` only, when given; else of every format), without building them
        again (the same pool files)."""
        self.check_format(fmt)
        for suite in (source, target):
            if suite not in self.repo.all_suites:
                raise NotFound(f"this repository has no suite {suite!r} (it has "
                               f"{', '.join(self.repo.all_suites)})", suite=suite)
        if source == target:
            raise BadRequest("promote to another suite", field="to")
        records = [r for r in self.store.packages.all(name)
                   if r.suite == source and r.version == version
                   and (fmt is None or r.format == fmt)]
        if not records:
            raise NotFound(f"{source} holds no {name} {version}"
                           + (f" as {fmt}" if fmt else ""), package=name)
        with self._index_lock():
            generation = self.store.packages.add([r.published_in(target) for r in records])
        self.rebuild_index(generation)
        return [r.filename for r in records]

    def apply_retention(self, fmt_name: str, keys: set[tuple[str, str]]) -> list[str]:
        """Keep ``keep_versions`` versions of each (name, arch) of a format in the pool:
        remove older ones, unless a suite's index still serves them."""
        fmt = formats.get(fmt_name).format
        keep = self.repo.keep_versions
        removed: list[str] = []
        for name, arch in sorted(keys):
            records = [r for r in self.store.packages.all(name)
                       if r.arch == arch and r.format == fmt_name]
            versions = sorted({r.version for r in records}, key=fmt.version_key, reverse=True)
            served = {max((r.version for r in records if r.suite == s),
                          key=fmt.version_key, default=None) for s in self.repo.all_suites}
            doomed = [r for r in records
                      if r.version not in versions[:keep] and r.version not in served]
            if not doomed:
                continue
            with self._index_lock():
                generation = self.store.packages.delete(doomed)
            self.rebuild_index(generation)
            removed.extend(self._delete_unused(doomed))
        if removed:
            log.info("retention removed %s", ", ".join(removed))
        return removed

    def _delete_unused(self, records: list[PackageRecord]) -> list[str]:
        """Delete from the pool each file no record uses any more, with what its format
        keeps beside it; their names."""
        gone = []
        for rec in records:
            if not self.store.packages.pool_path_in_use(rec.pool_path):
                self.storage.delete(rec.pool_path)
                for key in formats.get(rec.format).companions(rec.pool_path):
                    self.storage.delete(key)
                gone.append(rec.filename)
        return gone

    def discard_staged(self, job_id: int) -> None:
        for path in self.store.jobs.drop_staged(job_id):
            Path(path).unlink(missing_ok=True)
        for folder in (self.incoming / "staged").glob(f"{job_id}.*"):
            shutil.rmtree(folder, ignore_errors=True)

    def remove(self, name: str, version: str | None, arch: str | None,
               fmt: str | None = None) -> list[str]:
        """Take archives out of the repository (of format ``fmt`` only, when given; else of
        every format): the index first, then the pool."""
        self.check_format(fmt)
        with self._index_lock():
            generation, removed = self.store.packages.remove(name, version, arch, fmt)
            if not removed:
                raise NotFound(f"the repository holds no {name}"
                               + (f" {version}" if version else "")
                               + (f" for {arch}" if arch else "")
                               + (f" as {fmt}" if fmt else ""), package=name)
        self.rebuild_index(generation)
        self._delete_unused(removed)
        return sorted({rec.filename for rec in removed})

    def in_index(self, records: list[PackageRecord]) -> set[int]:
        """The ids of the records some index of theirs lists."""
        listed: set[int] = set()
        for fmt_name in {r.format for r in records}:
            fmt = formats.get(fmt_name)
            for suite in self.repo.all_suites:
                mine = [r for r in records if r.suite == suite and r.format == fmt_name]
                for arch in self.repo.architectures:
                    listed.update(r.id for r in fmt.indexed(mine, arch))
        return listed

    # -- receiving -----------------------------------------------------------------------------

    def _receive_checked(self, stream: IO[bytes], sha256: str, content_length: int | None
                         ) -> tuple[Path, Digests]:
        """Stream the body to a temporary file and check its size and sha256."""
        sha256 = (sha256 or "").strip().lower()
        if not SHA256_RE.fullmatch(sha256):
            raise BadRequest("sha256 must be 64 hexadecimal digits", field="sha256")
        limit = self.settings.master.max_upload_bytes
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(f"archive is larger than the limit of {limit} bytes",
                                  limit=limit)
        tmp, digests = self._receive(stream, limit)
        if digests.sha256 != sha256:
            tmp.unlink(missing_ok=True)
            raise Unprocessable(f"checksum mismatch: the request says sha256 {sha256}, the "
                                f"body has {digests.sha256}", field="sha256")
        return tmp, digests

    def _receive(self, stream: IO[bytes], limit: int) -> tuple[Path, Digests]:
        """Write the body to a temporary file beside the pool, hashing it as it arrives."""
        fd, name = tempfile.mkstemp(dir=self.incoming, prefix="upload-", suffix=".part")
        path = Path(name)
        md5 = hashlib.md5(usedforsecurity=False)
        sha1 = hashlib.sha1(usedforsecurity=False)
        sha256 = hashlib.sha256()
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"archive is larger than the limit of {limit} bytes", limit=limit)
                    out.write(chunk)
                    md5.update(chunk)
                    sha1.update(chunk)
                    sha256.update(chunk)
            if size == 0:
                raise BadRequest("the request body is empty; send the archive as the body")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, Digests(size, md5.hexdigest(), sha1.hexdigest(), sha256.hexdigest())

    def _check_names(self, fmt: RepositoryFormat, info: ArchiveInfo,
                     named: ArchiveName) -> None:
        if (info.name, info.arch) != (named.name, named.arch) or not _same_version(
                fmt.format, info.version, named.version):
            filename = fmt.format.archive_filename(named.name, named.version, named.arch)
            raise Unprocessable(f"the file is named {filename} but the archive says "
                                f"{info.name} {info.version} {info.arch}", field="filename")
        served = {*self.repo.architectures, archmod.ALL}
        if info.arch not in served:
            raise Unprocessable(
                f"architecture {info.arch} is not served by this repository "
                f"(it serves {', '.join(sorted(served))})", field="arch")

    def _publish(self, fmt: RepositoryFormat, tmp: Path, key: str, info: ArchiveInfo,
                 digests: Digests, uploader: str | None, job_id: int | None) -> UploadReceipt:
        filename = key.rsplit("/", 1)[1]
        with self._index_lock():
            existing = self.store.packages.by_filename(fmt.format.name, filename)
            if existing is not None:
                if existing.sha256 != digests.sha256:
                    raise Conflict(
                        f"{filename} is already published with different content "
                        f"(sha256 {existing.sha256}); bump the version to publish a change",
                        filename=filename)
                return UploadReceipt(filename=filename, pool_path=existing.pool_path,
                                     sha256=existing.sha256, size=existing.size,
                                     already_present=True)
            self.storage.put_file(tmp, key)
            generation = self.store.packages.add([self._new(
                fmt.format.name, name=info.name, version=info.version, arch=info.arch,
                filename=filename, pool_path=key, size=digests.size, sha256=digests.sha256,
                entry=fmt.index_entry(info, key, digests), uploaded_by=uploader,
                job_id=job_id)], uploaded=True)
        log.info("published %s (%d bytes) from %s", key, digests.size, uploader)
        self.rebuild_index(generation)
        self.apply_retention(fmt.format.name, {(info.name, info.arch)})
        return UploadReceipt(filename=filename, pool_path=key, sha256=digests.sha256,
                             size=digests.size)

    # -- index ---------------------------------------------------------------------------------

    def _index_lock(self) -> AbstractContextManager[None]:
        return file_lock(self.lock_path)

    def rebuild_index(self, at_least: int | None = None, full: bool = False) -> bool:
        """Write the indexes if they are older than generation ``at_least`` (always if None).

        Returns whether this call wrote them. A caller whose change was already folded into a
        rebuild that another process just wrote returns at once. ``full`` renders every group
        again from the recorded packages (recovery, or a first start).
        """
        packages = self.store.packages
        with self._index_lock():
            if at_least is not None and packages.index_generation() >= at_least:
                return False
            started = time.monotonic()
            generation = packages.generation()
            dirty = packages.dirty()
            ctx = IndexContext(self.settings, self.store, self.storage, self.signer)
            for name in self.formats:
                formats.get(name).write_index(ctx, dirty, full or at_least is None)
            packages.clear_dirty(dirty)
            packages.set_index_generation(generation, tuple(self.formats),
                                          self.settings.repository.all_suites)
            metrics.index_updated(time.monotonic() - started)
        if self.signer is not None:
            self.storage.put_bytes(KEY_FILE, self.signer.public_key())
        return True
