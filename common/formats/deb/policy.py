"""Debian's rules for names, versions, relations, archive file names and control text.

Version ordering and relation parsing are python-debian's (policy 5.6.12 and 7.1), never string
order or a parser of the project's own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any, cast

from debian.deb822 import PkgRelation
from debian.debian_support import Version

#: Debian policy 5.6.1: lower-case alphanumerics, + - . ; at least two characters.
PACKAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
#: An upstream version as a definition gives it (no epoch, no hyphen: the revision is separate).
#: a definition's ``version``: an optional epoch (``1:``), then the upstream version
UPSTREAM_RE = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*$")
REVISION_RE = re.compile(r"^[A-Za-z0-9.+~]+$")
EPOCH_RE = re.compile(r"^[0-9]+$")
#: A full Debian version: [epoch:]upstream[-revision].
VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$")
#: The priorities a package may have (policy 2.5).
PRIORITIES = ("required", "important", "standard", "optional", "extra")
#: The operators of versioned relations (policy 7.1).
RELATION_OPERATORS = ("<<", "<=", "=", ">=", ">>")
#: The file name of an archive in the pool: name_version_arch.deb (version without epoch).
DEB_FILENAME_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]+)_(?P<version>[0-9][A-Za-z0-9.+~-]*)_(?P<arch>[a-z0-9-]+)\.deb$"
)
#: What a .buildinfo next to the archives is called (kept with the build, never published).
BUILDINFO_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+_[0-9][A-Za-z0-9.+~-]*_[a-z0-9-]+\.buildinfo")


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions ``a`` and ``b``."""
    va, vb = Version(a), Version(b)
    return (va > vb) - (va < vb)


def version_key(version: str) -> Version:
    """A sort key that orders versions the way dpkg does."""
    return Version(version)


def is_valid_version(version: str) -> bool:
    if not VERSION_RE.fullmatch(version):
        return False
    try:
        Version(version)
    except ValueError:
        return False
    return True


class _Quiet(logging.Filter):
    """python-debian logs each relation it cannot read; pkgfarm reports those itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("cannot parse package relationship")


logging.getLogger("debian.deb822").addFilter(_Quiet())


def parse_relations(text: str) -> list[list[dict[str, Any]]]:
    """python-debian's parse of a relation field (``a (>= 1) | b, c``): one list of
    alternatives per comma-separated item. ValueError for text it cannot read (python-debian
    hands such text back whole as a package name, which no Debian name matches)."""
    parsed = cast(list[list[dict[str, Any]]], PkgRelation.parse_relations(text))
    for alternatives in parsed:
        for alt in alternatives:
            if not PACKAGE_NAME_RE.fullmatch(alt["name"]):
                raise ValueError(f"{alt['name']!r} is not a package name, optionally with "
                                 "(op version), [arches] and <profiles>")
    return parsed


def check_priority(priority: str) -> str | None:
    """What is wrong with ``priority`` as a Debian package's priority, or None."""
    if priority not in PRIORITIES:
        return f"{priority!r} is not a Debian priority: use one of {', '.join(PRIORITIES)}"
    return None


#: The relation fields (the farm's kinds) where dpkg allows no alternatives (``a | b``).
NO_ALTERNATIVES = {"conflicts": "Conflicts", "provides": "Provides", "replaces": "Replaces"}


def check_relation(relation: str, kind: str = "depends") -> str | None:
    """What is wrong with one item of relation field ``kind`` (depends, recommends,
    conflicts, provides, replaces: ``name [(op version)]``, ``|`` between alternatives where
    dpkg allows them), or None."""
    if not relation.strip():
        return "an empty relation"
    if "," in relation or "\n" in relation:
        return "one relation per list item, no commas or newlines"
    try:
        parsed = parse_relations(relation)
    except ValueError as exc:
        return f"not a package relation: {exc}"
    if len(parsed) != 1 or not parsed[0]:
        return "not a package relation"
    if len(parsed[0]) > 1 and kind in NO_ALTERNATIVES:
        return f"dpkg allows no alternatives ('|') in {NO_ALTERNATIVES[kind]}"
    for alt in parsed[0]:
        if alt["version"] is None:
            continue
        op, version = alt["version"]
        if op not in RELATION_OPERATORS:
            return f"{op!r} is not a relation operator ({', '.join(RELATION_OPERATORS)})"
        if kind == "provides" and op != "=":
            return "a Debian package provides exact versions only ('name (= version)')"
        if not is_valid_version(version):
            return f"{version!r} is not a Debian version"
    return None


def relation_names(relations: Iterable[str]) -> list[str]:
    """Every package name the relations mention, in every alternative, each once, without
    versions, architecture qualifiers or restrictions."""
    names: list[str] = []
    for relation in relations:
        if not relation.strip():
            continue
        for alternatives in parse_relations(relation):
            for alt in alternatives:
                if alt["name"] not in names:
                    names.append(alt["name"])
    return names


def first_alternatives(relations: Iterable[str]) -> list[str]:
    """The name each relation's first alternative gives (what apt-get installs for it when
    none is installed yet)."""
    names: list[str] = []
    for relation in relations:
        if not relation.strip():
            continue
        for alternatives in parse_relations(relation):
            if alternatives and alternatives[0]["name"] not in names:
                names.append(alternatives[0]["name"])
    return names


def strip_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


def deb_filename(name: str, version: str, arch: str) -> str:
    return f"{name}_{strip_epoch(version)}_{arch}.deb"


def parse_deb_filename(filename: str) -> tuple[str, str, str]:
    """(name, version without epoch, arch) of ``name_version_arch.deb``; ValueError else."""
    m = DEB_FILENAME_RE.fullmatch(filename)
    if not m:
        raise ValueError(f"{filename!r} is not a Debian archive name (name_version_arch.deb)")
    return m["name"], m["version"], m["arch"]


def pool_dir(component: str, source: str) -> str:
    """Where a source's archives live in the pool, as Debian lays it out (pool/main/libf/libfoo)."""
    prefix = source[:4] if source.startswith("lib") and len(source) > 3 else source[0]
    return f"pool/{component}/{prefix}/{source}"


def format_description(text: str) -> str:
    """A control-file Description value: the synopsis, then the long text with its dots."""
    lines = text.strip("\n").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError("description must start with a one-line summary")
    out = [lines[0].strip()]
    for line in lines[1:]:
        out.append(" ." if not line.strip() else " " + line.rstrip())
    return "\n".join(out)
