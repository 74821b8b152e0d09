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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common import debian
from common.config import Settings
from common.errors import BadRequest, Conflict, PayloadTooLarge, Unprocessable
from common.messages import UploadReceipt
from master import debrepo
from master.storage import LocalStorage, Storage
from master.store import Store

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
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
    def __init__(self, settings: Settings, store: Store, storage: Storage | None = None) -> None:
        self.settings = settings
        self.repo = settings.repository
        self.store = store
        data_dir = Path(settings.master.data_dir)
        self.storage: Storage = storage or LocalStorage(data_dir / "repo")
        self.incoming = data_dir / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.lock_path = data_dir / "index.lock"

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
        debname = check_filename(filename)
        sha256 = (sha256 or "").strip().lower()
        if not SHA256_RE.fullmatch(sha256):
            raise BadRequest("sha256 must be 64 hexadecimal digits", field="sha256")
        limit = self.settings.master.max_upload_bytes
        if content_length is not None and content_length > limit:
            raise PayloadTooLarge(f"archive is larger than the limit of {limit} bytes",
                                  limit=limit)
        tmp = self._receive(stream, limit)
        try:
            digests = self._digest_file(tmp, limit)
            if digests.sha256 != sha256:
                raise Unprocessable(
                    f"checksum mismatch: the request says sha256 {sha256}, the body has "
                    f"{digests.sha256}", field="sha256")
            info = debrepo.inspect(tmp)
            self._check_names(info, debname, expected)
            key = debrepo.pool_key(info, self.repo.component)
            receipt = self._publish(tmp, key, info, digests, uploader, job_id)
        finally:
            tmp.unlink(missing_ok=True)
        return receipt

    def _receive(self, stream: IO[bytes], limit: int) -> Path:
        fd, name = tempfile.mkstemp(dir=self.incoming, prefix="upload-", suffix=".part")
        path = Path(name)
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
            if size == 0:
                raise BadRequest("the request body is empty; send the archive as the body")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _digest_file(path: Path, limit: int) -> debrepo.Digests:
        md5 = hashlib.md5(usedforsecurity=False)
        sha1 = hashlib.sha1(usedforsecurity=False)
        sha256 = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                size += len(chunk)
                md5.update(chunk)
                sha1.update(chunk)
                sha256.update(chunk)
        return debrepo.Digests(size, md5.hexdigest(), sha1.hexdigest(), sha256.hexdigest())

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
            generation = self.store.add_package({
                "name": info.name, "version": info.version, "arch": info.arch,
                "filename": filename, "pool_path": key, "size": digests.size,
                "sha256": digests.sha256, "stanza": debrepo.stanza(info, key, digests),
                "uploaded_at": time.time(), "uploaded_by": uploader, "job_id": job_id,
            })
        log.info("published %s (%d bytes) from %s", key, digests.size, uploader)
        self.rebuild_index(generation)
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

    def rebuild_index(self, at_least: int | None = None) -> bool:
        """Write the index if it is older than generation ``at_least`` (always if None).

        Returns whether this call wrote it. A caller whose upload was already folded into a
        rebuild that another process just wrote returns at once.
        """
        with self._index_lock():
            if at_least is not None and self.store.index_generation() >= at_least:
                return False
            generation, records = self.store.snapshot_for_index()
            debrepo.write_index(self.storage, self.repo, records)
            self.store.set_index_generation(generation)
        return True
