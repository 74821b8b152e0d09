"""Debian sources: DebianSource's jobs and binaries, snapshots, the machine's apt sources,
resolving references (local .dsc, git, unknown names) and fetching what was resolved."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from debian.deb822 import Dsc

from common.config import Settings, settings_from_dict
from common.definition import parse_definition, snapshot
from common.errors import BuildFailed, DefinitionError, NotFound
from common.formats.deb.apt import AptState, machine_deb_src_lines
from common.formats.deb.policy import first_alternatives, relation_names
from common.formats.deb.resolve import reference_kind, resolve, resolve_with_files
from common.formats.deb.source import (
    GIT_TREE_FILE,
    DebianSource,
    arch_matches,
    is_debian_source_snapshot,
    snapshot_debian_source,
    source_from_control,
    unpack_debian_source,
)
from tests.unit import native_source
from worker.formats.deb.source import binary_kinds, fetch

SERVED = ["amd64", "arm64"]


def dsc_text(architecture: str, package_list: str | None = None, binary: str = "foo",
             extra: str = "") -> str:
    text = (f"Format: 3.0 (quilt)\nSource: foo\nBinary: {binary}\n"
            f"Architecture: {architecture}\nVersion: 1.2-3\n"
            "Maintainer: Jane Doe <jane@example.org>\n"
            "Build-Depends: debhelper-compat (= 13), libfoo-dev [amd64] | libbar-dev, "
            "python3:any <!nocheck>\n"
            "Build-Depends-Indep: sphinx-doc\n")
    if package_list is not None:
        text += "Package-List:\n" + textwrap.indent(textwrap.dedent(package_list).strip(), " ")
        text += "\n"
    text += ("Checksums-Sha256:\n"
             " " + "a" * 64 + " 100 foo_1.2.orig.tar.gz\n"
             " " + "b" * 64 + " 20 foo_1.2-3.debian.tar.xz\n")
    return text + extra


def source(architecture: str, package_list: str | None = None, binary: str = "foo"
           ) -> DebianSource:
    return source_from_control(Dsc(dsc_text(architecture, package_list, binary)), origin="dsc",
                               location="https://example.org/foo_1.2-3.dsc")


# -- DebianSource from control data ------------------------------------------------------------


def test_fields_from_a_dsc() -> None:
    src = source("any all", """
        foo deb utils optional arch=any
        foo-doc deb doc optional arch=all
        foo-udeb udeb debian-installer optional arch=any
    """, binary="foo, foo-doc, foo-udeb")
    assert src.name == "foo"
    assert src.version == "1.2-3"
    assert src.upstream_version == "1.2"
    assert src.architecture == ("any", "all")
    assert src.binaries == (("foo", "any"), ("foo-doc", "all"))  # udebs are not collected
    # Every alternative: a build waits for any farm package its build dependencies name.
    assert src.build_depends == ("debhelper-compat", "libfoo-dev", "libbar-dev", "python3",
                                 "sphinx-doc")
    assert src.files == (("foo_1.2.orig.tar.gz", "a" * 64, 100),
                         ("foo_1.2-3.debian.tar.xz", "b" * 64, 20))


def test_relation_names_take_every_alternative() -> None:
    # The one rule of build order: a job waits for every farm package any alternative names.
    assert relation_names(["aa (>= 1) | bb, cc:native [!amd64], dd <!nocheck>", "",
                           "aa, ee"]) == ["aa", "bb", "cc", "dd", "ee"]
    assert first_alternatives(["aa (>= 1) | bb, cc"]) == ["aa", "cc"]


def test_any_builds_once_per_served_arch() -> None:
    src = source("any", "foo deb utils optional arch=any")
    assert src.build_arches(SERVED) == ["amd64", "arm64"]
    assert src.produces("amd64") == ["foo"]
    assert src.produces("all") == []


def test_all_only_builds_once_as_all() -> None:
    src = source("all", "foo deb utils optional arch=all")
    assert src.build_arches(SERVED) == ["all"]
    assert src.build_arches(SERVED, "arm64") == ["all"]  # a requested arch is ignored
    assert src.produces("all") == ["foo"]
    assert src.produces("amd64") == []


def test_any_and_all_gives_arch_jobs_and_one_all_job() -> None:
    src = source("any all", """
        foo deb utils optional arch=any
        foo-data deb utils optional arch=all
    """)
    assert src.build_arches(SERVED) == ["amd64", "arm64", "all"]
    assert src.build_arches(SERVED, "arm64") == ["arm64"]
    assert src.build_arches(SERVED, "all") == ["all"]
    assert src.produces("arm64") == ["foo"]
    assert src.produces("all") == ["foo-data"]


def test_arch_all_binary_in_package_list_counts_even_if_architecture_lacks_all() -> None:
    src = source("any", """
        foo deb utils optional arch=any
        foo-data deb utils optional arch=all
    """)
    assert src.build_arches(SERVED) == ["amd64", "arm64", "all"]


def test_listed_arches_keep_only_the_served_ones() -> None:
    src = source("amd64 i386", "foo deb utils optional arch=amd64,i386")
    assert src.build_arches(SERVED) == ["amd64"]
    assert src.build_arches(["arm64"]) == []
    assert src.produces("i386") == ["foo"]
    assert src.produces("arm64") == []
    with pytest.raises(DefinitionError, match="not built for arm64"):
        src.build_arches(SERVED, "arm64")


def test_wildcards() -> None:
    assert source("linux-any").build_arches(SERVED) == ["amd64", "arm64"]
    assert source("any-arm64").build_arches(SERVED) == ["arm64"]
    assert source("kfreebsd-any").build_arches(SERVED) == []
    assert arch_matches("armhf", "any-arm")
    assert not arch_matches("all", "any")
    assert arch_matches("all", "all")


def test_unknown_requested_arch_is_refused() -> None:
    with pytest.raises(DefinitionError, match="unknown architecture"):
        source("any").build_arches(SERVED, "amd46")


def test_without_package_list_binary_and_architecture_are_used() -> None:
    src = source("any", None, binary="foo, libfoo1")
    assert src.binaries == (("foo", "any"), ("libfoo1", "any"))
    assert src.produces("arm64") == ["foo", "libfoo1"]
    both = source("any all", None, binary="foo")
    assert both.binaries == (("foo", "any all"),)
    assert both.build_arches(SERVED) == ["amd64", "arm64", "all"]


def test_json_round_trip_ignores_unknown_keys() -> None:
    src = source("any all", "foo deb utils optional arch=any\nfoo-doc deb doc optional arch=all")
    data = json.loads(json.dumps(src.to_json()))
    data["from_the_future"] = 1
    assert DebianSource.from_json(data) == src


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshot_round_trip_with_files(tmp_path: Path) -> None:
    src = source("any")
    files = {"foo_1.2-3.dsc": b"dsc", "foo_1.2.orig.tar.gz": b"\x1f\x8b tarball"}
    data = snapshot_debian_source(src, files)
    assert data == snapshot_debian_source(src, files)  # the same input, the same bytes
    assert is_debian_source_snapshot(data)
    back, folder = unpack_debian_source(data, tmp_path / "x")
    assert back == src
    assert folder is not None
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert (folder / "foo_1.2.orig.tar.gz").read_bytes() == files["foo_1.2.orig.tar.gz"]


def test_snapshot_without_files(tmp_path: Path) -> None:
    data = snapshot_debian_source(source("any"), None)
    back, folder = unpack_debian_source(data, tmp_path / "x")
    assert back.name == "foo"
    assert folder is None


def test_definition_and_debian_source_snapshots_are_told_apart(
        tmp_path: Path, valid_definition: dict[str, Any],
        write_definition: Callable[..., Path]) -> None:
    path = write_definition(tmp_path / "hello.yaml", valid_definition)
    assert not is_debian_source_snapshot(snapshot(parse_definition(path)))
    assert is_debian_source_snapshot(snapshot_debian_source(source("any")))
    assert not is_debian_source_snapshot(b"not a tarball")


def test_snapshot_refuses_paths_in_file_names() -> None:
    with pytest.raises(DefinitionError):
        snapshot_debian_source(source("any"), {"../evil": b""})


# -- the machine's apt sources -----------------------------------------------------------------


def test_machine_deb_src_lines(tmp_path: Path) -> None:
    sources_list = tmp_path / "sources.list"
    sources_list.write_text(textwrap.dedent("""\
        # a comment
        deb [arch=amd64 signed-by=/k/a.gpg] http://a.example/debian bookworm main contrib
        deb-src [signed-by=/k/a.gpg] http://a.example/debian bookworm main contrib
        deb http://b.example/flat ./   # a flat repository
        #deb http://commented.example/debian bookworm main
        deb http://broken.example/debian
        """))
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(textwrap.dedent("""\
        Types: deb
        URIs: http://deb.example/debian
        Suites: bookworm bookworm-updates
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        Types: deb deb-src
        URIs: http://off.example/debian
        Suites: bookworm
        Components: main
        Enabled: no

        Types: deb
        URIs: http://inline.example/debian
        Suites: stable
        Components: main
        Signed-By:
         -----BEGIN PGP PUBLIC KEY BLOCK-----
         .
         mQINBGR0aW5lMQ==
         -----END PGP PUBLIC KEY BLOCK-----
        """))
    (parts / "other.list").write_text("deb http://c.example/debian sid main\n")
    (parts / "ignored.list.disabled").write_text("deb http://d.example/debian sid main\n")

    lines = machine_deb_src_lines(sources_list, parts)
    assert lines == [
        "deb-src [signed-by=/k/a.gpg] http://a.example/debian bookworm main contrib",
        "deb-src http://b.example/flat ./",
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.example/debian bookworm main",
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.example/debian bookworm-updates main",
        "deb-src http://c.example/debian sid main",
    ]
    # An inline key is written out when there is a folder for it.
    with_keys = machine_deb_src_lines(sources_list, parts, keyring_dir=tmp_path / "keys")
    inline = [ln for ln in with_keys if "inline.example" in ln]
    assert len(inline) == 1
    key_file = Path(inline[0].split("signed-by=", 1)[1].split("]", 1)[0])
    assert key_file.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n")


def test_machine_deb_src_lines_without_files(tmp_path: Path) -> None:
    assert machine_deb_src_lines(tmp_path / "none.list", tmp_path / "none.d") == []


def test_apt_state_writes_only_its_own_folder(tmp_path: Path) -> None:
    line = native_source.flat_sources_repo(tmp_path / "repo")
    state = AptState(tmp_path / "state", [line], architectures=["amd64"])
    assert state.age() is None
    state.update()
    assert state.age() is not None
    assert not state.update_if_older(3600)
    shown = state.cache("showsrc", "pkgfarm-other").stdout
    assert "Package: pkgfarm-other" in shown
    # New sources: the old lists say nothing of them, so the next call updates.
    again = AptState(tmp_path / "state", [line, line.replace("repo", "repo2")])
    assert again.age() is None


# -- resolving ---------------------------------------------------------------------------------


def test_reference_kinds() -> None:
    assert reference_kind("hello") == "apt"
    assert reference_kind("https://example.org/pool/h/hello_2.10-3.dsc") == "dsc-url"
    assert reference_kind("/srv/hello_2.10-3.dsc") == "dsc-path"
    assert reference_kind("hello_2.10-3.dsc") == "dsc-path"
    assert reference_kind("git+https://salsa.debian.org/debian/hello") == "git"
    assert reference_kind("https://salsa.debian.org/debian/hello.git") == "git"
    assert reference_kind("https://salsa.debian.org/debian/hello.git#debian/sid") == "git"
    assert reference_kind("./hello") == "git"


def test_resolve_a_local_dsc(tmp_path: Path) -> None:
    dsc = native_source.make_dsc(tmp_path)
    src, files = resolve_with_files(str(dsc), Settings(), tmp_path / "state")
    assert src.name == "pkgfarm-tiny"
    assert src.version == "1.0"
    assert src.origin == "dsc"
    assert src.location == str(dsc)
    assert src.architecture == ("any", "all")
    assert src.binaries == (("pkgfarm-tiny", "any"), ("pkgfarm-tiny-data", "all"))
    assert src.dsc_sha256 == hashlib.sha256(dsc.read_bytes()).hexdigest()
    assert sorted(files) == ["pkgfarm-tiny_1.0.dsc", "pkgfarm-tiny_1.0.tar.xz"]
    assert src.build_arches(SERVED) == ["amd64", "arm64", "all"]
    assert src.produces("amd64") == ["pkgfarm-tiny"]
    assert resolve(str(dsc), Settings(), tmp_path / "state") == src


def test_resolve_a_local_dsc_with_a_damaged_file(tmp_path: Path) -> None:
    dsc = native_source.make_dsc(tmp_path)
    tarball = tmp_path / "pkgfarm-tiny_1.0.tar.xz"
    tarball.write_bytes(tarball.read_bytes() + b"x")
    with pytest.raises(DefinitionError, match="does not match"):
        resolve(str(dsc), Settings(), tmp_path / "state")
    tarball.unlink()
    with pytest.raises(NotFound, match="not beside it"):
        resolve(str(dsc), Settings(), tmp_path / "state")


def test_local_dsc_snapshot_fetches_on_the_worker(tmp_path: Path) -> None:
    dsc = native_source.make_dsc(tmp_path / "master")
    src, files = resolve_with_files(str(dsc), Settings(), tmp_path / "state")
    data = snapshot_debian_source(src, files)
    back, local = unpack_debian_source(data, tmp_path / "job" / "snapshot")
    with open(tmp_path / "log", "w") as out:
        tree = fetch(back, tmp_path / "job" / "src", out, local)
    assert tree == tmp_path / "job" / "src" / "pkgfarm-tiny-1.0"
    assert (tree / "tiny.c").read_text() == native_source.TINY_C
    assert binary_kinds(tree) == (True, True)
    # Its tarball was checked before dpkg-source unpacked it.
    assert "checked pkgfarm-tiny_1.0.tar.xz before dpkg-source" in (tmp_path / "log").read_text()


def test_fetch_refuses_a_changed_local_file(tmp_path: Path) -> None:
    dsc = native_source.make_dsc(tmp_path / "master")
    src, files = resolve_with_files(str(dsc), Settings(), tmp_path / "state")
    damaged = bytearray(files["pkgfarm-tiny_1.0.tar.xz"])
    damaged[-1] ^= 1  # same size, other bytes
    files["pkgfarm-tiny_1.0.tar.xz"] = bytes(damaged)
    _, local = unpack_debian_source(snapshot_debian_source(src, files), tmp_path / "snap")
    with open(tmp_path / "log", "w") as out, pytest.raises(BuildFailed, match="sha256"):
        fetch(src, tmp_path / "src", out, local)


def test_resolve_a_local_git_repository(tmp_path: Path) -> None:
    repo = native_source.make_git_repo(tmp_path / "git")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    src, files = resolve_with_files(str(repo), Settings(), tmp_path / "state")
    assert (src.name, src.version, src.origin) == ("pkgfarm-tiny", "1.0", "git")
    assert src.revision == head
    assert src.location == str(repo)
    assert src.architecture == ("any", "all")
    assert src.binaries == (("pkgfarm-tiny", "any"), ("pkgfarm-tiny-data", "all"))
    # The tree travels in the snapshot, so a worker elsewhere builds exactly this commit.
    with tarfile.open(fileobj=io.BytesIO(files[GIT_TREE_FILE])) as tar:
        assert "debian/control" in tar.getnames()
    back, local = unpack_debian_source(snapshot_debian_source(src, files), tmp_path / "snap")
    with open(tmp_path / "log", "w") as out:
        tree = fetch(back, tmp_path / "src", out, local)
    assert (tree / "debian" / "changelog").is_file()


def test_git_url_is_cloned_by_the_worker(tmp_path: Path) -> None:
    repo = native_source.make_git_repo(tmp_path / "git")
    src, files = resolve_with_files(f"git+file://{repo}", Settings(), tmp_path / "state")
    assert files == {}
    assert src.location == f"file://{repo}"
    with open(tmp_path / "log", "w") as out:
        tree = fetch(src, tmp_path / "src", out)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert head == src.revision


def test_a_folder_that_is_not_a_repository(tmp_path: Path) -> None:
    tree = native_source.make_tree(tmp_path)
    with pytest.raises(DefinitionError, match="not a git repository"):
        resolve(str(tree), Settings(), tmp_path / "state")
    with pytest.raises(NotFound):
        resolve(str(tmp_path / "nothing-here"), Settings(), tmp_path / "state")


def test_unknown_name_fails_fast(tmp_path: Path) -> None:
    line = native_source.flat_sources_repo(tmp_path / "repo")
    settings = settings_from_dict({"debian_sources": [line]})
    start = time.monotonic()
    with pytest.raises(NotFound) as info:
        resolve("pkgfarm-no-such-source", settings, tmp_path / "state")
    assert info.value.message == ("no package definition and no Debian source package named "
                                  "'pkgfarm-no-such-source'")
    with pytest.raises(NotFound, match="'Not_A_Name'"):
        resolve("Not_A_Name", settings, tmp_path / "state")
    assert time.monotonic() - start < 10
    # a name the index has
    other = resolve("pkgfarm-other", settings, tmp_path / "state")
    assert (other.origin, other.version, other.apt_lines) == ("apt", "1.0", (line,))


def test_highest_version_wins(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    stanza = ("Package: pkgfarm-multi\nBinary: pkgfarm-multi\nVersion: {v}\nArchitecture: any\n"
              "Format: 3.0 (native)\nDirectory: .\nFiles:\n"
              " 00000000000000000000000000000000 1 pkgfarm-multi_{v}.dsc\n")
    (repo / "Sources").write_text("\n".join(stanza.format(v=v)
                                            for v in ("1.10-1", "1:0.5-1", "1.9-1")))
    settings = settings_from_dict({"debian_sources": [f"deb-src [trusted=yes] file:{repo} ./"]})
    assert resolve("pkgfarm-multi", settings, tmp_path / "state").version == "1:0.5-1"
