"""Debian's rules (common/formats/deb): version order, archive file names, pool layout,
Description text, relations."""

from __future__ import annotations

import functools
import subprocess

import pytest

from common.formats import ArchiveName
from common.formats.deb import DEB
from common.formats.deb.policy import (
    check_relation,
    compare_versions,
    deb_filename,
    format_description,
    is_valid_version,
    pool_dir,
    strip_epoch,
    version_key,
)

#: (lower, higher) as dpkg orders them.
ORDERED = [
    ("1.0", "1.1"),
    ("1.9", "1.10"),
    ("1.0", "1.0.0"),
    ("1.0~rc1", "1.0"),
    ("1.0~~", "1.0~"),
    ("1.0~", "1.0"),
    ("1.2.3~", "1.2.3"),
    ("1.0", "1.0a"),
    ("1.0a", "1.0b"),
    ("1.0a", "1.0+"),  # letters sort before other characters
    ("1.0+dfsg", "1.0.1"),  # '+' sorts before '.'
    ("1.0-1", "1.0-2"),
    ("1.0-9", "1.0-10"),
    ("1.0-1", "1.0-1.1"),
    ("1.0-1", "1.0-1a"),
    ("1.0-1", "1.0-1+b1"),
    ("1.0-1+b1", "1.0.1-1"),
    ("2.0-1~bpo1", "2.0-1"),
    ("9.9", "1:0.1"),
    ("9.9-1", "1:0.1-1"),
    ("1:1.0", "2:0.1"),
    ("1:9.9", "10:0.1"),
]

#: pairs dpkg considers equal
EQUAL = [
    ("1.0", "1.0"),
    ("0:1.0", "1.0"),
    ("1.01", "1.1"),
    ("1.0-1", "1.0-01"),
    ("1.0-0", "1.0"),
]


@pytest.mark.parametrize(("lower", "higher"), ORDERED)
def test_compare_versions_orders_like_dpkg(lower: str, higher: str) -> None:
    assert compare_versions(lower, higher) == -1
    assert compare_versions(higher, lower) == 1
    assert version_key(lower) < version_key(higher)


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_compare_equal_versions(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0
    assert compare_versions(b, a) == 0


def test_version_key_sorts_a_list() -> None:
    shuffled = ["1:0.1", "1.0-1+b1", "1.0~rc1-1", "1.0.1-1", "1.0-1", "1.10-1", "1.9-1"]
    assert sorted(shuffled, key=version_key) == [
        "1.0~rc1-1", "1.0-1", "1.0-1+b1", "1.0.1-1", "1.9-1", "1.10-1", "1:0.1"]


@functools.cache
def _dpkg_lt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0


def test_the_table_agrees_with_dpkg() -> None:
    """The expectations above are dpkg's own answers (dpkg is installed wherever we build)."""
    for lower, higher in ORDERED:
        assert _dpkg_lt(lower, higher), (lower, higher)
    for a, b in EQUAL:
        assert not _dpkg_lt(a, b) and not _dpkg_lt(b, a), (a, b)


@pytest.mark.parametrize("version", ["1.0", "1:2.0-1", "2.0~rc1+dfsg-1ubuntu2", "0"])
def test_valid_versions(version: str) -> None:
    assert is_valid_version(version)


@pytest.mark.parametrize("version", ["", "v1.0", "1.0 1", "a:1.0", "-1", "1.0_1", "1.0-1\n"])
def test_invalid_versions(version: str) -> None:
    assert not is_valid_version(version)


def test_strip_epoch_and_deb_filename() -> None:
    assert strip_epoch("1:2.0-1") == "2.0-1"
    assert strip_epoch("2.0-1") == "2.0-1"
    assert deb_filename("hello", "1:2.0-1", "amd64") == "hello_2.0-1_amd64.deb"
    assert deb_filename("hello", "2.0-1", "all") == "hello_2.0-1_all.deb"
    assert DEB.archive_filename("a1", "1", "all") == "a1_1_all.deb"


# -- archive file names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("hello_1.0-1_amd64.deb", ArchiveName("hello", "1.0-1", "amd64")),
        ("hello_1.0_all.deb", ArchiveName("hello", "1.0", "all")),
        ("libfoo+bar.2_2.0~rc1+dfsg-3_arm64.deb", ArchiveName("libfoo+bar.2", "2.0~rc1+dfsg-3",
                                                           "arm64")),
        ("g++_12.2.0-14_amd64.deb", ArchiveName("g++", "12.2.0-14", "amd64")),
        ("linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb",
         ArchiveName("linux-image-6.1.0-9-amd64", "6.1.27-1", "amd64")),
    ],
)
def test_parse_deb_filename(filename: str, expected: ArchiveName) -> None:
    parsed = DEB.parse_archive_filename(filename)
    assert parsed == expected
    assert DEB.archive_filename(parsed.name, parsed.version, parsed.arch) == filename


@pytest.mark.parametrize("filename", [
    "", "hello.deb", "hello_1.0-1_amd64", "hello_1.0-1.deb", "hello-1.0-1-amd64.deb",
    "Hello_1.0_amd64.deb", "hello_v1_amd64.deb", "hello_1:1.0-1_amd64.deb",
    "hello_1.0_amd64.deb.gz", "h_1.0_amd64.deb", "hello_1.0_AMD64.deb",
    "../hello_1.0_amd64.deb", "hello_1.0_amd64.udeb", "hello_1.0_1_amd64.deb",
    "hello_1.0_amd64.deb ", " hello_1.0_amd64.deb",
])
def test_parse_bad_deb_filenames(filename: str) -> None:
    with pytest.raises(ValueError, match="not a Debian archive name"):
        DEB.parse_archive_filename(filename)


def test_parse_deb_filename_refuses_a_trailing_newline() -> None:
    with pytest.raises(ValueError):
        DEB.parse_archive_filename("hello_1.0-1_amd64.deb\n")


# -- pool layout -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "source", "expected"),
    [
        ("main", "libfoo", "pool/main/libf/libfoo"),
        ("main", "hello", "pool/main/h/hello"),
        ("main", "libc6", "pool/main/libc/libc6"),
        ("main", "lib", "pool/main/l/lib"),
        ("main", "liberation", "pool/main/libe/liberation"),
        ("contrib", "zsh", "pool/contrib/z/zsh"),
        ("main", "0ad", "pool/main/0/0ad"),
    ],
)
def test_pool_dir(component: str, source: str, expected: str) -> None:
    assert pool_dir(component, source) == expected


# -- Description -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Summary", "Summary"),
        ("  Summary  \n", "Summary"),
        ("Summary\nLong text.", "Summary\n Long text."),
        ("Summary\nOne.\n\nTwo.", "Summary\n One.\n .\n Two."),
        ("Summary\nOne.\n   \nTwo.", "Summary\n One.\n .\n Two."),
        ("Summary\n  indented verbatim\nplain   ", "Summary\n   indented verbatim\n plain"),
        ("\n\nSummary\nBody\n\n\n", "Summary\n Body"),
    ],
)
def test_format_description(text: str, expected: str) -> None:
    assert format_description(text) == expected


@pytest.mark.parametrize("text", ["", "\n\n", "   \nBody", "\t\nBody"])
def test_format_description_needs_a_summary(text: str) -> None:
    with pytest.raises(ValueError, match="summary"):
        format_description(text)


@pytest.mark.parametrize("relation", [
    "bash", "libc6 (>= 2.36)", "python3:any", "foo | bar (<< 2:1.0~rc1)",
    "gcc [amd64 arm64]", "debhelper-compat (= 13)", "pkg <!nocheck>",
])
def test_valid_relations(relation):
    assert check_relation(relation) is None


@pytest.mark.parametrize("relation", [
    "1", "Bash", "bash (>= )", "bash (=> 1.0)", "bash; rm -rf /", "bash |", "",
    "bash (>= 1.0!)", "a, b",
])
def test_invalid_relations(relation):
    assert check_relation(relation)


def dpkg_deb_refuses(tmp_path, field: str, value: str) -> str:
    """What dpkg-deb --build says of a control file with ``field: value`` (its error or its
    warning; empty when it has nothing to say)."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN/control").write_text(
        "Package: t\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@example.org>\n"
        f"Description: t\n{field}: {value}\n")
    result = subprocess.run(["dpkg-deb", "--build", str(root), str(tmp_path / "t.deb")],
                            capture_output=True, text=True)
    return result.stderr if result.returncode != 0 or "warning" in result.stderr else ""


@pytest.mark.parametrize(("kind", "field", "relation", "says"), [
    ("depends", "Depends", "mta | postfix (>= 1)", None),
    ("recommends", "Recommends", "mta | postfix", None),
    ("conflicts", "Conflicts", "mta | postfix", "alternatives"),
    ("replaces", "Replaces", "mta | postfix", "alternatives"),
    ("provides", "Provides", "mta | postfix", "alternatives"),
    ("provides", "Provides", "mta (= 1.0)", None),
    ("provides", "Provides", "mta (>= 1.0)", "exact versions"),
    ("provides", "Provides", "mta (<< 2)", "exact versions"),
    ("conflicts", "Conflicts", "mta (<< 2)", None),
])
def test_relations_are_checked_per_field_as_dpkg_does(tmp_path, kind, field, relation,
                                                      says) -> None:
    """Where dpkg-deb refuses (or warns of) a relation in a field, the check of that field
    refuses it, with dpkg's reason."""
    complaint = dpkg_deb_refuses(tmp_path, field, relation)
    problem = check_relation(relation, kind)
    if says is None:
        assert complaint == "" and problem is None, (complaint, problem)
    else:
        assert complaint and problem is not None, (complaint, problem)
        assert says in complaint and says in problem
