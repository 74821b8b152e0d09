"""master/formats/deb/index.py and master/repository.py: the APT index and accepting uploads."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import lzma
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from debian.deb822 import Deb822

from common.config import RepositorySettings, Settings, settings_from_dict
from common.errors import BadRequest, Conflict, PayloadTooLarge, Unprocessable
from common.messages import UploadReceipt
from master.formats import IndexContext
from master.formats.deb import index as debindex
from master.formats.deb.index import IndexWriter
from master.repository import Repository
from master.storage import LocalStorage
from master.store import IndexKey, NewPackage, PackageRecord, PlannedJob, Store, group_of

_ids = itertools.count(1)


def record(name: str, version: str, arch: str) -> PackageRecord:
    upstream = version.split(":", 1)[-1]
    filename = f"{name}_{upstream}_{arch}.deb"
    pool_path = f"pool/main/{name[0]}/{name}/{filename}"
    sha = hashlib.sha256(filename.encode()).hexdigest()
    stanza = (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
              f"Maintainer: Jane Doe <jane@example.org>\nFilename: {pool_path}\nSize: 100\n"
              f"SHA256: {sha}\nDescription: {name}\n")
    return PackageRecord(id=next(_ids), format="deb", suite="stable", component="main",
                         grp=group_of(name), name=name, version=version, arch=arch,
                         filename=filename, pool_path=pool_path, size=100, sha256=sha,
                         entry=stanza, uploaded_at=0.0, uploaded_by="tests", job_id=None)


def new(rec: PackageRecord) -> NewPackage:
    return NewPackage(format=rec.format, suite=rec.suite, component=rec.component,
                      name=rec.name, version=rec.version, arch=rec.arch, filename=rec.filename,
                      pool_path=rec.pool_path, size=rec.size, sha256=rec.sha256,
                      entry=rec.entry, uploaded_by=rec.uploaded_by, job_id=rec.job_id,
                      uploaded_at=rec.uploaded_at)


def versions(records: list[PackageRecord]) -> dict[str, str]:
    return {r.name: r.version for r in records}


# -- newest ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0-1", "1.0-1+b1"),
        ("1.0-1+b1", "1.0.1-1"),
        ("1.0-1", "1.0.1-1"),
        ("9.9-1", "1:0.1-1"),
        ("1.0~rc1-1", "1.0-1"),
        ("1.9-1", "1.10-1"),
        ("1.0-9", "1.0-10"),
        ("2.0~~-1", "2.0~-1"),
    ],
)
def test_newest_picks_the_highest_debian_version(older: str, newer: str) -> None:
    recs = [record("hello", older, "amd64"), record("hello", newer, "amd64")]
    for order in (recs, recs[::-1]):
        assert versions(debindex.newest(order, "amd64")) == {"hello": newer}


def test_newest_over_many_versions_in_any_order() -> None:
    chain = ["0.9-1", "1.0~rc1-1", "1.0-1", "1.0-1+b1", "1.0.1-1", "1:0.1-1"]
    recs = [record("hello", v, "amd64") for v in chain]
    rng = random.Random(1234)
    for _ in range(10):
        rng.shuffle(recs)
        assert debindex.newest(recs, "amd64")[0].version == "1:0.1-1"


def test_all_packages_appear_in_every_arch_index() -> None:
    recs = [record("common", "1.0-1", "all"), record("tool", "2.0-1", "amd64"),
            record("armonly", "3.0-1", "arm64"), record("alpha", "1-1", "arm64"),
            record("alpha", "1-1", "amd64")]
    amd = debindex.newest(recs, "amd64")
    arm = debindex.newest(recs, "arm64")
    assert [r.name for r in amd] == ["alpha", "common", "tool"]  # sorted by name
    assert [(r.name, r.arch) for r in arm] == [("alpha", "arm64"), ("armonly", "arm64"),
                                               ("common", "all")]
    assert debindex.newest(recs, "riscv64") == [recs[0]]


def test_newest_of_nothing() -> None:
    assert debindex.newest([], "amd64") == []
    assert debindex.render_group([], "amd64").plain == b""


# -- render_release --------------------------------------------------------------------------


def parse_release(text: str) -> tuple[dict[str, str], dict[str, dict[str, tuple[str, int]]]]:
    """Top-level fields, and per checksum section: file name -> (digest, size)."""
    fields: dict[str, str] = {}
    sums: dict[str, dict[str, tuple[str, int]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith(" "):
            assert current is not None, f"continuation line outside a section: {line!r}"
            digest, size, name = line.split()
            sums[current][name] = (digest, int(size))
        else:
            key, _, value = line.partition(":")
            value = value.strip()
            if value:
                fields[key] = value
                current = None
            else:
                current = key
                sums[key] = {}
    return fields, sums


def test_render_release_lists_every_file() -> None:
    repo = RepositorySettings(suite="trixie", component="main",
                              architectures=("amd64", "arm64"), origin="Acme", label="AcmeL")
    files = {
        "main/binary-amd64/Packages": b"Package: a\n",
        "main/binary-amd64/Packages.gz": gzip.compress(b"Package: a\n", mtime=0),
        "main/binary-arm64/Packages": b"",
    }
    text = debindex.render_release(repo, "trixie", files, date=0).decode()
    fields, sums = parse_release(text)
    assert fields["Origin"] == "Acme"
    assert fields["Label"] == "AcmeL"
    assert fields["Suite"] == "trixie"
    assert fields["Codename"] == "trixie"
    assert fields["Architectures"] == "amd64 arm64"
    assert fields["Components"] == "main"
    assert fields["Date"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert fields["Acquire-By-Hash"] == "yes"
    assert set(sums) == {"MD5Sum", "SHA1", "SHA256"}
    for title, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256")):
        assert set(sums[title]) == set(files)
        for name, data in files.items():
            assert sums[title][name] == (hashlib.new(algo, data).hexdigest(), len(data))


# -- the incremental index writer -------------------------------------------------------------


def write_index(tmp_path: Path, repo: RepositorySettings, recs: list[PackageRecord],
                full: bool = True) -> tuple[Path, Store]:
    """Record ``recs`` in a real store and write the index through a LocalStorage."""
    store = Store(tmp_path / "state.db")
    store.packages.add([new(r) for r in recs])
    writer(tmp_path, repo, store).write(store.packages.dirty(), full=full)
    return tmp_path / "repo" / "dists" / repo.suite, store


def writer(tmp_path: Path, repo: RepositorySettings, store: Store) -> IndexWriter:
    settings = Settings(repository=repo)
    return IndexWriter(IndexContext(settings, store, LocalStorage(tmp_path / "repo"), None))


def test_index_writes_packages_gz_xz_release_and_by_hash(tmp_path: Path) -> None:
    repo = RepositorySettings(architectures=("amd64", "arm64"))
    recs = [record("hello", "1.0-1", "amd64"), record("hello", "1.1-1", "amd64"),
            record("hello", "1.0-1", "arm64"), record("common", "2.0-1", "all")]
    dists, _ = write_index(tmp_path, repo, recs)

    index_files = {f"main/binary-{a}/{n}" for a in ("amd64", "arm64")
                   for n in ("Packages", "Packages.gz", "Packages.xz", "Release")}
    on_disk = {p.relative_to(dists).as_posix() for p in dists.rglob("*")
               if p.is_file() and "by-hash" not in p.parts}
    assert on_disk == index_files | {"Release"}  # no temporary leftovers, unsigned

    for arch, wanted in (("amd64", {"common": "2.0-1", "hello": "1.1-1"}),
                         ("arm64", {"common": "2.0-1", "hello": "1.0-1"})):
        base = dists / "main" / f"binary-{arch}"
        packages = (base / "Packages").read_bytes()
        assert gzip.decompress((base / "Packages.gz").read_bytes()) == packages
        assert lzma.decompress((base / "Packages.xz").read_bytes()) == packages
        stanzas = list(Deb822.iter_paragraphs(packages.decode()))
        assert {s["Package"]: s["Version"] for s in stanzas} == wanted
        arch_release = Deb822((base / "Release").read_text())
        assert arch_release["Architecture"] == arch
        assert arch_release["Archive"] == "stable"
        for name in ("Packages", "Packages.gz", "Packages.xz"):
            data = (base / name).read_bytes()
            by_hash = base / "by-hash" / "SHA256" / hashlib.sha256(data).hexdigest()
            assert by_hash.read_bytes() == data

    fields, sums = parse_release((dists / "Release").read_text())
    assert fields["Architectures"] == "amd64 arm64"
    assert fields["Acquire-By-Hash"] == "yes"
    for title, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256")):
        assert set(sums[title]) == index_files
        for name, (digest, size) in sums[title].items():
            data = (dists / name).read_bytes()
            assert digest == hashlib.new(algo, data).hexdigest()
            assert size == len(data)


def test_index_of_an_empty_repository(tmp_path: Path) -> None:
    dists, _ = write_index(tmp_path, RepositorySettings(), [])
    base = dists / "main" / "binary-amd64"
    assert (base / "Packages").read_bytes() == b""
    assert gzip.decompress((base / "Packages.gz").read_bytes()) == b""
    assert lzma.decompress((base / "Packages.xz").read_bytes()) == b""
    assert (dists / "Release").is_file()


def test_incremental_write_equals_full_write(tmp_path: Path) -> None:
    """Rendering only the dirty groups gives the same files as rendering everything."""
    repo = RepositorySettings(architectures=("amd64",))
    recs = [record(f"pkg{i:03d}", "1.0-1", "amd64") for i in range(300)]
    dists, store = write_index(tmp_path / "a", repo, recs)
    newer = record("pkg007", "1.1-1", "amd64")
    store.packages.clear_dirty(store.packages.dirty())
    store.packages.add([new(newer)])
    dirty = store.packages.dirty()
    assert dirty == {IndexKey("deb", "stable", "main", group_of("pkg007"))}
    assert writer(tmp_path / "a", repo, store).write(dirty) == ["stable"]
    full, _ = write_index(tmp_path / "b", repo, [*recs, newer])
    for name in ("Packages", "Packages.gz", "Packages.xz"):
        got = (dists / "main/binary-amd64" / name).read_bytes()
        assert got == (full / "main/binary-amd64" / name).read_bytes(), name
    versions_listed = {s["Package"]: s["Version"] for s in Deb822.iter_paragraphs(
        (dists / "main/binary-amd64/Packages").read_text())}
    assert versions_listed["pkg007"] == "1.1-1"
    assert len(versions_listed) == 300


def test_xz_stream_of_many_blocks_is_one_valid_stream() -> None:
    pieces = [f"Package: p{i}\nVersion: 1\n\n".encode() * (i + 1) for i in range(20)]
    data = debindex.xz_stream([debindex.xz_block(p) for p in pieces])
    assert lzma.decompress(data) == b"".join(pieces)
    assert subprocess.run(["xz", "-t"], input=data).returncode == 0
    assert lzma.decompress(debindex.xz_stream([])) == b""


# -- Repository: accepting uploads -----------------------------------------------------------

MakeDeb = Callable[..., Path]


class Farm:
    def __init__(self, tmp_path: Path, **master: Any) -> None:
        self.data = tmp_path / "data"
        self.settings = settings_from_dict({
            "master": {"data_dir": str(self.data), **master},
            "repository": {"architectures": ["amd64"]},
        })
        self.store = Store(self.data / "state.db")
        self.repo = Repository(self.settings, self.store)
        self.root = self.data / "repo"
        self.incoming = self.data / "incoming"

    def upload(self, path: Path, filename: str | None = None, sha256: str | None = None,
               **kwargs: Any) -> UploadReceipt:
        data = path.read_bytes()
        with open(path, "rb") as stream:
            return self.repo.accept_upload(
                stream, filename if filename is not None else path.name,
                sha256 if sha256 is not None else hashlib.sha256(data).hexdigest(),
                uploader="w1", **kwargs)

    def pool_files(self) -> dict[str, bytes]:
        pool = self.root / "pool"
        return {p.relative_to(self.root).as_posix(): p.read_bytes()
                for p in pool.rglob("*") if p.is_file()} if pool.exists() else {}

    def packages_index(self) -> list[Deb822]:
        path = self.root / "dists" / "stable" / "main" / "binary-amd64" / "Packages"
        if not path.exists():
            return []
        return list(Deb822.iter_paragraphs(path.read_text()))

    def assert_unchanged(self, pool_before: dict[str, bytes]) -> None:
        assert self.pool_files() == pool_before
        assert list(self.incoming.iterdir()) == []


@pytest.fixture
def farm(tmp_path: Path) -> Farm:
    return Farm(tmp_path)


def test_accept_upload_publishes_into_pool_and_index(farm: Farm, make_deb: MakeDeb) -> None:
    deb = make_deb("hello", "1.0-1", "amd64")
    data = deb.read_bytes()
    receipt = farm.upload(deb)
    key = "pool/main/h/hello/hello_1.0-1_amd64.deb"
    assert receipt.filename == "hello_1.0-1_amd64.deb"
    assert receipt.pool_path == key
    assert receipt.sha256 == hashlib.sha256(data).hexdigest()
    assert receipt.size == len(data)
    assert receipt.already_present is False
    assert farm.pool_files() == {key: data}
    assert list(farm.incoming.iterdir()) == []

    (stanza,) = farm.packages_index()
    assert stanza["Package"] == "hello"
    assert stanza["Version"] == "1.0-1"
    assert stanza["Architecture"] == "amd64"
    assert stanza["Filename"] == key
    assert stanza["Size"] == str(len(data))
    assert stanza["SHA256"] == hashlib.sha256(data).hexdigest()
    assert stanza["MD5sum"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert stanza["SHA1"] == hashlib.sha1(data, usedforsecurity=False).hexdigest()

    dists = farm.root / "dists" / "stable"
    _, sums = parse_release((dists / "Release").read_text())
    packages = (dists / "main" / "binary-amd64" / "Packages").read_bytes()
    assert sums["SHA256"]["main/binary-amd64/Packages"] == (
        hashlib.sha256(packages).hexdigest(), len(packages))

    (rec,) = farm.store.packages.all()
    assert (rec.name, rec.version, rec.arch, rec.uploaded_by) == ("hello", "1.0-1", "amd64", "w1")
    assert farm.store.packages.index_generation() == 1


def test_newer_upload_replaces_the_index_entry(farm: Farm, make_deb: MakeDeb) -> None:
    farm.upload(make_deb("hello", "1.0-1", "amd64"))
    farm.upload(make_deb("hello", "1.0-1+b1", "amd64"))
    farm.upload(make_deb("common", "0.1-1", "all"))
    assert sorted(farm.pool_files()) == ["pool/main/c/common/common_0.1-1_all.deb",
                                         "pool/main/h/hello/hello_1.0-1+b1_amd64.deb",
                                         "pool/main/h/hello/hello_1.0-1_amd64.deb"]
    assert {s["Package"]: s["Version"] for s in farm.packages_index()} == {
        "common": "0.1-1", "hello": "1.0-1+b1"}


def test_epoch_is_kept_in_the_index_not_the_file_name(farm: Farm, make_deb: MakeDeb) -> None:
    deb = make_deb("libfoo", "2:1.0-1", "amd64")
    assert deb.name == "libfoo_1.0-1_amd64.deb"
    receipt = farm.upload(deb)
    assert receipt.pool_path == "pool/main/libf/libfoo/libfoo_1.0-1_amd64.deb"
    (stanza,) = farm.packages_index()
    assert stanza["Version"] == "2:1.0-1"


def test_wrong_sha256_is_refused(farm: Farm, make_deb: MakeDeb) -> None:
    deb = make_deb("hello", "1.0-1", "amd64")
    with pytest.raises(Unprocessable) as info:
        farm.upload(deb, sha256="0" * 64)
    assert info.value.details["field"] == "sha256"
    assert info.value.status == 422
    farm.assert_unchanged({})
    assert farm.store.packages.all() == []


@pytest.mark.parametrize("sha256", ["xyz", "0" * 63, "g" * 64, ""])
def test_malformed_sha256_is_a_bad_request(farm: Farm, make_deb: MakeDeb, sha256: str) -> None:
    with pytest.raises(BadRequest) as info:
        farm.upload(make_deb("hello", "1.0-1", "amd64"), sha256=sha256)
    assert info.value.details["field"] == "sha256"
    farm.assert_unchanged({})


def test_uppercase_sha256_is_accepted(farm: Farm, make_deb: MakeDeb) -> None:
    deb = make_deb("hello", "1.0-1", "amd64")
    receipt = farm.upload(deb, sha256=hashlib.sha256(deb.read_bytes()).hexdigest().upper())
    assert receipt.already_present is False


def test_not_a_deb_is_refused(farm: Farm, tmp_path: Path) -> None:
    fake = tmp_path / "hello_1.0-1_amd64.deb"
    fake.write_bytes(b"this is not an ar archive\n" * 10)
    with pytest.raises(Unprocessable, match="not a valid Debian archive"):
        farm.upload(fake)
    farm.assert_unchanged({})


def test_truncated_deb_is_refused(farm: Farm, make_deb: MakeDeb, tmp_path: Path) -> None:
    data = make_deb("hello", "1.0-1", "amd64", payload=bytes(range(256)) * 64).read_bytes()
    cut = tmp_path / "cut" / "hello_1.0-1_amd64.deb"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(Unprocessable):
        farm.upload(cut)
    farm.assert_unchanged({})


@pytest.mark.parametrize("filename", [
    "../hello_1.0-1_amd64.deb", "sub/hello_1.0-1_amd64.deb", "/tmp/hello_1.0-1_amd64.deb",
    "..\\hello_1.0-1_amd64.deb", "..", "hello.deb", "hello_1.0-1_amd64.rpm", "",
    "Hello_1.0-1_amd64.deb", "hello_1.0-1_amd64.deb\0",
])
def test_bad_filenames_are_bad_requests(farm: Farm, make_deb: MakeDeb, filename: str) -> None:
    with pytest.raises(BadRequest) as info:
        farm.upload(make_deb("hello", "1.0-1", "amd64"), filename=filename)
    assert info.value.details["field"] == "filename"
    farm.assert_unchanged({})
    assert not (farm.data / "hello_1.0-1_amd64.deb").exists()
    assert not (farm.data.parent / "hello_1.0-1_amd64.deb").exists()


def test_filename_with_a_trailing_newline_is_a_bad_request(farm: Farm,
                                                           make_deb: MakeDeb) -> None:
    with pytest.raises(BadRequest):
        farm.upload(make_deb("hello", "1.0-1", "amd64"), filename="hello_1.0-1_amd64.deb\n")
    farm.assert_unchanged({})


@pytest.mark.parametrize("filename", [
    "hello_1.0-2_amd64.deb", "other_1.0-1_amd64.deb", "hello_1.0-1_all.deb",
])
def test_filename_must_match_the_control_file(farm: Farm, make_deb: MakeDeb,
                                              filename: str) -> None:
    with pytest.raises(Unprocessable) as info:
        farm.upload(make_deb("hello", "1.0-1", "amd64"), filename=filename)
    assert info.value.details["field"] == "filename"
    farm.assert_unchanged({})


def test_unserved_architecture_is_refused(farm: Farm, make_deb: MakeDeb) -> None:
    with pytest.raises(Unprocessable) as info:
        farm.upload(make_deb("hello", "1.0-1", "arm64"))
    assert info.value.details["field"] == "arch"
    farm.assert_unchanged({})


def test_staged_upload_must_match_the_job(farm: Farm, make_deb: MakeDeb) -> None:
    _, (job_id,) = farm.store.jobs.create_build(["hello"], None, "tests", [
        PlannedJob("hello", "1.0-2", "amd64", b"snapshot")])
    assert farm.store.jobs.claim(job_id, 1, "w1", "w1", "token-hash", 60)
    job = farm.store.jobs.get(job_id)
    assert job is not None
    deb = make_deb("hello", "1.0-1", "amd64")
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    with pytest.raises(Unprocessable), open(deb, "rb") as stream:
        farm.repo.stage_upload(stream, deb.name, sha, job=job)
    farm.assert_unchanged({})
    good = make_deb("hello", "1.0-2", "amd64")
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    with open(good, "rb") as stream:
        farm.repo.stage_upload(stream, good.name, sha, job=job)
    assert farm.pool_files() == {}  # staged, not published before the report
    assert farm.repo.publish_job(job, {good.name: sha}, "w1") == [good.name]
    (rec,) = farm.store.packages.all()
    assert (rec.job_id, rec.version) == (job_id, "1.0-2")


def test_same_archive_twice_is_already_present(farm: Farm, make_deb: MakeDeb) -> None:
    deb = make_deb("hello", "1.0-1", "amd64")
    first = farm.upload(deb)
    pool = farm.pool_files()
    second = farm.upload(deb)
    assert second.already_present is True
    assert (second.filename, second.pool_path, second.sha256, second.size) == (
        first.filename, first.pool_path, first.sha256, first.size)
    farm.assert_unchanged(pool)
    assert len(farm.store.packages.all()) == 1


def test_different_content_under_the_same_name_conflicts(farm: Farm, make_deb: MakeDeb) -> None:
    farm.upload(make_deb("hello", "1.0-1", "amd64", payload=b"first\n"))
    pool = farm.pool_files()
    index_before = farm.packages_index()
    other = make_deb("hello", "1.0-1", "amd64", payload=b"second\n")
    assert other.name == "hello_1.0-1_amd64.deb"
    with pytest.raises(Conflict) as info:
        farm.upload(other)
    assert info.value.status == 409
    assert info.value.details["filename"] == "hello_1.0-1_amd64.deb"
    farm.assert_unchanged(pool)
    assert farm.packages_index() == index_before
    assert len(farm.store.packages.all()) == 1


def test_body_larger_than_the_limit(tmp_path: Path, make_deb: MakeDeb) -> None:
    small = Farm(tmp_path, max_upload_bytes=100)
    deb = make_deb("hello", "1.0-1", "amd64")
    assert deb.stat().st_size > 100
    with pytest.raises(PayloadTooLarge) as info:  # found while streaming
        small.upload(deb)
    assert info.value.status == 413
    assert info.value.details["limit"] == 100
    small.assert_unchanged({})
    with pytest.raises(PayloadTooLarge):  # announced by Content-Length
        small.upload(deb, content_length=deb.stat().st_size)
    small.assert_unchanged({})
    assert small.store.packages.all() == []


def test_body_at_the_limit_is_accepted(tmp_path: Path, make_deb: MakeDeb) -> None:
    deb = make_deb("hello", "1.0-1", "amd64")
    exact = Farm(tmp_path, max_upload_bytes=deb.stat().st_size)
    assert exact.upload(deb, content_length=deb.stat().st_size).already_present is False


def test_empty_body_is_a_bad_request(farm: Farm) -> None:
    with pytest.raises(BadRequest, match="empty"):
        farm.repo.accept_upload(io.BytesIO(b""), "hello_1.0-1_amd64.deb",
                                hashlib.sha256(b"").hexdigest(), uploader="w1")
    farm.assert_unchanged({})


def test_rebuild_index_skips_when_up_to_date(farm: Farm, make_deb: MakeDeb) -> None:
    farm.upload(make_deb("hello", "1.0-1", "amd64"))
    generation = farm.store.packages.index_generation()
    assert generation == farm.store.packages.generation()
    assert farm.repo.rebuild_index(generation) is False
    assert farm.repo.rebuild_index() is True
    assert farm.store.packages.index_generation() == generation
