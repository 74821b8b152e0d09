"""master/formats/deb/archive.py: the strict reading of a .deb's control file, the allow-list
of fields its index entry takes, and the checks on their values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.errors import Unprocessable
from master.formats import Digests
from master.formats.deb import archive

GOOD = ("Package: hello\nVersion: 1:2.0-1\nArchitecture: amd64\n"
        "Maintainer: Jane Doe <jane@example.org>\nDescription: say hello\n A friendly program.\n")


def fields_of(control: str) -> dict[str, str]:
    return archive.check_fields(archive.parse_control(control.encode()))


def with_field(line: str) -> str:
    """The good control file with one more line before its Description."""
    head, _, tail = GOOD.partition("Description:")
    return f"{head}{line}\nDescription:{tail}"


def test_the_index_takes_allowed_fields_in_its_own_order() -> None:
    control = ("Description: say hello\n A friendly program.\nPriority: optional\n"
               "Section: utils\nDepends: libc6 (>= 2.36), bash | dash\nPackage: hello\n"
               "Multi-Arch: foreign\nVersion: 2.0-1\nInstalled-Size: 12\nSource: hello-src (2.0)\n"
               "Architecture: amd64\nMaintainer: Jane Doe <jane@example.org>\n"
               "Homepage: https://example.org/hello\nBuilt-Using: gcc-12 (= 12.2.0-14)\n")
    found = fields_of(control)
    assert list(found) == ["Package", "Source", "Version", "Architecture", "Maintainer",
                           "Installed-Size", "Depends", "Built-Using", "Multi-Arch", "Section",
                           "Priority", "Homepage", "Description"]
    assert found["Description"] == "say hello\n A friendly program."


@pytest.mark.parametrize("line", [
    "Essential: yes", "Protected: yes", "Important: yes", "X-Unknown: anything",
    "Task: desktop", "Bugs: mailto:evil@example.org", "Tag: role::program",
    "Original-Maintainer: Someone <s@example.org>", "Build-Ids: 0123abcd",
    "Auto-Built-Package: debug-symbols", "Build-Essential: yes", "Origin: elsewhere",
])
def test_other_fields_stay_out_of_the_index(line: str) -> None:
    found = fields_of(with_field(line))
    name = line.split(":", 1)[0]
    assert name not in found
    assert set(found) <= set(archive.INDEX_FIELDS)
    assert found["Package"] == "hello"


@pytest.mark.parametrize("line", [
    "SHA512: 00", "SHA256: 00", "MD5sum: 00", "SHA1: 00", "Size: 1", "Filename: pool/x.deb",
    "Description-md5: 00", "Phased-Update-Percentage: 0", "phased-update-percentage: 100",
])
def test_fields_only_a_repository_writes_refuse_the_archive(line: str) -> None:
    with pytest.raises(Unprocessable, match="only the repository writes") as info:
        fields_of(with_field(line))
    assert info.value.status == 422


def test_field_names_are_read_whatever_their_case() -> None:
    found = fields_of(GOOD.replace("Package:", "package:").replace("Version:", "VERSION:"))
    assert found["Package"] == "hello" and found["Version"] == "1:2.0-1"


@pytest.mark.parametrize("control, field", [
    (GOOD.replace("Package: hello", "Package: " + "h" * 129), "Package"),
    (GOOD.replace("Package: hello", "Package: Hello"), "Package"),
    (GOOD.replace("Version: 1:2.0-1", "Version: 1" * 129), "Version"),
    (GOOD.replace("Version: 1:2.0-1", "Version: two"), "Version"),
    (GOOD.replace("Architecture: amd64", "Architecture: amd46"), "Architecture"),
    (GOOD.replace("Jane Doe <jane@example.org>", "Jane Doe"), "Maintainer"),
    (with_field("Source: ../../../etc"), "Source"),
    (with_field("Source: hello (not a version)"), "Source"),
    (with_field("Installed-Size: -1"), "Installed-Size"),
    (with_field("Installed-Size: 1.5"), "Installed-Size"),
    (with_field("Installed-Size: \u00b2"), "Installed-Size"),  # a digit to str.isdigit
    (with_field("Installed-Size: " + "9" * 16), "Installed-Size"),
    (with_field("Multi-Arch: sometimes"), "Multi-Arch"),
    (with_field("Section: main/utils/more"), "Section"),
    (with_field("Section: utils net"), "Section"),
    (with_field("Priority: urgent"), "Priority"),
    (with_field("Homepage: javascript:alert(1)"), "Homepage"),
    (with_field("Homepage: https://example.org/a b"), "Homepage"),
    (with_field("Depends: libc6 (>= )"), "Depends"),
    (with_field("Depends: libc6 (~ 2)"), "Depends"),
    (with_field("Depends: libc6 (< 2)"), "Depends"),
    (with_field("Depends: libc6 (>= not-a-version)"), "Depends"),
    (with_field("Depends: libc6 [amd64]"), "Depends"),
    (with_field("Depends: libc6 <!nocheck>"), "Depends"),
    (with_field("Depends: libc6:mips99"), "Depends"),
    (with_field("Depends: libc6,"), "Depends"),
    (with_field("Conflicts: foo | bar"), "Conflicts"),
    (with_field("Provides: foo (>= 1)"), "Provides"),
    (with_field("Built-Using: gcc-12"), "Built-Using"),
])
def test_bad_values_of_indexed_fields_are_refused(control: str, field: str) -> None:
    with pytest.raises(Unprocessable) as info:
        fields_of(control)
    assert info.value.status == 422
    assert field in info.value.message


def test_multi_arch_same_needs_an_architecture() -> None:
    assert fields_of(with_field("Multi-Arch: same"))["Multi-Arch"] == "same"
    with pytest.raises(Unprocessable, match="Multi-Arch"):
        fields_of(with_field("Multi-Arch: same").replace("Architecture: amd64",
                                                          "Architecture: all"))


@pytest.mark.parametrize("line", [
    "Depends: libc6:any (>= 2.36), python3:native | python3-minimal",
    "Provides: hello-api (= 2), greeter", "Pre-Depends: dpkg (>= 1.20)",
    "Breaks: hello-old (<< 2)", "Static-Built-Using: golang-x (= 1.0-1)",
    "Section: contrib/net", "Homepage: http://example.org/?q=1&x=2",
])
def test_good_values_are_kept_as_given(line: str) -> None:
    name, _, value = line.partition(": ")
    assert fields_of(with_field(line))[name] == value


def test_a_value_may_not_run_over_lines_unless_it_is_a_description() -> None:
    with pytest.raises(Unprocessable, match="one line"):
        fields_of(with_field("Depends: libc6,\n bash"))


def test_the_entry_is_the_index_fields_then_what_the_master_computed() -> None:
    info = archive.ArchiveInfo(name="hello", version="2.0-1", arch="amd64", source="hello",
                               fields=fields_of(with_field("Essential: yes\nX-Evil: 1")))
    entry = archive.index_entry(info, "pool/main/h/hello/hello_2.0-1_amd64.deb",
                                Digests(size=10, md5="m", sha1="s1", sha256="s256"))
    assert entry == (
        "Package: hello\nVersion: 1:2.0-1\nArchitecture: amd64\n"
        "Maintainer: Jane Doe <jane@example.org>\nDescription: say hello\n A friendly program.\n"
        "Filename: pool/main/h/hello/hello_2.0-1_amd64.deb\nSize: 10\nMD5sum: m\nSHA1: s1\n"
        "SHA256: s256\n")


def test_inspect_reads_a_real_archive_and_leaves_out_what_it_does_not_index(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/hello").mkdir(parents=True)
    (root / "usr/share/hello/file").write_text("hello\n")
    (root / "DEBIAN/control").write_text(with_field("Essential: yes\nX-Cargo-Built-Using: x"))
    deb = tmp_path / "hello.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    info = archive.inspect(deb)
    assert (info.name, info.version, info.arch, info.source) == (
        "hello", "1:2.0-1", "amd64", "hello")
    assert "Essential" not in info.fields and "X-Cargo-Built-Using" not in info.fields
