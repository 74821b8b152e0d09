"""Hostile tarballs are refused on every extraction path, with and without tarfile's filters.

Each hostile tarball is fed to `safe_extract` both ways (the project's checks with member-by-
member extraction, and the checks followed by a filtering tarfile), to `check_tarball`, and to
every place that unpacks something from outside: a definition snapshot, a Debian source
snapshot, a git tree shipped in a snapshot, and a Debian source's own tarball, which
dpkg-source unpacks once the worker has checked it. Each must be refused, and nothing may
appear outside the target folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from common import tarballs
from common.definition import unpack_snapshot
from common.errors import BuildFailed, UnsafeArchive
from common.formats.deb.source import DebianSource, unpack_debian_source
from common.tarballs import TarWriter, safe_extract

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"x\n", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _dir(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def _special(name: str, kind: bytes, linkname: str = "", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def make_tar(members: list[Member], compression: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


#: Hostile tarballs by what they try. Some start with a harmless member, so that the refusal
#: comes after something was unpacked.
HOSTILE: dict[str, list[Member]] = {
    "absolute path": [_file("ok.txt"), _file("/OUTSIDE/abs.txt")],
    "dot-dot": [_file("ok.txt"), _file("sub/../../OUTSIDE/dotdot.txt")],
    "absolute symlink": [_special("link", tarfile.SYMTYPE, "/etc")],
    "symlink climbing out": [_special("link", tarfile.SYMTYPE, "../OUTSIDE")],
    "write through a symlink": [_special("link", tarfile.SYMTYPE, "../OUTSIDE"),
                                _file("link/through.txt")],
    "symlink to itself, then out": [_special("here", tarfile.SYMTYPE, "."),
                                    _special("up", tarfile.SYMTYPE, "here/..")],
    # Chains: each link, judged alone against the tree as it stands when it is made, stays
    # inside; together they lead out.
    "symlink chain made inside out": [_special("p", tarfile.SYMTYPE, "q/r"),
                                      _special("b", tarfile.SYMTYPE, "p/../.."),
                                      _special("q", tarfile.SYMTYPE, ".")],
    "symlink through a link made later": [_special("up", tarfile.SYMTYPE, "here/.."),
                                          _special("here", tarfile.SYMTYPE, ".")],
    "two levels up through a link made later": [
        _special("up2", tarfile.SYMTYPE, "here/here/../.."),
        _special("here", tarfile.SYMTYPE, ".")],
    "file written through a link chain": [
        _special("here", tarfile.SYMTYPE, "."),
        _special("victim", tarfile.SYMTYPE, "here/../OUTSIDE/target.txt"),
        _file("victim", b"overwritten\n")],
    "member through a link made earlier": [
        _special("here", tarfile.SYMTYPE, "."),
        _special("door", tarfile.SYMTYPE, "here/../OUTSIDE"),
        _file("door/through.txt")],
    "symlink replacing a folder": [_dir("d"), _file("d/f"),
                                   _special("d", tarfile.SYMTYPE, "here/.."),
                                   _special("here", tarfile.SYMTYPE, ".")],
    "hard link to a symlink": [_special("here", tarfile.SYMTYPE, "."),
                               _special("up", tarfile.SYMTYPE, "here/../OUTSIDE/target.txt"),
                               _special("hard", tarfile.LNKTYPE, "up")],
    "hard link before its file": [_special("hard", tarfile.LNKTYPE, "later.txt"),
                                  _file("later.txt")],
    "hard link out": [_special("hard", tarfile.LNKTYPE, "../OUTSIDE/target.txt")],
    "absolute hard link": [_special("hard", tarfile.LNKTYPE, "/etc/passwd")],
    "character device": [_special("null", tarfile.CHRTYPE)],
    "block device": [_special("disk", tarfile.BLKTYPE)],
    "fifo": [_special("pipe", tarfile.FIFOTYPE)],
    "setuid file": [_file("suid", b"#!/bin/sh\n", 0o4755)],
    "setgid folder": [_dir("sgid", 0o2755)],
}

#: What a refusal's message says, whichever check refused.
REFUSED = (r"absolute|climbs|outside|device|FIFO|setuid|points|replace|passes through|"
           r"in the way")

MODES = [pytest.param(False, id="own-checks"),
         pytest.param(True, id="with-filters",
                      marks=pytest.mark.skipif(not tarballs.HAS_FILTERS,
                                               reason="no tarfile with filters installed"))]


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path, Callable[[], list[str]]]:
    """A target folder, an OUTSIDE folder beside it with one file, and a function listing
    everything under OUTSIDE (which must stay exactly as it was)."""
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    (outside / "target.txt").write_text("keep\n")
    dest = tmp_path / "dest"

    def outside_now() -> list[str]:
        return sorted(str(p.relative_to(outside)) for p in outside.rglob("*"))

    return dest, outside, outside_now


def test_filters_are_available_on_every_supported_python():
    # Debian 12's Python 3.11.2 lacks them; the backports.tarfile dependency brings them.
    assert tarballs.HAS_FILTERS


@pytest.mark.parametrize("use_filters", MODES)
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_safe_extract_refuses(name, use_filters, arena):
    dest, outside, outside_now = arena
    before = outside_now()
    with pytest.raises(UnsafeArchive, match=REFUSED) as refused:
        safe_extract(make_tar(HOSTILE[name]), dest, use_filters=use_filters)
    assert refused.value.status == 422 and refused.value.message
    assert outside_now() == before
    assert (outside / "target.txt").read_text() == "keep\n"
    for path in dest.rglob("*"):
        # What was unpacked before the refusal stays inside and is harmless.
        assert os.path.realpath(path).startswith(str(dest.resolve()))
        assert not path.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_check_tarball_refuses_without_unpacking(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeArchive, match=REFUSED):
        tarballs.check_tarball(make_tar(HOSTILE[name]))
    assert list(tmp_path.iterdir()) == []


ORDINARY = [
    _dir("./src/"),
    _file("src/run.sh", b"#!/bin/sh\necho hi\n", 0o775),
    _file("./src/data.txt", b"data\n", 0o666),
    _special("src/link", tarfile.SYMTYPE, "data.txt"),
    _special("src/hard", tarfile.LNKTYPE, "./src/data.txt"),
    # Links to links, some made before what they point to, and a link up to a sibling.
    _special("src/first", tarfile.SYMTYPE, "second"),
    _special("src/second", tarfile.SYMTYPE, "../doc/readme"),
    _special("top", tarfile.SYMTYPE, "src"),
    _special("deep", tarfile.SYMTYPE, "top/../top/first"),
    _dir("doc"),
    _file("doc/readme", b"read me\n"),
    _special("doc/nested/up", tarfile.SYMTYPE, "../../src"),
]


@pytest.mark.parametrize("use_filters", MODES)
def test_safe_extract_unpacks_ordinary_trees(use_filters, tmp_path):
    dest = tmp_path / "dest"
    safe_extract(make_tar(ORDINARY), dest, use_filters=use_filters)
    assert (dest / "src/run.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert os.access(dest / "src/run.sh", os.X_OK)
    # Group and others lose write; the extracting user owns everything.
    assert stat.S_IMODE((dest / "src/data.txt").stat().st_mode) == 0o644
    assert (dest / "src/data.txt").stat().st_uid == os.geteuid()
    assert os.readlink(dest / "src/link") == "data.txt"
    assert (dest / "src/hard").read_text() == "data\n"
    assert (dest / "src/hard").stat().st_ino == (dest / "src/data.txt").stat().st_ino
    assert (dest / "deep").read_text() == "read me\n"
    assert (dest / "doc/nested/up/link").read_text() == "data\n"
    assert tarballs.check_tarball(make_tar(ORDINARY)) == len(ORDINARY)


@pytest.mark.parametrize("use_filters", MODES)
@pytest.mark.parametrize("name", ["symlink through a link made later",
                                  "two levels up through a link made later",
                                  "symlink chain made inside out"])
def test_links_are_followed_on_disk_once_made(name, use_filters, arena, monkeypatch):
    """The last line: were the archive-wide reading of the links wrong, following each link
    on disk once all are made still refuses the chain."""
    dest, outside, outside_now = arena
    monkeypatch.setattr(tarballs, "_resolve", lambda links, start, target: ".")
    monkeypatch.setattr(tarballs, "_climbs_out", lambda relative: False)
    before = outside_now()
    with pytest.raises(UnsafeArchive, match="leads outside the folder through the archive's "
                                            "other links"):
        safe_extract(make_tar(HOSTILE[name]), dest, use_filters=use_filters)
    assert outside_now() == before
    assert (outside / "target.txt").read_text() == "keep\n"
    # The links it made are gone again: nothing is left to lead out.
    assert [p for p in dest.rglob("*") if p.is_symlink()] == []


@pytest.mark.parametrize("use_filters", MODES)
def test_a_link_never_replaces_what_is_already_there(use_filters, tmp_path):
    dest = tmp_path / "dest"
    (dest / "d").mkdir(parents=True)
    (dest / "f").write_text("mine\n")
    for name in ("d", "f"):
        with pytest.raises(UnsafeArchive, match="in the way"):
            safe_extract(make_tar([_special(name, tarfile.SYMTYPE, ".")]), dest,
                         use_filters=use_filters)
    assert (dest / "d").is_dir() and not (dest / "d").is_symlink()
    assert (dest / "f").read_text() == "mine\n"


@pytest.mark.parametrize("use_filters", MODES)
def test_links_already_in_the_folder_are_followed(use_filters, arena):
    dest, outside, outside_now = arena
    dest.mkdir()
    (dest / "old").symlink_to(outside)
    before = outside_now()
    for members in ([_file("old/new.txt")], [_special("old/new", tarfile.SYMTYPE, ".")]):
        with pytest.raises(UnsafeArchive, match="outside the folder"):
            safe_extract(make_tar(members), dest, use_filters=use_filters)
    assert outside_now() == before


def test_symlink_loops_are_refused_clearly():
    with pytest.raises(UnsafeArchive, match="loop"):
        tarballs.check_tarball(make_tar([_special("a", tarfile.SYMTYPE, "b/x"),
                                         _special("b", tarfile.SYMTYPE, "a/y")]))


@pytest.mark.parametrize("use_filters", MODES)
def test_garbage_is_refused_with_a_clear_error(use_filters, tmp_path):
    with pytest.raises(UnsafeArchive, match="cannot be unpacked"):
        safe_extract(b"not a tarball at all", tmp_path / "dest", use_filters=use_filters)


def test_tar_writer_is_deterministic():
    def write() -> bytes:
        with TarWriter(mtime=1234) as tar:
            tar.add_dir("d")
            tar.add_file("d/f", b"content", 0o755)
        return tar.data

    first = write()
    assert first == write()
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = {m.name: m for m in tar}
    assert members["d/f"].mtime == 1234 and members["d/f"].uname == "root"
    assert stat.S_IMODE(members["d/f"].mode) == 0o755


# -- every place that unpacks a tarball from outside -------------------------------------------


def _unpack_definition(data: bytes, dest: Path) -> None:
    unpack_snapshot(data, dest)


def _unpack_debian_source(data: bytes, dest: Path) -> None:
    unpack_debian_source(data, dest)


def _unpack_git_tree(data: bytes, dest: Path) -> None:
    from worker.formats.deb.source import _fetch_git

    files = dest.parent / "files"
    files.mkdir()
    (files / "git-tree.tar").write_bytes(data)
    src = DebianSource(name="hostile", version="1.0-1", architecture=("any",),
                       binaries=(("hostile", "any"),), build_depends=(), origin="git",
                       location="/nowhere.git", revision="0" * 40)
    _fetch_git(src, dest, io.StringIO(), files, timeout=60)


def _dsc(files: Path, tarballs_by_name: dict[str, bytes]) -> DebianSource:
    """A .dsc in ``files`` listing the given tarballs (written beside it), and its source."""
    lines = []
    for tar_name, data in tarballs_by_name.items():
        (files / tar_name).write_bytes(data)
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {tar_name}\n")
    (files / "hostile_1.0-1.dsc").write_text(
        "Format: 3.0 (quilt)\nSource: hostile\nBinary: hostile\nArchitecture: any\n"
        "Version: 1.0-1\nChecksums-Sha256:\n" + "".join(lines))
    return DebianSource(name="hostile", version="1.0-1", architecture=("any",),
                        binaries=(("hostile", "any"),), build_depends=(), origin="dsc",
                        location=str(files / "hostile_1.0-1.dsc"))


DEBIAN_TAR = make_tar([_dir("debian"), _file("debian/control", b"Source: hostile\n"),
                       _dir("debian/source"), _file("debian/source/format", b"3.0 (quilt)\n")],
                      "xz")


def _unpack_dsc_tarball(data: bytes, dest: Path) -> None:
    from worker.formats.deb.source import fetch

    files = dest.parent / "files"
    files.mkdir()
    src = _dsc(files, {"hostile_1.0.orig.tar.gz": data,
                       "hostile_1.0-1.debian.tar.xz": DEBIAN_TAR})
    fetch(src, dest, io.StringIO(), files, timeout=60)


#: Each path: how it unpacks, the compression it takes, what it raises, and what its
#: message must say besides.
PATHS = {"definition snapshot": (_unpack_definition, "gz", UnsafeArchive, ""),
         "debian source snapshot": (_unpack_debian_source, "gz", UnsafeArchive, ""),
         "git tree": (_unpack_git_tree, "", BuildFailed, "the git tree of hostile"),
         "debian source tarball": (_unpack_dsc_tarball, "gz", BuildFailed,
                                   "hostile_1.0.orig.tar.gz is refused before dpkg-source")}


@pytest.mark.parametrize("use_filters", MODES)
@pytest.mark.parametrize("path_name", sorted(PATHS))
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_extraction_path_refuses(name, path_name, use_filters, arena, monkeypatch):
    dest, outside, outside_now = arena
    unpack, compression, error, says = PATHS[path_name]
    monkeypatch.setattr(tarballs, "HAS_FILTERS", use_filters)
    before = outside_now()
    with pytest.raises(error, match=REFUSED) as refused:
        unpack(make_tar(HOSTILE[name], compression), dest)
    assert says in refused.value.message
    assert outside_now() == before
    assert (outside / "target.txt").read_text() == "keep\n"


# -- a Debian source's tarballs, before dpkg-source --------------------------------------------


@pytest.mark.parametrize("which", ["hostile_1.0-1.debian.tar.xz",
                                   "hostile_1.0.orig-extra.tar.bz2",
                                   "hostile_1.0.orig.tar.lzma"])
def test_every_tarball_of_a_dsc_is_checked(which, tmp_path):
    """Not only the upstream tarball: the debian one and components too, in each compression
    dpkg-source reads; dpkg-source never runs on a refused one."""
    from worker.formats.deb.source import fetch

    benign = make_tar([_dir("hostile-1.0"), _file("hostile-1.0/README")], "gz")
    compression = {"xz": "xz", "bz2": "bz2", "lzma": "xz"}[which.rsplit(".", 1)[-1]]
    hostile = make_tar(HOSTILE["symlink through a link made later"], compression)
    if which.endswith(".lzma"):  # lzma-alone, as old sources have it
        import lzma

        hostile = lzma.compress(make_tar(HOSTILE["symlink through a link made later"], ""),
                                format=lzma.FORMAT_ALONE)
    tars = {"hostile_1.0.orig.tar.gz": benign, "hostile_1.0-1.debian.tar.xz": DEBIAN_TAR,
            which: hostile}
    files = tmp_path / "files"
    files.mkdir()
    src = _dsc(files, tars)
    out = io.StringIO()
    with pytest.raises(BuildFailed, match=f"{which} is refused before dpkg-source unpacks "
                                          "it: symbolic link 'up' leads outside"):
        fetch(src, tmp_path / "src", out, files, timeout=60)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(
        ["hostile_1.0-1.dsc", *tars])


def test_a_dsc_whose_tarballs_pass_lists_them_all(tmp_path):
    from worker.formats.deb.source import check_source_tarballs

    tars = {"hostile_1.0.orig.tar.gz": make_tar(ORDINARY, "gz"),
            "hostile_1.0.orig-extra.tar.bz2": make_tar(ORDINARY, "bz2"),
            "hostile_1.0-1.debian.tar.xz": DEBIAN_TAR}
    _dsc(tmp_path, tars)
    (tmp_path / "hostile_1.0.orig.tar.gz.asc").write_text("not a tarball\n")
    assert check_source_tarballs(tmp_path / "hostile_1.0-1.dsc") == list(tars)


@pytest.mark.parametrize("name, says", [
    ("hostile_1.0.orig.tar.zst", "compressed with 'zst', which the worker cannot check"),
    ("hostile_1.0.orig.tar.gz", "cannot be read"),
])
def test_a_tarball_the_worker_cannot_read_is_refused(name, says, tmp_path):
    from worker.formats.deb.source import check_source_tarballs

    _dsc(tmp_path, {name: b"\x28\xb5\x2f\xfd not really anything"})
    with pytest.raises(BuildFailed, match=says):
        check_source_tarballs(tmp_path / "hostile_1.0-1.dsc")


def test_a_tarball_listed_only_in_files_is_checked_too(tmp_path):
    from worker.formats.deb.source import check_source_tarballs

    data = make_tar(HOSTILE["absolute symlink"], "gz")
    (tmp_path / "hostile_1.0.orig.tar.gz").write_bytes(data)
    (tmp_path / "hostile_1.0-1.dsc").write_text(
        "Format: 3.0 (quilt)\nSource: hostile\nVersion: 1.0-1\nFiles:\n"
        f" {hashlib.md5(data, usedforsecurity=False).hexdigest()} {len(data)} "
        "hostile_1.0.orig.tar.gz\n")
    with pytest.raises(BuildFailed, match="absolute path"):
        check_source_tarballs(tmp_path / "hostile_1.0-1.dsc")
