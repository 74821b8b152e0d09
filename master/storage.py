"""Where the repository's files live, behind one small interface.

`LocalStorage` keeps them under ``data_dir/repo``; every write lands under a temporary name in
the same folder, is flushed to disk, and is renamed into place, so a reader sees the old file or
the new one, never a part. `S3Storage` keeps them in an S3 bucket (AWS, MinIO, Ceph, …) under
an optional key prefix; an S3 PUT is atomic too: a reader gets the old object or the new one.

Keys are relative, ``/``-separated paths such as ``pool/main/h/hello/hello_1.0_amd64.deb`` or
``dists/stable/InRelease``. Errors of a backend surface as `OSError` (`FileNotFoundError` for a
missing key, `PermissionError` for a refused one); a key that would leave the repository raises
`ValueError`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import mimetypes
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

if TYPE_CHECKING:
    from common.config import Settings

#: What `Storage.list` returns: (key, modification time in seconds since the epoch), by key.
Listing = list[tuple[str, float]]

#: Bytes per read when streaming.
CHUNK = 1024 * 1024


class Storage(Protocol):
    def put_file(self, src: Path, key: str) -> None:
        """Publish the file ``src`` (which is consumed) at ``key``, atomically."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Publish ``data`` at ``key``, atomically."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens if it is absent."""

    def get(self, key: str) -> bytes:
        """The whole content of ``key`` (for small files such as indexes)."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of ``key`` (for large files); the caller closes it."""

    def size(self, key: str) -> int:
        """The size of ``key`` in bytes."""

    def list(self, prefix: str = "") -> Listing:
        """Every key that starts with ``prefix`` (a plain string prefix, as S3 has it), sorted,
        with its modification time."""

    def url(self, key: str, expires: int = 3600) -> str | None:
        """A URL that serves ``key`` to anyone for ``expires`` seconds, or None if this backend
        has none (the master serves the file itself)."""

    def local_path(self, key: str) -> Path:
        """A path on this machine that serves ``key`` (FileNotFoundError if absent)."""


def storage_from_settings(settings: Settings) -> Storage:
    """The storage the settings describe: ``data_dir/repo`` on this machine, or an S3 bucket."""
    conf = settings.storage
    if conf.backend == "local":
        return LocalStorage(Path(settings.master.data_dir) / "repo")
    if conf.backend == "s3":
        if not conf.bucket:
            raise ValueError("storage.bucket is required when storage.backend is s3")
        return S3Storage(
            conf.bucket, prefix=conf.prefix, endpoint_url=conf.endpoint_url,
            region=conf.region, access_key_id=conf.access_key_id,
            secret_access_key=conf.secret_access_key)
    raise ValueError(f"unknown storage backend {conf.backend!r}")


# --------------------------------------------------------------------------------------------
# On this machine


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """Files under ``root``. `list` leaves out dot-files: those are writes not yet finished."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key {key!r} leaves the repository")
        return path

    def _write_atomic(self, dest: Path, write: Callable[[IO[bytes]], object]) -> None:
        """Write through ``write`` into a temporary file beside ``dest``, then rename it."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    def put_file(self, src: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(src, 0o644)
        try:
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # ``src`` is on another file system (a migration's temporary file): copy it in.
            with open(src, "rb") as fh:
                self._write_atomic(dest, lambda out: shutil.copyfileobj(fh, out, CHUNK))
            Path(src).unlink()
            return
        _fsync_dir(dest.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomic(self._path(key), lambda out: out.write(data))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return open(self.local_path(key), "rb")

    def size(self, key: str) -> int:
        return self.local_path(key).stat().st_size

    def list(self, prefix: str = "") -> Listing:
        # Walk only the folder the prefix names, then filter by the plain string prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        root = self.root.resolve()
        base = self._path(folder) if folder else root
        out: Listing = []
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                out.append((key, st.st_mtime))
        out.sort()
        return out

    def url(self, key: str, expires: int = 3600) -> str | None:
        return None

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path


# --------------------------------------------------------------------------------------------
# In an S3 bucket


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"storage key {key!r} leaves the repository or is not a plain path")
    return key


class _S3Body(io.RawIOBase):
    """An object's body as a raw stream whose errors are `OSError`s naming the object."""

    def __init__(self, body: Any, where: str, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self._body = body
        self._where = where
        self._errors = errors

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except self._errors as exc:
            raise OSError(f"reading {self._where} failed: {exc}") from exc
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()


class S3Storage:
    """Objects in ``bucket``, each key under ``prefix`` (such as ``debian/``).

    Credentials are ``access_key_id`` and ``secret_access_key`` if given, else boto3's own
    chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles). ``endpoint_url`` names an S3-compatible
    server (MinIO, Ceph, moto); its bucket is then addressed by path. boto3 is needed only by
    this class (the ``s3`` extra).
    """

    #: keys per page of a listing (S3 gives at most 1000).
    page_size = 1000

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None) -> None:
        if not bucket:
            raise ValueError("an S3 storage needs a bucket")
        if bool(access_key_id) != bool(secret_access_key):
            raise ValueError("give both storage.access_key_id and storage.secret_access_key, "
                             "or neither (boto3 then finds credentials itself)")
        try:
            import boto3  # noqa: F401 (checked here, used in _make_client)
            import botocore.exceptions
        except ImportError as exc:
            raise RuntimeError("the s3 storage backend needs boto3: "
                               "pip install 'pkgfarm[s3]'") from exc
        import urllib3.exceptions
        from boto3.exceptions import Boto3Error

        self.bucket = bucket
        stripped = prefix.strip("/")
        self.prefix = f"{stripped}/" if stripped else ""
        if self.prefix:
            _check_key(stripped)
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self._credentials = (access_key_id or None, secret_access_key or None)
        self._client_error = botocore.exceptions.ClientError
        self._errors: tuple[type[BaseException], ...] = (
            botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, Boto3Error,
            urllib3.exceptions.HTTPError)
        self._client: Any = None
        self._client_pid = 0

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Storage(s3://{self.bucket}/{self.prefix}{where})"

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 client, made again in a forked process (connections are not shared)."""
        if self._client is None or self._client_pid != os.getpid():
            self._client = self._make_client()
            self._client_pid = os.getpid()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"signature_version": "s3v4",
                                   "retries": {"mode": "standard", "max_attempts": 3}}
        if self.endpoint_url:
            options["s3"] = {"addressing_style": "path"}
        access_key, secret_key = self._credentials
        with self._translated("connecting to", ""):
            session = boto3.session.Session(aws_access_key_id=access_key,
                                            aws_secret_access_key=secret_key,
                                            region_name=self.region)
            return session.client("s3", endpoint_url=self.endpoint_url,
                                  config=Config(**options))

    def close(self) -> None:
        """Close the client's connections (a later call opens new ones)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def _full(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    @contextlib.contextmanager
    def _translated(self, action: str, full_key: str) -> Iterator[None]:
        """Turn every boto3, botocore or urllib3 error into an `OSError` naming the object."""
        where = self._where(full_key)
        try:
            yield
        except self._errors as exc:
            raise self._as_oserror(exc, action, where) from exc

    def _as_oserror(self, exc: BaseException, action: str, where: str) -> OSError:
        cause = exc
        if not isinstance(cause, self._client_error) and isinstance(
                cause.__context__, self._client_error):
            cause = cause.__context__  # boto3's S3UploadFailedError wraps the ClientError
        if isinstance(cause, self._client_error):
            response: dict[str, Any] = getattr(cause, "response", {}) or {}
            error = response.get("Error", {})
            code = str(error.get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.get("Message") or code or str(cause)
            if code == "NoSuchBucket":
                return OSError(f"{action} {where} failed: the bucket {self.bucket!r} does not "
                               "exist")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return FileNotFoundError(errno.ENOENT, f"{action} failed: no such key", where)
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return PermissionError(errno.EACCES, f"{action} failed: access denied "
                                       f"({message})", where)
            return OSError(f"{action} {where} failed: {code or status}: {message}")
        return OSError(f"{action} {where} failed: {exc}")

    # -- the Storage interface -----------------------------------------------------------------

    def put_file(self, src: Path, key: str) -> None:
        full = self._full(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._translated("uploading to", full):
            self.client.upload_file(str(src), self.bucket, full,
                                    ExtraArgs={"ContentType": content_type})
        Path(src).unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._translated("writing", full):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                   ContentType=content_type)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        full = self._full(key)
        with self._translated("looking up", full):
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._translated("deleting", full):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def get(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def open(self, key: str) -> BinaryIO:
        full = self._full(key)
        with self._translated("reading", full):
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        raw = _S3Body(body, self._where(full), self._errors)
        return io.BufferedReader(raw, buffer_size=CHUNK)

    def list(self, prefix: str = "") -> Listing:
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"storage prefix {prefix!r} leaves the repository")
        full = self.prefix + prefix
        out: Listing = []
        with self._translated("listing", full):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full,
                PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"][len(self.prefix):]
                    if key and not key.endswith("/"):
                        out.append((key, obj["LastModified"].timestamp()))
        out.sort()
        return out

    def url(self, key: str, expires: int = 3600) -> str | None:
        full = self._full(key)
        with self._translated("presigning", full):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires)
        return url

    def local_path(self, key: str) -> Path:
        raise FileNotFoundError(errno.ENOENT, "an S3 storage has no local path",
                                self._where(self._full(key)))

    def check(self) -> None:
        """Make sure the bucket exists and these credentials reach it (OSError if not)."""
        try:
            with self._translated("checking the bucket", self.prefix):
                self.client.head_bucket(Bucket=self.bucket)
        except FileNotFoundError as exc:  # a HEAD's 404 has no body to say what is missing
            raise OSError(f"checking the bucket {self._where(self.prefix)} failed: the bucket "
                          f"{self.bucket!r} does not exist") from exc
