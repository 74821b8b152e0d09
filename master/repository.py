"""Accepting archives into the pool and keeping the index in step with it.

An upload is streamed to a temporary file beside the pool (never held in memory), hashed while
it is written, checked, and only then renamed into the pool and recorded. The index is rebuilt
under a file lock, so one writer at a time across every gunicorn process; uploads that land
while a rebuild runs are folded into the next one instead of each paying for its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common import debian
from common.config import Settings
from common.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, Unprocessable
from common.messages import UploadReceipt
from master import debrepo
from master.index import IndexWriter, group_of
from master.signing import KEY_FILE, Signer
from master.storage import LocalStorage, Storage
from master.store import Job, Store

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BUILDINFO_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+_[0-9][A-Za-z0-9.+~-]*_[a-z0-9-]+\.buildinfo")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Expected:
    """What an upload for a given job must contain."""

    name: str
    version: str
    arch: str


def check_filename(filename: str) -> debian.DebName:
    if not filename or "\0" in filename or "/" in filename or "\\" in filename:
        raise BadRequest("filename must be a plain file name, without folders", field="filename")
    try:
        return debian.parse_deb_filename(filename)
    except ValueError as exc:
        raise BadRequest(str(exc), field="filename") from None


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
        self.index = IndexWriter(self.repo, store, self.storage, signer)

    def discard_partial_uploads(self) -> None:
        """Remove what uploads cut short by a crash left in incoming/ (never in the pool)."""
        for part in self.incoming.glob("upload-*.part"):
            part.unlink(missing_ok=True)

    # -- upload --------------------------------------------------------------------------------

    def accept_upload(
        self, stream: IO[bytes], filename: str, sha256: str, *, uploader: str | None,
        expected: Expected | None = None, job_id: int | None = None,
        content_length: int | None = None,
    ) -> UploadReceipt:
        """Publish one archive now (an admin's upload by hand)."""
        debname = check_filename(filename)
        tmp, digests = self._receive_checked(stream, sha256, content_length)
        try:
            info = debrepo.inspect(tmp)
            self._check_names(info, debname, expected)
            key = debrepo.pool_key(info, self.repo.component)
            receipt = self._publish(tmp, key, info, digests, uploader, job_id)
        finally:
            tmp.unlink(missing_ok=True)
        return receipt

    def stage_upload(self, stream: IO[bytes], filename: str, sha256: str, *, job: Job,
                     content_length: int | None = None) -> UploadReceipt:
        """Keep one file of a running attempt aside until the attempt publishes its set.

        Archives are checked as fully as for publication (and must be of the job's source,
        version and architecture); a .buildinfo is kept with the build, not in the pool.
        """
        is_buildinfo = filename.endswith(".buildinfo")
        if is_buildinfo:
            if not BUILDINFO_RE.fullmatch(filename):
                raise BadRequest(f"{filename!r} is not a .buildinfo name", field="filename")
            debname = None
        else:
            debname = check_filename(filename)
        tmp, digests = self._receive_checked(stream, sha256, content_length)
        try:
            record: dict[str, object] = {
                "job_id": job.id, "attempt": job.attempt, "filename": filename,
                "size": digests.size, "sha256": digests.sha256, "md5": digests.md5,
                "sha1": digests.sha1, "stanza": None, "name": None, "version": None,
                "arch": None, "pool_path": None,
            }
            if debname is not None:
                info = debrepo.inspect(tmp)
                self._check_names(info, debname, None)
                wanted = (job.package, debian.strip_epoch(job.version), job.arch)
                actual = (info.source, debian.strip_epoch(info.version), info.arch)
                if actual != wanted:
                    raise Unprocessable(
                        f"this build makes packages of {job.package} {job.version} for "
                        f"{job.arch}, not {info.name} ({info.source}) {info.version} "
                        f"{info.arch}", field="filename")
                key = debrepo.pool_key(info, self.repo.component)
                record.update(kind="deb", stanza=debrepo.stanza(info, key, digests),
                              name=info.name, version=info.version, arch=info.arch,
                              pool_path=key)
            else:
                record["kind"] = "buildinfo"
            folder = self.incoming / "staged" / f"{job.id}.{job.attempt}"
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / filename
            os.replace(tmp, dest)
            record["path"] = str(dest)
            self.store.stage(record)
        finally:
            tmp.unlink(missing_ok=True)
        return UploadReceipt(filename=filename, pool_path=str(record["pool_path"] or ""),
                             sha256=digests.sha256, size=digests.size)

    def publish_job(self, job: Job, manifest: dict[str, str], uploader: str | None
                    ) -> list[str]:
        """Publish every archive an attempt staged, all together or none.

        ``manifest`` maps each file the worker made to its sha256; it must match what was
        staged exactly. Returns the archive file names now in the repository.
        """
        staged = {s["filename"]: s for s in self.store.staged(job.id, job.attempt)}
        missing = sorted(set(manifest) - set(staged))
        if missing:
            raise Unprocessable(f"never uploaded: {', '.join(missing)}", files=missing)
        for filename, sha in manifest.items():
            if staged[filename]["sha256"] != sha.lower():
                raise Unprocessable(f"{filename}: the manifest's sha256 differs from the "
                                    "uploaded file's", filename=filename)
        debs = [staged[f] for f in sorted(manifest) if staged[f]["kind"] == "deb"]
        if not debs:
            raise Unprocessable("a successful build must publish at least one archive")
        generation = None
        with self._index_lock():
            new = []
            for s in debs:
                existing = self.store.package_by_filename(s["filename"])
                if existing is None:
                    new.append(s)
                elif existing.sha256 != s["sha256"] and existing.job_id != job.id:
                    raise Conflict(
                        f"{s['filename']} is already published with different content "
                        f"(sha256 {existing.sha256}); bump the version to publish a change",
                        filename=s["filename"])
            for s in new:
                self.storage.put_file(Path(s["path"]), s["pool_path"])
            if new:
                generation = self.store.add_packages([self._record(
                    name=s["name"], version=s["version"], arch=s["arch"],
                    filename=s["filename"], pool_path=s["pool_path"], size=s["size"],
                    sha256=s["sha256"], stanza=s["stanza"], uploaded_by=uploader,
                    job_id=job.id) for s in new])
        keep = self.artifacts / str(job.id)
        for filename in manifest:
            if staged[filename]["kind"] == "buildinfo":
                keep.mkdir(parents=True, exist_ok=True)
                os.replace(staged[filename]["path"], keep / filename)
        self.discard_staged(job.id)
        if generation is not None:
            log.info("published %s for job %d", ", ".join(s["filename"] for s in new), job.id)
            self.rebuild_index(generation)
            self.apply_retention({(s["name"], s["arch"]) for s in new})
        return [s["filename"] for s in debs]

    def _record(self, *, suite: str | None = None, **fields: object) -> dict[str, object]:
        name = str(fields["name"])
        return {"suite": suite or self.repo.suite, "component": self.repo.component,
                "grp": group_of(name), "uploaded_at": time.time(), **fields}

    def promote(self, name: str, version: str, source: str, target: str) -> list[str]:
        """Publish in suite ``target`` the archives of ``name`` ``version`` that ``source``
        has, without building them again (the same pool files)."""
        for suite in (source, target):
            if suite not in self.repo.all_suites:
                raise NotFound(f"this repository has no suite {suite!r} (it has "
                               f"{', '.join(self.repo.all_suites)})", suite=suite)
        if source == target:
            raise BadRequest("promote to another suite", field="to")
        records = [r for r in self.store.packages(name)
                   if r.suite == source and r.version == version]
        if not records:
            raise NotFound(f"{source} holds no {name} {version}", package=name)
        with self._index_lock():
            generation = self.store.add_packages([
                {**{k: getattr(r, k) for k in (
                    "component", "grp", "name", "version", "arch", "filename", "pool_path",
                    "size", "sha256", "stanza", "uploaded_by", "job_id")},
                 "suite": target, "uploaded_at": time.time()} for r in records])
        self.rebuild_index(generation)
        return [r.filename for r in records]

    def apply_retention(self, keys: set[tuple[str, str]]) -> list[str]:
        """Keep ``keep_versions`` versions of each (name, arch) in the pool: remove older
        ones, unless a suite's index still serves them."""
        keep = self.repo.keep_versions
        removed: list[str] = []
        for name, arch in sorted(keys):
            records = [r for r in self.store.packages(name) if r.arch == arch]
            versions = sorted({r.version for r in records}, key=debian.version_key,
                              reverse=True)
            served = {max((r.version for r in records if r.suite == s),
                          key=debian.version_key, default=None) for s in self.repo.all_suites}
            doomed = [r for r in records
                      if r.version not in versions[:keep] and r.version not in served]
            if not doomed:
                continue
            with self._index_lock():
                generation = self.store.delete_records([r.id for r in doomed])
            self.rebuild_index(generation)
            for rec in doomed:
                if not self.store.pool_path_in_use(rec.pool_path):
                    self.storage.delete(rec.pool_path)
                    removed.append(rec.filename)
        if removed:
            log.info("retention removed %s", ", ".join(removed))
        return removed

    def discard_staged(self, job_id: int) -> None:
        for path in self.store.drop_staged(job_id):
            Path(path).unlink(missing_ok=True)
        for folder in (self.incoming / "staged").glob(f"{job_id}.*"):
            shutil.rmtree(folder, ignore_errors=True)

    def remove(self, name: str, version: str | None, arch: str | None) -> list[str]:
        """Take archives out of the repository: the index first, then the pool."""
        with self._index_lock():
            generation, removed = self.store.remove_packages(name, version, arch)
            if not removed:
                raise NotFound(f"the repository holds no {name}"
                               + (f" {version}" if version else "")
                               + (f" for {arch}" if arch else ""), package=name)
        self.rebuild_index(generation)
        for rec in removed:
            if not self.store.pool_path_in_use(rec.pool_path):
                self.storage.delete(rec.pool_path)
        return sorted({rec.filename for rec in removed})

    def _receive_checked(self, stream: IO[bytes], sha256: str, content_length: int | None
                         ) -> tuple[Path, debrepo.Digests]:
        """Stream the body to a temporary file and check its size and sha256."""
        sha256 = (sha256 or "").strip().lower()
        if not SHA256_RE.fullmatch(sha256):
            raise BadRequest("sha256 must be 64 hexadecimal digits", field="sha256")
        limit = self.settings.master.max_upload_bytes
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(f"archive is larger than the limit of {limit} bytes",
                                  limit=limit)
        tmp, digests = self._receive(stream, limit)
        try:
            if digests.sha256 != sha256:
                raise Unprocessable(
                    f"checksum mismatch: the request says sha256 {sha256}, the body has "
                    f"{digests.sha256}", field="sha256")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, digests

    def _receive(self, stream: IO[bytes], limit: int) -> tuple[Path, debrepo.Digests]:
        """Write the body to a temporary file beside the pool, hashing it as it arrives."""
        fd, name = tempfile.mkstemp(dir=self.incoming, prefix="upload-", suffix=".part")
        path = Path(name)
        md5 = hashlib.md5(usedforsecurity=False)
        sha1 = hashlib.sha1(usedforsecurity=False)
        sha256 = hashlib.sha256()
        try:
            size = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        break
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
        return path, debrepo.Digests(size, md5.hexdigest(), sha1.hexdigest(),
                                     sha256.hexdigest())

    def _check_names(self, info: debrepo.ArchiveInfo, debname: debian.DebName,
                     expected: Expected | None) -> None:
        actual = (info.name, debian.strip_epoch(info.version), info.arch)
        if actual != (debname.name, debname.version, debname.arch):
            raise Unprocessable(
                f"the file is named {debname.filename} but its control file says "
                f"{info.name} {info.version} {info.arch}", field="filename")
        served = set(self.repo.architectures) | {"all"}
        if info.arch not in served:
            raise Unprocessable(
                f"architecture {info.arch} is not served by this repository "
                f"(it serves {', '.join(sorted(served))})", field="arch")
        if expected is not None:
            wanted = (expected.name, debian.strip_epoch(expected.version), expected.arch)
            if actual != wanted:
                raise Unprocessable(
                    f"this build produces {expected.name} {expected.version} {expected.arch}, "
                    f"not {info.name} {info.version} {info.arch}", field="filename")

    def _publish(self, tmp: Path, key: str, info: debrepo.ArchiveInfo,
                 digests: debrepo.Digests, uploader: str | None,
                 job_id: int | None) -> UploadReceipt:
        filename = key.rsplit("/", 1)[1]
        with self._index_lock():
            existing = self.store.package_by_filename(filename)
            if existing is not None:
                # A job's archive is published once: a later attempt of the same job (the first
                # one uploaded, then lost its lease) finds it there and goes on.
                same_job = job_id is not None and existing.job_id == job_id
                if existing.sha256 != digests.sha256 and not same_job:
                    raise Conflict(
                        f"{filename} is already published with different content "
                        f"(sha256 {existing.sha256}); bump the version to publish a change",
                        filename=filename)
                return UploadReceipt(filename=filename, pool_path=existing.pool_path,
                                     sha256=existing.sha256, size=existing.size,
                                     already_present=True)
            self.storage.put_file(tmp, key)
            generation = self.store.add_packages([self._record(
                name=info.name, version=info.version, arch=info.arch, filename=filename,
                pool_path=key, size=digests.size, sha256=digests.sha256,
                stanza=debrepo.stanza(info, key, digests), uploaded_by=uploader,
                job_id=job_id)])
        log.info("published %s (%d bytes) from %s", key, digests.size, uploader)
        self.rebuild_index(generation)
        self.apply_retention({(info.name, info.arch)})
        return UploadReceipt(filename=filename, pool_path=key, sha256=digests.sha256,
                             size=digests.size)

    # -- index ---------------------------------------------------------------------------------

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        with open(self.lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def rebuild_index(self, at_least: int | None = None, full: bool = False) -> bool:
        """Write the index if it is older than generation ``at_least`` (always if None).

        Returns whether this call wrote it. A caller whose change was already folded into a
        rebuild that another process just wrote returns at once. ``full`` renders every
        group again from the recorded packages (recovery, or a first start).
        """
        with self._index_lock():
            if at_least is not None and self.store.index_generation() >= at_least:
                return False
            generation = self.store.packages_generation()
            if full or at_least is None:
                self.index.write(full=True)
            else:
                self.index.write()
            self.store.set_index_generation(generation)
        if self.signer is not None:
            self.storage.put_bytes(KEY_FILE, self.signer.public_key())
        return True
