"""common/definition.py: parsing, validation, lookup by name, build_arches and the snapshot."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.definition import (
    PackageDefinition,
    find_definition,
    parse_definition,
    snapshot,
    unpack_snapshot,
)
from common.errors import DefinitionError, NotFound, UnsafeArchive

WriteDef = Callable[..., Path]


def definition_error(path: Path) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        parse_definition(path)
    return info.value


# -- a valid definition ----------------------------------------------------------------------


def test_valid_definition_parses(tmp_path: Path, write_definition: WriteDef,
                                 valid_definition: dict[str, Any]) -> None:
    path = write_definition(tmp_path / "hello.yaml", valid_definition)
    d = parse_definition(path)
    assert d.name == "hello"
    assert d.version == "1.0"
    assert d.release == "2"
    assert d.full_version == "1.0-2"
    assert d.architecture == "any"
    assert d.description == "Say hello\nA longer text\nover two lines.\n\nSecond paragraph."
    assert d.maintainer == "Jane Doe <jane@example.org>"
    assert d.depends == ("bash (>= 5)", "coreutils")
    assert d.recommends == ()
    assert d.section == "utils"
    assert d.priority == "optional"
    assert d.homepage == "https://example.org/hello"
    assert d.build_depends == ("make",)
    assert d.sources == ("src",)
    assert d.build == valid_definition["build"]
    assert d.path == path
    assert d.folder == tmp_path


def test_minimal_definition_gets_defaults(tmp_path: Path, write_definition: WriteDef) -> None:
    path = write_definition(tmp_path / "mini.yaml", {
        "package": {"name": "mini", "version": "2", "description": "Mini",
                    "maintainer": "A <a@example.org>"},
        "build": "true",
    }, with_sources=False)
    d = parse_definition(path)
    assert d.release == "1"
    assert d.full_version == "2-1"
    assert d.architecture == "any"
    assert d.section == "misc"
    assert d.priority == "optional"
    assert d.homepage is None
    assert d.depends == d.build_depends == d.sources == ()


def test_architecture_list_and_single_name(tmp_path: Path, write_definition: WriteDef,
                                           valid_definition: dict[str, Any]) -> None:
    valid_definition["package"]["architecture"] = ["arm64", "amd64", "arm64"]
    d = parse_definition(write_definition(tmp_path / "a.yaml", valid_definition))
    assert d.architecture == ("arm64", "amd64")
    valid_definition["package"]["architecture"] = "riscv64"
    d = parse_definition(write_definition(tmp_path / "b.yaml", valid_definition))
    assert d.architecture == ("riscv64",)
    valid_definition["package"]["architecture"] = "all"
    d = parse_definition(write_definition(tmp_path / "c.yaml", valid_definition))
    assert d.architecture == "all"


def test_unquoted_version_keeps_its_text(tmp_path: Path, write_definition: WriteDef) -> None:
    """YAML reads ``version: 1.10`` as the float 1.1; the definition must not publish 1.1.

    Either the exact text is kept or the value is refused; silently turning 1.10 into 1.1
    (which sorts *before* 1.9) is wrong.
    """
    path = write_definition(tmp_path / "f.yaml", (
        "package:\n  name: floaty\n  version: 1.10\n  release: 1\n"
        "  description: Floaty\n  maintainer: A <a@example.org>\nbuild: 'true'\n"
    ), with_sources=False)
    try:
        d = parse_definition(path)
    except DefinitionError as exc:
        assert exc.details["field"] == "package.version"
    else:
        assert d.version == "1.10"


@pytest.mark.parametrize(("key", "value"), [("version", "1.0\n"), ("release", "1\n")])
def test_trailing_newline_in_version_is_refused(
    tmp_path: Path, write_definition: WriteDef, valid_definition: dict[str, Any],
    key: str, value: str,
) -> None:
    """A version that ends in a newline would break the control file the worker writes."""
    valid_definition["package"][key] = value
    exc = definition_error(write_definition(tmp_path / "hello.yaml", valid_definition))
    assert exc.details["field"] == f"package.{key}"


# -- malformed definitions -------------------------------------------------------------------


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return change


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return change


MALFORMED = [
    ("name-upper", _set("package", "name", value="Hello"), "package.name", "not a Debian"),
    ("name-short", _set("package", "name", value="h"), "package.name", "not a Debian"),
    ("name-space", _set("package", "name", value="hello world"), "package.name", ""),
    ("name-underscore", _set("package", "name", value="hello_world"), "package.name", ""),
    ("name-missing", _drop("package", "name"), "package.name", "is required"),
    ("version-missing", _drop("package", "version"), "package.version", "is required"),
    ("version-letter", _set("package", "version", value="v1"), "package.version", ""),
    ("version-hyphen", _set("package", "version", value="1.0-1"), "package.version", ""),
    ("version-empty", _set("package", "version", value=" "), "package.version", "empty"),
    ("version-list", _set("package", "version", value=[1]), "package.version", "string"),
    ("release-bad", _set("package", "release", value="1 2"), "package.release", ""),
    ("arch-unknown", _set("package", "architecture", value="sparc"), "package.architecture",
     "unknown architecture 'sparc'"),
    ("arch-unknown-in-list", _set("package", "architecture", value=["amd64", "nope"]),
     "package.architecture", "unknown architecture 'nope'"),
    ("arch-number", _set("package", "architecture", value=5), "package.architecture",
     "unknown architecture '5'"),
    ("arch-empty-list", _set("package", "architecture", value=[]), "package.architecture", ""),
    ("arch-mapping", _set("package", "architecture", value={"a": 1}), "package.architecture",
     ""),
    ("top-unknown", _set("colour", value="red"), "colour", "unknown key"),
    ("package-unknown", _set("package", "colour", value="red"), "package.colour",
     "unknown key"),
    ("package-missing", _drop("package"), "package", "is required"),
    ("package-not-mapping", _set("package", value="hello"), "package", "mapping"),
    ("build-missing", _drop("build"), "build", "is required"),
    ("build-blank", _set("build", value="   \n"), "build", "is required"),
    ("build-list", _set("build", value=["make"]), "build", ""),
    ("description-missing", _drop("package", "description"), "package.description", ""),
    ("description-empty", _set("package", "description", value=""), "package.description",
     "empty"),
    ("description-empty-summary", _set("package", "description", value="\n   \nLong text.\n"),
     "package.description", "summary"),
    ("maintainer-no-email", _set("package", "maintainer", value="Jane Doe"),
     "package.maintainer", "Full Name <email"),
    ("maintainer-bare-email", _set("package", "maintainer", value="jane@example.org"),
     "package.maintainer", ""),
    # What an uploaded archive's Maintainer must be too (one address): not refused late.
    ("maintainer-two-addresses", _set("package", "maintainer", value="A <a@b.c>, B <d@e.f>"),
     "package.maintainer", "Full Name <email"),
    ("maintainer-space-in-address", _set("package", "maintainer", value="Team <a b@c.d>"),
     "package.maintainer", "Full Name <email"),
    ("priority-bad", _set("package", "priority", value="urgent"), "package.priority",
     "not a Debian priority"),
    ("section-two-lines", _set("package", "section", value="a\nb"), "package.section",
     "one line"),
    ("depends-comma", _set("package", "depends", value=["a, b"]), "package.depends", "one"),
    ("depends-number", _set("package", "depends", value=[1]), "package.depends", ""),
    ("build-depends-mapping", _set("build_depends", value={"a": 1}), "build_depends", ""),
    ("sources-escape", _set("sources", value=[{"path": "../outside.txt"}]), "sources[0].path",
     "leaves"),
    ("sources-absolute", _set("sources", value=[{"path": "/etc/hostname"}]),
     "sources[0].path", "relative"),
    ("sources-missing", _set("sources", value=["src", {"path": "nope.txt"}]),
     "sources[1].path", "does not exist"),
    ("sources-extra-key", _set("sources", value=[{"path": "src", "mode": 1}]), "sources[0]",
     "only 'path'"),
    ("sources-not-list", _set("sources", value="src"), "sources", "must be a list"),
    ("sources-empty-path", _set("sources", value=[{"path": ""}]), "sources[0].path", ""),
    # Fields that end up in control files and indexes are checked before anything is queued.
    ("homepage-newline", _set("package", "homepage", value="https://a.example/\nX-Evil: 1"),
     "package.homepage", "one line"),
    ("homepage-not-a-url", _set("package", "homepage", value="javascript:alert(1)"),
     "package.homepage", "http(s) URL"),
    ("section-odd", _set("package", "section", value="utils: evil"), "package.section",
     "section name"),
    ("name-too-long", _set("package", "name", value="a" * 300), "package.name",
     "longer than 128"),
    ("version-too-long", _set("package", "version", value="1" * 300), "package.version",
     "longer than 128"),
    ("release-too-long", _set("package", "release", value="1" * 300), "package.release",
     "longer than 128"),
    ("maintainer-control", _set("package", "maintainer", value="A <a@b.c>\x07"),
     "package.maintainer", ""),
    ("build-network-text", _set("build_network", value="yes please"), "build_network",
     "true or false"),
    ("depends-bad-operator", _set("package", "depends", value=["bash (=> 5)"]),
     "package.depends", "operator"),
]


@pytest.mark.parametrize(("change", "field", "fragment"),
                         [pytest.param(*case[1:], id=case[0]) for case in MALFORMED])
def test_malformed_definition_names_file_and_field(
    tmp_path: Path, write_definition: WriteDef, valid_definition: dict[str, Any],
    change: Callable[[dict[str, Any]], None], field: str, fragment: str,
) -> None:
    (tmp_path / "outside.txt").write_text("not for the snapshot\n")
    change(valid_definition)
    path = write_definition(tmp_path / "defs" / "hello.yaml", valid_definition)
    exc = definition_error(path)
    assert exc.details["file"] == str(path)
    assert exc.details["field"] == field
    assert exc.message.startswith(f"{path}: {field}: ")
    assert fragment in exc.message
    assert exc.status == 422


def test_escaping_symlink_is_refused(tmp_path: Path, write_definition: WriteDef,
                                     valid_definition: dict[str, Any]) -> None:
    (tmp_path / "secret").write_text("x")
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "link").symlink_to(tmp_path / "secret")
    valid_definition["sources"] = [{"path": "link"}]
    exc = definition_error(write_definition(defs / "hello.yaml", valid_definition))
    assert exc.details["field"] == "sources[0].path"
    assert "leaves" in exc.message


def test_missing_sources_are_allowed_when_not_checked(
    tmp_path: Path, write_definition: WriteDef, valid_definition: dict[str, Any]
) -> None:
    valid_definition["sources"] = [{"path": "later.txt"}]
    path = write_definition(tmp_path / "hello.yaml", valid_definition)
    assert parse_definition(path, check_sources=False).sources == ("later.txt",)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "package: [unclosed\n"])
def test_not_a_mapping_or_not_yaml(tmp_path: Path, write_definition: WriteDef,
                                   text: str) -> None:
    path = write_definition(tmp_path / "bad.yaml", text, with_sources=False)
    exc = definition_error(path)
    assert exc.details["file"] == str(path)
    assert exc.message.startswith(f"{path}: ")


def test_unreadable_file(tmp_path: Path) -> None:
    exc = definition_error(tmp_path / "nope.yaml")
    assert exc.details["file"] == str(tmp_path / "nope.yaml")
    assert "cannot read" in exc.message


# -- lookup by name --------------------------------------------------------------------------


@pytest.fixture
def package_tree(tmp_path: Path, write_definition: WriteDef,
                 valid_definition: dict[str, Any]) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    write_definition(first / "hello.yaml", valid_definition)
    world = dict(valid_definition, package=dict(valid_definition["package"], name="world"))
    write_definition(second / "world" / "package.yaml", world)
    other = dict(valid_definition, package=dict(valid_definition["package"], version="9.0"))
    write_definition(second / "hello.yaml", other)
    alias = dict(valid_definition, package=dict(valid_definition["package"], name="hello"))
    write_definition(second / "alias.yaml", alias)
    return first, second


def test_find_by_file_name(package_tree: tuple[Path, Path]) -> None:
    first, second = package_tree
    d = find_definition("hello", [str(first), str(second)])
    assert d.path == first / "hello.yaml"
    assert d.version == "1.0"  # the first folder wins


def test_find_by_folder(package_tree: tuple[Path, Path]) -> None:
    first, second = package_tree
    d = find_definition("world", [str(first), str(second)])
    assert d.name == "world"
    assert d.path == second / "world" / "package.yaml"
    assert d.folder == second / "world"


def test_find_order_follows_package_paths(package_tree: tuple[Path, Path]) -> None:
    first, second = package_tree
    assert find_definition("hello", [str(second), str(first)]).version == "9.0"


def test_unknown_name_lists_the_searched_paths(package_tree: tuple[Path, Path]) -> None:
    first, second = package_tree
    with pytest.raises(NotFound) as info:
        find_definition("nothere", [str(first), str(second)])
    message = info.value.message
    for expected in (first / "nothere.yaml", first / "nothere" / "package.yaml",
                     second / "nothere.yaml", second / "nothere" / "package.yaml"):
        assert str(expected) in message
    assert info.value.details["package"] == "nothere"
    assert info.value.status == 404


def test_no_package_paths() -> None:
    with pytest.raises(NotFound) as info:
        find_definition("hello", [])
    assert "nowhere" in info.value.message


def test_invalid_name_is_not_found(package_tree: tuple[Path, Path]) -> None:
    with pytest.raises(NotFound):
        find_definition("../first/hello", [str(package_tree[1])])


def test_file_name_disagreeing_with_package_name(package_tree: tuple[Path, Path]) -> None:
    _, second = package_tree
    with pytest.raises(DefinitionError) as info:
        find_definition("alias", [str(second)])
    assert info.value.details["field"] == "package.name"
    assert info.value.details["file"] == str(second / "alias.yaml")
    assert "'hello'" in info.value.message and "'alias'" in info.value.message


# -- build_arches ----------------------------------------------------------------------------


def _definition(architecture: tuple[str, ...] | str) -> PackageDefinition:
    return PackageDefinition(name="p", version="1", release="1", architecture=architecture,
                             description="P", maintainer="A <a@example.org>", build="true")


def test_build_arches_all() -> None:
    d = _definition("all")
    assert d.build_arches(["amd64", "arm64"]) == ["all"]
    assert d.build_arches(["amd64", "arm64"], "arm64") == ["all"]


def test_build_arches_any() -> None:
    d = _definition("any")
    assert d.build_arches(["amd64", "arm64"]) == ["amd64", "arm64"]
    assert d.build_arches(("amd64", "arm64"), "arm64") == ["arm64"]
    with pytest.raises(DefinitionError) as info:
        d.build_arches(["amd64", "arm64"], "i386")
    assert info.value.details["field"] == "arch"
    assert "amd64, arm64" in info.value.message
    with pytest.raises(DefinitionError, match="unknown architecture 'bogus'"):
        d.build_arches(["amd64"], "bogus")


def test_build_arches_list() -> None:
    d = _definition(("arm64", "riscv64"))
    assert d.build_arches(["amd64"]) == ["arm64", "riscv64"]
    assert d.build_arches(["amd64"], "riscv64") == ["riscv64"]
    with pytest.raises(DefinitionError, match="not built for amd64"):
        d.build_arches(["amd64", "arm64"], "amd64")


# -- the snapshot ----------------------------------------------------------------------------


@pytest.fixture
def rich_definition(tmp_path: Path, write_definition: WriteDef,
                    valid_definition: dict[str, Any]) -> PackageDefinition:
    folder = tmp_path / "defs" / "hello"
    valid_definition["sources"] = [{"path": "src"}, {"path": "extra/notes.txt"}]
    path = write_definition(folder / "package.yaml", valid_definition)
    (folder / "src" / "lib").mkdir()
    (folder / "src" / "lib" / "data.bin").write_bytes(bytes(range(256)))
    (folder / "src" / "README").write_text("read me\n")
    (folder / "src" / "README").chmod(0o644)
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_text("notes\n")
    (folder / "ignored.txt").write_text("not listed\n")
    return parse_definition(path)


def test_snapshot_round_trip(tmp_path: Path, rich_definition: PackageDefinition) -> None:
    data = snapshot(rich_definition)
    dest = tmp_path / "unpacked"
    d = unpack_snapshot(data, dest)
    assert d.name == "hello" and d.full_version == "1.0-2"
    assert d.path == dest / "package.yaml"
    assert (dest / "package.yaml").read_bytes() == rich_definition.path.read_bytes()
    src = dest / "sources"
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*"))
    assert files == ["README", "hello.sh", "lib", "lib/data.bin", "notes.txt"]
    assert (src / "hello.sh").read_text() == "#!/bin/sh\necho hello\n"
    assert (src / "lib" / "data.bin").read_bytes() == bytes(range(256))
    assert (src / "notes.txt").read_text() == "notes\n"
    assert not (dest / "ignored.txt").exists() and not (src / "ignored.txt").exists()
    assert os.stat(src / "hello.sh").st_mode & stat.S_IXUSR
    assert not os.stat(src / "README").st_mode & stat.S_IXUSR


def test_snapshot_normalises_owners_and_times(rich_definition: PackageDefinition) -> None:
    with tarfile.open(fileobj=io.BytesIO(snapshot(rich_definition)), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members][:2] == ["package.yaml", "sources"]
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root")
    assert len({m.mtime for m in members}) == 1  # one normalised time, not each file's own
    modes = {m.name: m.mode for m in members}
    assert modes["sources/hello.sh"] == 0o755
    assert modes["sources/README"] == 0o644


def test_snapshot_is_byte_identical_across_time(
    rich_definition: PackageDefinition, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same input gives the same bytes, also when the clock has moved on between calls."""
    clock = iter([1_000_000_000.0, 1_000_000_100.0])
    fake_time = types.SimpleNamespace(time=lambda: next(clock))
    monkeypatch.setattr(gzip, "time", fake_time)  # only the gzip module's view of the clock
    assert snapshot(rich_definition) == snapshot(rich_definition)


def test_snapshot_refuses_symlinks(tmp_path: Path, write_definition: WriteDef,
                                   valid_definition: dict[str, Any]) -> None:
    path = write_definition(tmp_path / "hello.yaml", valid_definition)
    (tmp_path / "src" / "link").symlink_to("hello.sh")
    with pytest.raises(DefinitionError, match="symbolic links"):
        snapshot(parse_definition(path))


def test_unpack_refuses_members_outside(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="climbs out"):
        unpack_snapshot(buf.getvalue(), dest)
    assert not (tmp_path / "evil.txt").exists()


# -- formats: relations per format, checks per format ------------------------------------------


def test_relations_per_format_and_plain_lists(tmp_path: Path, write_definition: WriteDef,
                                              valid_definition: dict[str, Any]) -> None:
    from common import formats

    data = valid_definition
    data["package"]["depends"] = {"deb": ["libssl3 (>= 3)"], "rpm": ["openssl-libs"],
                                  "pacman": ["openssl"]}
    data["package"]["conflicts"] = ["old (<< 2)"]
    data["package"]["formats"] = ["deb", "rpm", "pacman"]
    data["package"]["license"] = "MIT"
    d = parse_definition(write_definition(tmp_path / "hello.yaml", data))
    assert d.relations_for("depends", "deb") == ("libssl3 (>= 3)",)
    assert d.relations_for("depends", "rpm") == ("openssl-libs",)
    assert d.relations_for("depends", "pacman") == ("openssl",)
    # a plain list applies to every format
    assert {d.relations_for("conflicts", f) for f in ("deb", "rpm", "pacman")} == {
        ("old (<< 2)",)}
    assert d.license == "MIT"
    assert d.build_formats(["rpm", "deb"]) == ["rpm", "deb"]
    for name in ("deb", "rpm", "pacman"):
        d.check_format(formats.get(name))  # every format can carry all of it


def test_a_format_not_named_in_a_mapping_gets_none(tmp_path: Path, write_definition: WriteDef,
                                                   valid_definition: dict[str, Any]) -> None:
    valid_definition["package"]["depends"] = {"rpm": ["/bin/sh"]}
    d = parse_definition(write_definition(tmp_path / "hello.yaml", valid_definition))
    assert d.relations_for("depends", "rpm") == ("/bin/sh",)
    assert d.relations_for("depends", "deb") == ()
    assert d.build_formats(["deb", "pacman"]) == ["deb", "pacman"]  # no formats: every one


@pytest.mark.parametrize(("package", "field", "words"), [
    ({"depends": {"snap": ["x"]}}, "package.depends", "unknown package format 'snap'"),
    ({"formats": ["deb", "snap"]}, "package.formats", "unknown package format 'snap'"),
    ({"depends": {"pacman": ["a | b"]}}, "package.depends.pacman", "alternatives"),
    ({"depends": {"rpm": ["x [amd64]"]}}, "package.depends.rpm", ""),
])
def test_format_fields_are_refused_at_parse(tmp_path: Path, write_definition: WriteDef,
                                            valid_definition: dict[str, Any],
                                            package: dict[str, Any], field: str,
                                            words: str) -> None:
    valid_definition["package"].update(package)
    err = definition_error(write_definition(tmp_path / "hello.yaml", valid_definition))
    assert err.details["field"] == field
    assert words in err.message


def test_a_plain_list_a_served_format_cannot_express_is_refused_for_it(
        tmp_path: Path, write_definition: WriteDef, valid_definition: dict[str, Any]) -> None:
    from common import formats

    valid_definition["package"]["depends"] = ["mta | exim4"]
    d = parse_definition(write_definition(tmp_path / "hello.yaml", valid_definition))
    d.check_format(formats.get("deb"))
    d.check_format(formats.get("rpm"))  # as a rich dependency
    with pytest.raises(DefinitionError) as info:
        d.check_format(formats.get("pacman"))
    assert info.value.details["field"] == "package.depends"
    assert "pacman has no alternatives" in info.value.message
    assert info.value.message.count("'mta | exim4'") == 1


@pytest.mark.parametrize(("package", "field", "words"), [
    ({"provides": {"rpm": ["mta | postfix"]}}, "package.provides.rpm",
     "rpm allows no alternatives (rich dependencies) in Provides"),
    ({"replaces": {"rpm": ["mta | postfix"]}}, "package.replaces.rpm", "Obsoletes"),
    ({"provides": {"pacman": ["virt (>= 1.0)"]}}, "package.provides.pacman",
     "makepkg refuses a provides with '>='"),
    ({"provides": ["mta | postfix"]}, "package.provides", "dpkg allows no alternatives"),
    ({"conflicts": ["mta | postfix"]}, "package.conflicts", "dpkg allows no alternatives"),
    ({"provides": ["virt (>= 1.0)"]}, "package.provides", "exact versions only"),
])
def test_relations_a_field_cannot_hold_are_refused_at_parse(
        tmp_path: Path, write_definition: WriteDef, valid_definition: dict[str, Any],
        package: dict[str, Any], field: str, words: str) -> None:
    valid_definition["package"].update(package)
    err = definition_error(write_definition(tmp_path / "hello.yaml", valid_definition))
    assert err.details["field"] == field
    assert words in err.message


@pytest.mark.parametrize(("kind", "relation", "fmt", "words"), [
    ("provides", "mta | postfix", "rpm", "rpm allows no alternatives"),
    ("provides", "virt (>= 1.0)", "pacman", "makepkg refuses a provides"),
    ("provides", "virt (<< 2)", "deb", "exact versions only"),
    ("replaces", "mta | postfix", "rpm", "Obsoletes"),
])
def test_check_format_checks_each_relation_for_its_field(
        tmp_path: Path, write_definition: WriteDef, valid_definition: dict[str, Any],
        kind: str, relation: str, fmt: str, words: str) -> None:
    """At submission each format checks each relation as what it is (a provides is not a
    dependency), naming the field; the same relation as a dependency passes."""
    import dataclasses

    from common import formats

    d = parse_definition(write_definition(tmp_path / "hello.yaml", valid_definition))
    with pytest.raises(DefinitionError) as info:
        dataclasses.replace(d, **{kind: (relation,)}).check_format(formats.get(fmt))
    assert info.value.details["field"] == f"package.{kind}"
    assert words in info.value.message and relation in info.value.message
    dataclasses.replace(d, depends=(relation,)).check_format(
        formats.get("rpm" if "|" in relation else fmt))


def test_a_priority_is_the_debian_formats_to_check(tmp_path: Path, write_definition: WriteDef,
                                                   valid_definition: dict[str, Any]) -> None:
    """Debian's closed set of priorities is the deb format's rule: a definition made only as
    rpm may say anything printable there, and is refused where it would be made as deb."""
    from common import formats

    valid_definition["package"]["priority"] = "urgent"
    valid_definition["package"]["formats"] = ["rpm", "pacman"]
    d = parse_definition(write_definition(tmp_path / "hello.yaml", valid_definition))
    assert d.priority == "urgent"
    d.check_format(formats.get("rpm"))
    d.check_format(formats.get("pacman"))
    with pytest.raises(DefinitionError) as info:
        d.check_format(formats.get("deb"))
    assert info.value.details["field"] == "package.priority"
    assert "'urgent' is not a Debian priority" in info.value.message
    assert formats.get("deb").check_metadata({"priority": "extra"}) is None
    valid_definition["package"]["priority"] = "urgent\nX-Evil: 1"
    err = definition_error(write_definition(tmp_path / "evil.yaml", valid_definition))
    assert err.details["field"] == "package.priority" and "one line" in err.message
