"""RPM's version order against rpm itself, and relations from the farm's syntax into rpm's."""

from __future__ import annotations

import functools
import json
import subprocess

import pytest

from common import formats
from common.formats.rpm import RPM, policy

#: Pairs where a naive comparison goes wrong: tildes and carets, numbers against letters,
#: leading zeros, separators, epochs and releases.
PAIRS = [
    ("1.0", "1.0"), ("1.0", "1.1"), ("1.0~rc1", "1.0"), ("1.0~rc1", "1.0~rc2"),
    ("1.0~rc1", "1.0~"), ("1.0~", "1.0"), ("1.0^", "1.0"), ("1.0^git1", "1.0"),
    ("1.0^git1", "1.0.1"), ("1.0^git1", "1.0^git2"), ("1.0^git1~pre", "1.0^git1"),
    ("1.0~rc1^git1", "1.0~rc1"), ("1.0", "1.0a"), ("1.0a", "1.0.1"), ("1a", "1.a"),
    ("1.001", "1.1"), ("1.010", "1.9"), ("10", "9"), ("1.0.0", "1.0"), ("a", "1"),
    ("alpha", "beta"), ("1_0", "1.0"), ("1+0", "1.0"), ("1..0", "1.0"), ("2.0", "1:1.0"),
    ("1:1.0", "0:2.0"), ("0:1.0", "1.0"), ("10:1", "9:2"), ("1.0-1", "1.0-2"),
    ("1.0-10", "1.0-9"), ("1.0-1", "1.0-1.el9"), ("1.0-1~", "1.0-1"), ("1.0-1", "1.0"),
    ("1.0", "1.0-0"), ("1.0-2", "1.1-1"), ("1:1.0-1", "1.5-9"), ("1.0-1^x", "1.0-1"),
    ("FC5", "fc4"), ("2.0b", "2.0B"), ("1.0.a", "1.0.1"), ("1.0~~", "1.0~"),
    ("00001", "1"), ("1.0-0.1", "1.0-0.01"), ("3.0.0~beta.1", "3.0.0~alpha.2"),
]


@functools.cache
def rpm_says(pairs: tuple[tuple[str, str], ...]) -> list[int]:
    """rpm's own verdict on each pair, from one run of its Lua vercmp."""
    body = " ".join(f"print(rpm.vercmp({json.dumps(a)}, {json.dumps(b)}) .. ' ')"
                    for a, b in pairs)
    out = subprocess.run(["rpm", "--eval", f"%{{lua: {body}}}"], capture_output=True,
                         text=True, check=True).stdout
    # rpm's Lua print writes into the expansion, with nothing between values: a space each.
    return [int(v) for v in out.split()]


def test_the_table_against_rpm() -> None:
    expected = rpm_says(tuple(PAIRS))
    assert len(expected) == len(PAIRS)
    got = [policy.evr_compare(a, b) for a, b in PAIRS]
    wrong = [(a, b, g, e) for (a, b), g, e in zip(PAIRS, got, expected, strict=True) if g != e]
    assert not wrong, wrong
    # The table is not all one answer: it would catch a comparison that always says one thing.
    assert {-1, 0, 1} <= set(expected)


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_the_sort_key_agrees_with_the_comparison(a: str, b: str) -> None:
    expected = policy.evr_compare(a, b)
    assert formats.compare_versions(RPM, a, b) == expected
    assert policy.evr_compare(b, a) == -expected


def test_sorting_full_versions_as_rpm_does() -> None:
    versions = ["1.0-1", "1:0.5-1", "1.0~rc1-1", "1.0^git1-1", "1.0-1.1", "1.0.1-1", "1.0-0.9"]
    assert sorted(versions, key=RPM.version_key) == [
        "1.0~rc1-1", "1.0-0.9", "1.0-1", "1.0-1.1", "1.0^git1-1", "1.0.1-1", "1:0.5-1"]


def test_versions_and_releases_rpm_cannot_carry() -> None:
    assert RPM.check_version_parts("1.0", "1") is None
    assert RPM.check_version_parts("2:1.0~rc1^git2", "0.1") is None
    assert RPM.check_version_parts("1.0-2", "1")[0] == "version"
    assert RPM.check_version_parts("1.0", "1-2")[0] == "release"
    assert RPM.check_version_parts("x:1.0", "1")[0] == "version"
    assert RPM.check_version_parts("1.0 beta", "1")[0] == "version"
    assert RPM.full_version("3:1.0", "2") == "3:1.0-2"
    assert RPM.check_version("3:1.0-2") is None
    assert RPM.check_version("1.0") is not None


def test_names() -> None:
    assert RPM.check_name("python3-foo_bar+x") is None
    for bad in ("-foo", "foo bar", "foo/bar", "foo(x)", ""):
        assert RPM.check_name(bad) is not None, bad


def test_archive_file_names_leave_the_epoch_out() -> None:
    assert RPM.archive_filename("hello", "2:1.0-1", "amd64") == "hello-1.0-1.x86_64.rpm"
    assert RPM.archive_filename("hello", "1.0-1", "all") == "hello-1.0-1.noarch.rpm"
    name = RPM.parse_archive_filename("my-tool-2-1.0~rc1-3.aarch64.rpm")
    assert (name.name, name.version, name.arch) == ("my-tool-2", "1.0~rc1-3", "arm64")
    for bad in ("hello-1.0-1.src.rpm", "hello-1.0.x86_64.rpm", "hello_1.0-1_amd64.deb",
                "hello-1.0-1.sparc.rpm"):
        with pytest.raises(ValueError):
            RPM.parse_archive_filename(bad)


def test_architecture_names() -> None:
    assert [RPM.arch_name(a) for a in ("amd64", "arm64", "all")] == [
        "x86_64", "aarch64", "noarch"]
    assert [RPM.farm_arch(a) for a in ("x86_64", "aarch64", "noarch")] == [
        "amd64", "arm64", "all"]
    with pytest.raises(ValueError):
        RPM.farm_arch("amd64")


@pytest.mark.parametrize(("farm", "rpm"), [
    ("libfoo", "libfoo"),
    ("libfoo (>= 1.2)", "libfoo >= 1.2"),
    ("libfoo (<< 2)", "libfoo < 2"),
    ("libfoo (>> 2:1.0-3)", "libfoo > 2:1.0-3"),
    ("libfoo (= 1.0-1)", "libfoo = 1.0-1"),
    ("libfoo (<= 1.0~rc1)", "libfoo <= 1.0~rc1"),
    ("/bin/sh", "/bin/sh"),
    ("perl(Foo::Bar) (>= 1.0)", "perl(Foo::Bar) >= 1.0"),
    ("libc.so.6()(64bit)", "libc.so.6()(64bit)"),
    ("mta | postfix (>= 3)", "(mta or postfix >= 3)"),
    ("a|b|c", "(a or b or c)"),
])
def test_relations_into_rpm_syntax(farm: str, rpm: str) -> None:
    assert RPM.check_relation(farm) is None
    assert policy.to_rpm(farm) == rpm


def test_rich_dependencies_are_understood_by_rpm(tmp_path) -> None:
    """What the translation writes, rpm's own parser reads (a spec with it parses)."""
    spec = tmp_path / "t.spec"
    relations = [policy.to_rpm(r) for r in ("mta | postfix (>= 3)", "perl(Foo::Bar) (>= 1)",
                                            "libfoo (<< 2)")]
    spec.write_text("Name: t\nVersion: 1\nRelease: 1\nSummary: t\nLicense: MIT\n"
                    + "".join(f"Requires: {r}\n" for r in relations)
                    + "%description\nt\n%files\n")
    out = subprocess.run(["rpmspec", "-q", "--requires", str(spec)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == sorted(relations)


@pytest.mark.parametrize(("relation", "says"), [
    ("libfoo [amd64]", "architecture restrictions"),
    ("libfoo:any", "architecture qualifiers"),
    ("libfoo:native (>= 1)", "architecture qualifiers"),
    ("libfoo <!nocheck>", "build profiles"),
    ("libfoo (>= 1.0-2-3)", "not an rpm version"),
    ("libfoo (~ 1)", "not 'name'"),
    ("libfoo (>= 1) extra", "not 'name'"),
    ("", "empty"),
])
def test_relations_rpm_cannot_express(relation: str, says: str) -> None:
    problem = RPM.check_relation(relation)
    assert problem is not None and says in problem, problem


def test_relation_names_cover_every_alternative() -> None:
    assert RPM.relation_names(["a | b (>= 1)", "c", "a"]) == ["a", "b", "c"]


@pytest.mark.parametrize(("kind", "tag", "allowed"), [
    ("depends", "Requires", True), ("recommends", "Recommends", True),
    ("conflicts", "Conflicts", True), ("provides", "Provides", False),
    ("replaces", "Obsoletes", False),
])
def test_alternatives_only_where_rpm_takes_rich_dependencies(tmp_path, kind: str, tag: str,
                                                             allowed: bool) -> None:
    """Alternatives become a rich dependency, which rpm's spec parser takes in some tags
    only: the check of each relation field says what rpm says of its tag."""
    relation = "mta | postfix (>= 3)"
    spec = tmp_path / "t.spec"
    spec.write_text("Name: t\nVersion: 1\nRelease: 1\nSummary: t\nLicense: MIT\n"
                    f"{tag}: {policy.to_rpm(relation)}\n%description\nt\n%files\n")
    parsed = subprocess.run(["rpmspec", "-P", str(spec)], capture_output=True, text=True)
    assert (parsed.returncode == 0) is allowed, parsed.stderr
    problem = RPM.check_relation(relation, kind)
    assert (problem is None) is allowed, problem
    if not allowed:
        assert "rpm allows no alternatives" in problem and tag in problem
        assert "No rich dependencies allowed" in parsed.stderr
    # one name is fine in every field
    assert RPM.check_relation("postfix (>= 3)", kind) is None
