"""pacman's version order against pacman's own ``vercmp``, and what the format makes of the
farm's relations, file names and repository paths."""

from __future__ import annotations

import functools
import itertools
import subprocess

import pytest

from common.formats import compare_versions, get
from master.formats import get as get_repository

PACMAN = get("pacman")

PAIRS = [
    ("1.0", "1.0"), ("1.0", "1.0.0"), ("1.0a", "1.0"), ("1.0", "1.0.a"), ("1.0rc1", "1.0"),
    ("1.0.rc1", "1.0"), ("1.0~rc1", "1.0"), ("1.0-1", "1.0-2"), ("1.0-1", "1.0"),
    ("1:1.0", "2.0"), ("1.0", "0:1.0"), ("1:1.0-1", "1:1.0-1.1"), ("1.0..1", "1.0.1"),
    ("1.0_1", "1.0.1"), ("1.0.1", "1.0-1"), ("a", "b"), ("1a", "1"), ("001", "1"),
    ("1.01", "1.1"), ("2.0", "10.0"), ("1.2.3alpha", "1.2.3beta"), ("1.2.3", "1.2.3p1"),
    ("1.0+1", "1.0.1"), ("abc", "123"), ("1.0-1-1", "1.0-1"), ("1:-1", "0:1"),
    ("2022.01.01", "2022.1.1"), ("1.0-10", "1.0-9"), ("1.5.0", "1.5"), ("1.5", "1.5.a"),
    (".1", "1"), ("1..0", "1.0"), ("1.0+", "1.0"), ("1.0~", "1.0"), ("-1", "1"),
    ("1.a", "1.1"), ("r1234.abc", "r1234.abd"), ("1.0a1", "1.0b1"), ("1.0alpha", "1.0"),
    ("2:0.1-1", "1:9.9-9"), ("1.0-1.1", "1.0-1.01"), ("0.9.99999999999999999999", "0.9.1"),
]


@functools.cache
def real_vercmp(a: str, b: str) -> int:
    out = int(subprocess.run(["vercmp", a, b], capture_output=True, text=True,
                             check=True).stdout)
    return (out > 0) - (out < 0)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_order_is_vercmps(a, b):
    assert compare_versions(PACMAN, a, b) == real_vercmp(a, b)
    assert compare_versions(PACMAN, b, a) == real_vercmp(b, a)


def test_sorting_agrees_with_vercmp():
    versions = ["1.0-1", "1:0.5-1", "1.0rc1-1", "1.0-2", "1.0.1-1", "0.9-1", "1.0a-1"]
    ordered = sorted(versions, key=PACMAN.version_key)
    for a, b in itertools.pairwise(ordered):
        assert real_vercmp(a, b) <= 0, (a, b)


@pytest.mark.parametrize(("farm", "pacman"), [
    ("libfoo", "libfoo"), ("libfoo (>= 1.0)", "libfoo>=1.0"), ("a (<< 2)", "a<2"),
    ("a (>> 1:2.0-1)", "a>1:2.0-1"), ("a (= 1.0-1)", "a=1.0-1"), ("a (<= 3)", "a<=3"),
])
def test_relations_are_translated(farm, pacman):
    from common.formats.pacman import to_pacman

    assert PACMAN.check_relation(farm) is None
    assert to_pacman(farm) == pacman


@pytest.mark.parametrize(("relation", "says"), [
    ("a | b", "alternatives"), ("a:any", "architecture qualifiers"),
    ("a [amd64]", "architecture restrictions"), ("a <!nocheck>", "build profiles"),
    ("a (~ 1)", "not 'name'"), ("", "empty"), ("a, b", "one relation"),
])
def test_relations_pacman_cannot_carry_are_refused(relation, says):
    problem = PACMAN.check_relation(relation)
    assert problem is not None and says in problem


@pytest.mark.parametrize(("version", "release", "field"), [
    ("1.0-2", "1", "version"), ("1/2", "1", "version"), ("1 2", "1", "version"),
    ("1:2:3", "1", "version"), ("x:1", "1", "version"), ("1.0", "1b", "release"),
    ("1.0", "1-1", "release"), ("1.0", "", "release"),
])
def test_versions_pacman_cannot_carry_name_the_field(version, release, field):
    found = PACMAN.check_version_parts(version, release)
    assert found is not None and found[0] == field


def test_versions_it_can_carry():
    assert PACMAN.check_version_parts("1:2.0rc1", "1.1") is None
    assert PACMAN.full_version("1:2.0", "3") == "1:2.0-3"
    assert PACMAN.check_version("1:2.0-3") is None
    assert PACMAN.check_version("2.0") is not None


def test_file_names_split_from_the_right():
    name = PACMAN.archive_filename("foo-bar-baz", "1:2.0-1", "arm64")
    assert name == "foo-bar-baz-1:2.0-1-aarch64.pkg.tar.zst"
    parsed = PACMAN.parse_archive_filename(name)
    assert (parsed.name, parsed.version, parsed.arch) == ("foo-bar-baz", "1:2.0-1", "arm64")
    assert PACMAN.parse_archive_filename("x-1-1-any.pkg.tar.zst").arch == "all"
    for bad in ("foo_1.0-1_all.deb", "foo-1.0-x86_64.pkg.tar.zst", "foo-1.0-1-x86_64.pkg.tar.xz",
                "foo-1.0-1-sparc.pkg.tar.zst"):
        with pytest.raises(ValueError):
            PACMAN.parse_archive_filename(bad)


def test_architecture_names():
    assert [PACMAN.arch_name(a) for a in ("amd64", "arm64", "all")] == [
        "x86_64", "aarch64", "any"]
    assert [PACMAN.farm_arch(a) for a in ("x86_64", "aarch64", "any")] == [
        "amd64", "arm64", "all"]


def test_archive_alias_names_suite_and_file():
    repo = get_repository("pacman")
    assert repo.archive_alias("pacman/stable/main/x86_64/foo-1.0-1-x86_64.pkg.tar.zst") == (
        "stable", "foo-1.0-1-x86_64.pkg.tar.zst")
    assert repo.archive_alias("pacman/testing/main/aarch64/foo-1.0-1-any.pkg.tar.zst") == (
        "testing", "foo-1.0-1-any.pkg.tar.zst")
    for key in ("pacman/pool/main/foo/foo-1.0-1-x86_64.pkg.tar.zst",
                "pacman/stable/main/aarch64/foo-1.0-1-x86_64.pkg.tar.zst",
                "pacman/stable/main/x86_64/pkgfarm-stable.db",
                "pacman/stable/main/x86_64/foo-1.0-1-x86_64.pkg.tar.zst.sig",
                "dists/stable/foo-1.0-1-x86_64.pkg.tar.zst"):
        assert repo.archive_alias(key) is None


def test_databases_change_in_place_and_archives_do_not():
    repo = get_repository("pacman")
    assert repo.changes_in_place("pacman/stable/main/x86_64/pkgfarm-stable.db")
    assert repo.changes_in_place("pacman/stable/main/x86_64/pkgfarm-stable.files.sig")
    assert not repo.changes_in_place("pacman/pool/main/foo/foo-1.0-1-any.pkg.tar.zst")
    assert repo.copy_rank("pacman/pool/main/foo/foo-1.0-1-any.pkg.tar.zst") == 0
    assert repo.copy_rank("pacman/stable/main/x86_64/pkgfarm-stable.files") == 1
    assert repo.copy_rank("pacman/stable/main/x86_64/pkgfarm-stable.db.sig") == 2
    assert repo.copy_rank("dists/stable/InRelease") is None


def makepkg_accepts_provides(provide: str) -> bool:
    """What makepkg's own lint of a PKGBUILD's provides says of one entry."""
    result = subprocess.run(
        ["bash", "-c", "shopt -s extglob; source /usr/share/makepkg/lint_pkgbuild/provides.sh"
         ' && pkgname=t && provides=("$1") && lint_provides', "lint", provide],
        capture_output=True, text=True)
    return result.returncode == 0


@pytest.mark.parametrize(("relation", "allowed"), [
    ("virt", True), ("virt (= 1.0-1)", True), ("virt (>= 1.0)", False),
    ("virt (<< 2)", False), ("virt (>> 1)", False), ("virt (<= 2)", False),
])
def test_provides_are_checked_as_makepkg_does(relation: str, allowed: bool) -> None:
    """Only a provides makepkg accepts passes the check for the provides field; the same
    relation stays fine as a dependency."""
    from common.formats.pacman import to_pacman

    assert makepkg_accepts_provides(to_pacman(relation)) is allowed
    problem = PACMAN.check_relation(relation, "provides")
    assert (problem is None) is allowed, problem
    if not allowed:
        assert "makepkg refuses a provides" in problem
    for kind in ("depends", "recommends", "conflicts", "replaces"):
        assert PACMAN.check_relation(relation, kind) is None
