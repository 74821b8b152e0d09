"""The storage backends, each test run against LocalStorage and against S3Storage.

S3 is a real S3-compatible HTTP server (moto's server mode) in a process of its own, started
once for the session (tests/s3server.py); each test gets a bucket of its own.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from common.config import settings_from_dict
from master import storage as storagemod
from master.migrate import copy_order, migrate
from master.storage import LocalStorage, S3Storage, Storage, storage_from_settings
from tests.s3server import MotoServer

pytest.importorskip("boto3")

BACKENDS = ["local", "s3", "s3-prefixed"]


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    return moto_server.create_bucket(f"t-{uuid.uuid4().hex[:24]}")


@pytest.fixture
def make_s3(moto_server: MotoServer, bucket: str) -> Iterator[Callable[..., S3Storage]]:
    made: list[S3Storage] = []

    def make(prefix: str = "", bucket_name: str | None = None, **options: Any) -> S3Storage:
        store = S3Storage(bucket_name or bucket, prefix=prefix,
                          **{**moto_server.storage_options(), **options})
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "repo")
    make_s3 = request.getfixturevalue("make_s3")
    store: S3Storage = make_s3("debian/" if request.param == "s3-prefixed" else "")
    return store


@pytest.fixture
def new_file(tmp_path: Path) -> Callable[[bytes], Path]:
    folder = tmp_path / "incoming"
    folder.mkdir()

    def new(data: bytes) -> Path:
        path = folder / f"upload-{uuid.uuid4().hex}.part"
        path.write_bytes(data)
        return path

    return new


def sha256_of(storage: Storage, key: str) -> str:
    sha = hashlib.sha256()
    with storage.open(key) as fh:
        while chunk := fh.read(65536):
            sha.update(chunk)
    return sha.hexdigest()


# -- the Storage interface, the same on every backend -----------------------------------------


def test_put_bytes_then_get_exists_size(storage: Storage) -> None:
    key = "dists/stable/main/binary-amd64/Packages"
    assert not storage.exists(key)
    storage.put_bytes(key, b"Package: hello\n")
    assert storage.exists(key)
    assert storage.get(key) == b"Package: hello\n"
    assert storage.size(key) == len(b"Package: hello\n")
    with storage.open(key) as fh:
        assert fh.read() == b"Package: hello\n"


def test_put_bytes_replaces_and_empty_files_work(storage: Storage) -> None:
    storage.put_bytes("dists/stable/Release", b"old")
    storage.put_bytes("dists/stable/Release", b"new content")
    assert storage.get("dists/stable/Release") == b"new content"
    storage.put_bytes("dists/stable/Release", b"")
    assert storage.exists("dists/stable/Release")
    assert storage.get("dists/stable/Release") == b""
    assert storage.size("dists/stable/Release") == 0


def test_delete(storage: Storage) -> None:
    storage.put_bytes("pool/main/h/hello/hello_1.0_amd64.deb", b"x")
    storage.delete("pool/main/h/hello/hello_1.0_amd64.deb")
    assert not storage.exists("pool/main/h/hello/hello_1.0_amd64.deb")
    storage.delete("pool/main/h/hello/hello_1.0_amd64.deb")  # absent: nothing happens


def test_missing_key_is_file_not_found(storage: Storage) -> None:
    key = "dists/stable/InRelease"
    assert not storage.exists(key)
    for read in (storage.get, storage.open, storage.size, storage.local_path):
        with pytest.raises(FileNotFoundError) as info:
            read(key)
        assert info.value.errno in (None, errno.ENOENT)
    assert storage.list("dists/") == []


def test_put_file_consumes_the_source(storage: Storage,
                                      new_file: Callable[[bytes], Path]) -> None:
    src = new_file(b"an archive\n")
    storage.put_file(src, "pool/main/h/hello/hello_1.0_amd64.deb")
    assert not src.exists()
    assert storage.get("pool/main/h/hello/hello_1.0_amd64.deb") == b"an archive\n"
    again = new_file(b"replaced\n")
    storage.put_file(again, "pool/main/h/hello/hello_1.0_amd64.deb")
    assert not again.exists()
    assert storage.get("pool/main/h/hello/hello_1.0_amd64.deb") == b"replaced\n"


def test_open_streams_a_large_file(storage: Storage, new_file: Callable[[bytes], Path]) -> None:
    # Larger than boto3's multipart threshold (8 MiB), so S3 gets a multipart upload.
    data = os.urandom(9 * 1024 * 1024 + 123)
    storage.put_file(new_file(data), "pool/main/b/big/big_1.0_amd64.deb")
    assert storage.size("pool/main/b/big/big_1.0_amd64.deb") == len(data)
    assert sha256_of(storage, "pool/main/b/big/big_1.0_amd64.deb") == (
        hashlib.sha256(data).hexdigest())
    with storage.open("pool/main/b/big/big_1.0_amd64.deb") as fh:
        assert fh.readable()
        assert fh.read(10) == data[:10]  # closing early is fine
    assert fh.closed


def test_list_by_prefix_with_modification_times(storage: Storage) -> None:
    keys = [
        "dists/stable/InRelease",
        "dists/stable/main/binary-amd64/Packages",
        "dists/stable/main/binary-amd64/by-hash/SHA256/" + "a" * 64,
        "dists/stable/main/binary-amd64/by-hash/SHA256/" + "b" * 64,
        "dists/stable-backports/Release",
        "pool/main/h/hello/hello_1.0_amd64.deb",
    ]
    before = time.time()
    for key in keys:
        storage.put_bytes(key, key.encode())
    after = time.time()
    listing = storage.list("")
    assert [k for k, _ in listing] == sorted(keys)
    for _, mtime in listing:  # S3 keeps whole seconds
        assert before - 2 <= mtime <= after + 2
    assert [k for k, _ in storage.list("dists/stable/")] == sorted(keys[:4])
    assert [k for k, _ in storage.list("dists/stable/main/binary-amd64/by-hash/SHA256/")] == (
        sorted(keys[2:4]))
    # A plain string prefix, as S3 has it: not only whole folders.
    assert [k for k, _ in storage.list("dists/stable")] == sorted(keys[:5])
    assert [k for k, _ in storage.list("pool/")] == [keys[5]]
    assert storage.list("nothing/here/") == []
    storage.delete(keys[0])
    assert keys[0] not in dict(storage.list("dists/"))


def test_keys_cannot_leave_the_repository(storage: Storage) -> None:
    for key in ("../escape", "/etc/passwd", "pool/../../escape"):
        with pytest.raises(ValueError):
            storage.put_bytes(key, b"x")
        with pytest.raises(ValueError):
            storage.get(key)
    with pytest.raises(ValueError):
        storage.list("../")


def test_local_path_only_on_this_machine(storage: Storage) -> None:
    storage.put_bytes("dists/stable/Release", b"release")
    if isinstance(storage, LocalStorage):
        assert storage.local_path("dists/stable/Release").read_bytes() == b"release"
    else:
        with pytest.raises(FileNotFoundError):
            storage.local_path("dists/stable/Release")


def test_url_is_presigned_on_s3_and_none_locally(storage: Storage) -> None:
    storage.put_bytes("pool/main/h/hello/hello_1.0_amd64.deb", b"archive bytes")
    url = storage.url("pool/main/h/hello/hello_1.0_amd64.deb", expires=60)
    if isinstance(storage, LocalStorage):
        assert url is None
        return
    assert url is not None
    assert "X-Amz-Signature=" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == b"archive bytes"
    assert "X-Amz-Expires=60" in url
    missing = storage.url("pool/main/h/hello/hello_9.9_amd64.deb", expires=60)
    assert missing is not None
    assert requests.get(missing, timeout=10).status_code == 404


# -- S3 only --------------------------------------------------------------------------------


def test_s3_prefix_isolation(make_s3: Callable[..., S3Storage], moto_server: MotoServer,
                             bucket: str) -> None:
    debian = make_s3("debian")
    same = make_s3("/debian/")
    other = make_s3("debian2/")
    whole = make_s3("")
    debian.put_bytes("dists/stable/Release", b"one")
    assert same.get("dists/stable/Release") == b"one"
    assert not other.exists("dists/stable/Release")
    assert other.list("") == []
    assert [k for k, _ in whole.list("")] == ["debian/dists/stable/Release"]
    other.put_bytes("dists/stable/Release", b"two")
    assert debian.get("dists/stable/Release") == b"one"
    assert [k for k, _ in debian.list("")] == ["dists/stable/Release"]
    debian.delete("dists/stable/Release")
    assert other.get("dists/stable/Release") == b"two"
    client = moto_server.client()
    try:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    finally:
        client.close()
    assert keys == ["debian2/dists/stable/Release"]


def test_s3_list_pages_through_many_keys(make_s3: Callable[..., S3Storage]) -> None:
    store = make_s3("p")
    store.page_size = 4
    keys = [f"dists/stable/main/by-hash/SHA256/{i:064x}" for i in range(15)]
    for key in keys:
        store.put_bytes(key, b"")
    store.put_bytes("pool/other", b"")
    calls: list[dict[str, Any]] = []
    store.client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params))
    assert [k for k, _ in store.list("dists/")] == keys
    assert len(calls) == 4  # 4 + 4 + 4 + 3


def test_s3_read_errors_become_oserrors(make_s3: Callable[..., S3Storage]) -> None:
    from botocore.exceptions import ResponseStreamingError

    class BrokenBody:
        def read(self, amt: int | None = None) -> bytes:
            raise ResponseStreamingError(error="connection reset")

        def close(self) -> None:
            pass

    store = make_s3()
    stream = io.BufferedReader(storagemod._S3Body(BrokenBody(), "s3://b/k", store._errors))
    with pytest.raises(OSError, match="reading s3://b/k failed"):
        stream.read()


def test_s3_errors_are_oserrors_naming_bucket_and_key(
        make_s3: Callable[..., S3Storage], new_file: Callable[[bytes], Path]) -> None:
    store = make_s3("debian", bucket_name="no-such-bucket")
    key = "pool/main/h/hello/hello_1.0_amd64.deb"
    src = new_file(b"archive")
    for call in (lambda: store.put_bytes(key, b"x"), lambda: store.put_file(src, key),
                 lambda: store.get(key), lambda: store.list("pool/"), store.check):
        with pytest.raises(OSError) as info:
            call()
        assert "no-such-bucket" in str(info.value)
    with pytest.raises(OSError, match=r"no-such-bucket/debian/pool/main/h/hello/hello_1\.0"):
        store.put_file(src, key)
    assert src.exists()  # a failed upload leaves the file to its owner


def test_s3_unreachable_server_is_an_oserror(make_s3: Callable[..., S3Storage]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = make_s3(endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(OSError, match=r"s3://t-[0-9a-f]+/dists/stable/Release"):
        store.get("dists/stable/Release")


def test_s3_check_and_missing_bucket(make_s3: Callable[..., S3Storage]) -> None:
    make_s3().check()
    with pytest.raises(OSError, match="does not exist"):
        make_s3(bucket_name="no-such-bucket").check()


def test_s3_needs_both_credentials_or_neither(moto_server: MotoServer) -> None:
    with pytest.raises(ValueError, match="secret_access_key"):
        S3Storage("b", endpoint_url=moto_server.endpoint_url, access_key_id="only-the-id")
    with pytest.raises(ValueError):
        S3Storage("")


def test_storage_from_settings(tmp_path: Path, moto_server: MotoServer, bucket: str) -> None:
    local = storage_from_settings(settings_from_dict({"master": {"data_dir": str(tmp_path)}}))
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path / "repo"
    settings = settings_from_dict({"master": {"data_dir": str(tmp_path)},
                                   "storage": moto_server.settings(bucket, prefix="deb")})
    s3 = storage_from_settings(settings)
    assert isinstance(s3, S3Storage)
    try:
        s3.put_bytes("dists/stable/Release", b"r")
        assert s3.prefix == "deb/"
        assert s3.get("dists/stable/Release") == b"r"
    finally:
        s3.close()


# -- LocalStorage only ----------------------------------------------------------------------


def test_local_put_file_from_another_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 new_file: Callable[[bytes], Path]) -> None:
    store = LocalStorage(tmp_path / "repo")
    src = new_file(b"from elsewhere")
    real_replace = os.replace

    def cross_device(a: Any, b: Any) -> None:
        if Path(a) == src:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(a, b)

    monkeypatch.setattr(storagemod.os, "replace", cross_device)
    store.put_file(src, "pool/main/h/hello/hello_1.0_amd64.deb")
    assert not src.exists()
    assert store.get("pool/main/h/hello/hello_1.0_amd64.deb") == b"from elsewhere"
    folder = tmp_path / "repo" / "pool/main/h/hello"
    assert sorted(p.name for p in folder.iterdir()) == ["hello_1.0_amd64.deb"]
    assert oct((folder / "hello_1.0_amd64.deb").stat().st_mode & 0o777) == "0o644"


def test_local_list_leaves_out_unfinished_writes(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "repo")
    store.put_bytes("dists/stable/Release", b"r")
    (tmp_path / "repo" / "dists" / "stable" / ".InRelease.x1y2").write_bytes(b"partial")
    assert [k for k, _ in store.list("")] == ["dists/stable/Release"]


# -- migration ------------------------------------------------------------------------------


def fill(storage: Storage, new_file: Callable[[bytes], Path]) -> dict[str, bytes]:
    """A small published repository: a pool, indexes, by-hash copies, signatures."""
    packages = b"Package: hello\nVersion: 1.0\n"
    files = {
        "pool/main/h/hello/hello_1.0_amd64.deb": os.urandom(3 * 1024 * 1024),
        "pool/main/w/world/world_2.0_all.deb": b"tiny archive",
        "dists/stable/main/binary-amd64/Packages": packages,
        "dists/stable/main/binary-amd64/by-hash/SHA256/"
        + hashlib.sha256(packages).hexdigest(): packages,
        "dists/stable/main/binary-amd64/Release": b"Archive: stable\n",
        "dists/stable/Release": b"Origin: pkgfarm\n",
        "dists/stable/Release.gpg": b"signature",
        "dists/stable/InRelease": b"signed Origin: pkgfarm\n",
    }
    for key, data in files.items():
        if key.startswith("pool/"):
            storage.put_file(new_file(data), key)
        else:
            storage.put_bytes(key, data)
    return files


def contents(storage: Storage) -> dict[str, bytes]:
    return {key: storage.get(key) for key, _ in storage.list("")}


def test_migrate_local_to_s3_and_back(tmp_path: Path, make_s3: Callable[..., S3Storage],
                                      new_file: Callable[[bytes], Path]) -> None:
    local = LocalStorage(tmp_path / "before")
    files = fill(local, new_file)
    s3 = make_s3("debian/")
    out = io.StringIO()
    assert migrate(local, s3, out, tmp_dir=tmp_path) == len(files)
    assert contents(s3) == files
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{len(files)} file(s) to look at")
    steps = [line.split()[0] for line in lines[1:-1]]
    assert steps == [f"[{n}/{len(files)}]" for n in range(1, len(files) + 1)]
    copied = [line.split()[2] for line in lines[1:-1] if line.split()[1] == "copied"]
    assert sorted(copied) == sorted(files)
    # Pool first, index files next, each suite's Release files last.
    assert copied[:2] == sorted(k for k in files if k.startswith("pool/"))
    assert copied[-3:] == ["dists/stable/InRelease", "dists/stable/Release",
                           "dists/stable/Release.gpg"]
    total = sum(len(data) for data in files.values())
    assert f"{len(files)} copied ({total} bytes), 0 already present" in out.getvalue()
    assert list(tmp_path.glob("pkgfarm-migrate-*")) == []

    # Idempotent: nothing to copy again; a changed key is copied again.
    again = io.StringIO()
    assert migrate(local, s3, again) == 0
    assert f"0 copied (0 bytes), {len(files)} already present" in again.getvalue()
    assert again.getvalue().count(" already there ") == len(files)
    local.put_bytes("dists/stable/InRelease", b"signed again")
    assert migrate(local, s3, None) == 1
    assert s3.get("dists/stable/InRelease") == b"signed again"
    files["dists/stable/InRelease"] = b"signed again"

    back = LocalStorage(tmp_path / "after")
    assert migrate(s3, back, io.StringIO()) == len(files)
    assert contents(back) == files
    assert sha256_of(back, "pool/main/h/hello/hello_1.0_amd64.deb") == hashlib.sha256(
        files["pool/main/h/hello/hello_1.0_amd64.deb"]).hexdigest()
    assert migrate(s3, back, io.StringIO()) == 0


def test_migrate_replaces_a_different_copy_of_the_same_size(
        tmp_path: Path, make_s3: Callable[..., S3Storage]) -> None:
    source = make_s3("src")
    dest = LocalStorage(tmp_path / "dest")
    source.put_bytes("dists/stable/Release", b"right")
    dest.put_bytes("dists/stable/Release", b"wrong")
    dest.put_bytes("dists/stable/Extra", b"kept")
    assert migrate(source, dest, io.StringIO()) == 1
    assert dest.get("dists/stable/Release") == b"right"
    assert dest.get("dists/stable/Extra") == b"kept"  # never deletes


class CorruptingStorage(LocalStorage):
    """Writes every file with one byte changed, as a faulty backend might."""

    def put_file(self, src: Path, key: str) -> None:
        data = bytearray(src.read_bytes())
        data[0] ^= 0xFF
        src.unlink()
        self.put_bytes(key, bytes(data))


def test_migrate_verifies_each_copy(tmp_path: Path, make_s3: Callable[..., S3Storage]) -> None:
    source = make_s3()
    source.put_bytes("pool/main/h/hello/hello_1.0_amd64.deb", b"archive")
    with pytest.raises(OSError, match=r"pool/main/h/hello/hello_1\.0_amd64\.deb reads back"):
        migrate(source, CorruptingStorage(tmp_path / "dest"), io.StringIO())


def test_copy_order() -> None:
    keys = ["dists/stable/InRelease", "dists/stable/main/binary-amd64/Packages",
            "pool/main/h/hello/hello_1.0_amd64.deb", "dists/stable/Release",
            "dists/stable/main/binary-amd64/by-hash/SHA256/ab",
            "dists/stable/main/binary-amd64/Release"]
    assert sorted(keys, key=copy_order) == [
        "pool/main/h/hello/hello_1.0_amd64.deb",
        "dists/stable/main/binary-amd64/by-hash/SHA256/ab",
        "dists/stable/main/binary-amd64/Packages",
        "dists/stable/main/binary-amd64/Release",
        "dists/stable/InRelease",
        "dists/stable/Release",
    ]
