"""pacman's package format as the farm speaks it: ``.pkg.tar.zst`` archives, pacman
repositories (a ``<repo>.db`` tar of ``desc`` entries, signed).

Names follow makepkg's rules (ASCII letters, digits and ``@ . _ + -``, not starting with a hyphen
or a dot); a full version is ``[epoch:]pkgver-pkgrel`` and compares as pacman's ``vercmp``
(`vercmp`); relations are written in the farm's syntax (Debian's) and translated into pacman's
(``name (>= 1.0)`` -> ``name>=1.0``, ``<<`` -> ``<``, ``>>`` -> ``>``). pacman has no
alternatives, architecture qualifiers or build profiles: relations using them are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from common import arch as archmod
from common.formats import ArchiveName, SourcePlan
from common.formats.pacman.vercmp import vercmp, version_key
from common.states import SourceKind

if TYPE_CHECKING:
    from common.config import Settings

__all__ = ["PACMAN", "PacmanFormat", "Relation", "parse_relation", "to_pacman", "vercmp"]

#: makepkg's rule for pkgname (lint_pkgbuild/pkgname.sh).
NAME_RE = re.compile(r"^[A-Za-z0-9+_.@-]+$")
#: makepkg's rules: pkgver holds no colon, slash, hyphen or whitespace; pkgrel is
#: integer[.integer]; the epoch is an integer.
PKGVER_RE = re.compile(r"^[!-~]+$")
PKGVER_FORBIDDEN_RE = re.compile(r"[\s/:-]")
PKGREL_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
EPOCH_RE = re.compile(r"^[0-9]+$")
#: The archives the farm makes and accepts.
EXTENSION = ".pkg.tar.zst"
#: The farm's architecture names (Debian's) and pacman's (Arch Linux and its ports).
ARCHES = {
    archmod.ALL: "any", "amd64": "x86_64", "arm64": "aarch64", "i386": "i686",
    "armhf": "armv7h", "armel": "armv5", "riscv64": "riscv64", "loong64": "loong64",
    "ppc64el": "powerpc64le", "ppc64": "powerpc64", "powerpc": "powerpc",
}
FARM_ARCHES = {v: k for k, v in ARCHES.items()}
#: The farm's relation operators and pacman's.
OPERATORS = {"<<": "<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">"}
PACMAN_OPERATORS = ("<=", ">=", "<", ">", "=")

_RELATION_RE = re.compile(
    r"^\s*(?P<name>[^\s(\[<|:,]+)(?P<qual>:\S+)?\s*"
    r"(?:\(\s*(?P<op><<|<=|=|>=|>>|<|>)\s*(?P<version>[^\s()]+)\s*\))?\s*(?P<rest>.*?)\s*$")


@dataclass(frozen=True)
class Relation:
    name: str
    op: str | None = None  # the farm's operator
    version: str | None = None


def check_full_version(version: str) -> str | None:
    """What is wrong with ``[epoch:]pkgver-pkgrel``, or None."""
    if not version.isascii() or not version:
        return f"{version!r} is not a pacman version ([epoch:]pkgver-pkgrel, ASCII)"
    epoch, colon, rest = version.rpartition(":") if ":" in version else ("", "", version)
    if colon and not EPOCH_RE.fullmatch(epoch):
        return f"{version!r}: the epoch before ':' must be a number"
    pkgver, hyphen, pkgrel = rest.rpartition("-")
    if not hyphen:
        return f"{version!r} is not a pacman version ([epoch:]pkgver-pkgrel)"
    if not pkgver or PKGVER_FORBIDDEN_RE.search(pkgver) or not PKGVER_RE.fullmatch(pkgver):
        return (f"{version!r}: pkgver must not be empty nor hold colons, slashes, hyphens "
                "or whitespace")
    if not PKGREL_RE.fullmatch(pkgrel):
        return f"{version!r}: pkgrel must be integer[.integer]"
    return None


def parse_relation(relation: str) -> Relation:
    """One relation in the farm's syntax (``name``, ``name (>= 1.0)``) that pacman can carry;
    ValueError saying what it cannot."""
    if not relation.strip():
        raise ValueError("an empty relation")
    if "," in relation or "\n" in relation:
        raise ValueError("one relation per list item, no commas or newlines")
    if "|" in relation:
        raise ValueError(f"{relation!r}: pacman has no alternatives ('a | b'); give pacman "
                         "its own relations (a mapping per format) naming one package")
    m = _RELATION_RE.fullmatch(relation)
    if not m:
        raise ValueError(f"{relation!r} is not 'name' or 'name (op version)'")
    if m["qual"]:
        raise ValueError(f"{relation!r}: pacman has no architecture qualifiers "
                         f"({m['qual']})")
    rest = m["rest"]
    if rest.startswith("["):
        raise ValueError(f"{relation!r}: pacman has no architecture restrictions ({rest})")
    if rest.startswith("<"):
        raise ValueError(f"{relation!r}: pacman has no build profiles ({rest})")
    if rest:
        raise ValueError(f"{relation!r} is not 'name' or 'name (op version)'")
    name = m["name"]
    if not NAME_RE.fullmatch(name) or name[0] in "-.":
        raise ValueError(f"{name!r} is not a pacman package name")
    op, version = m["op"], m["version"]
    if op is not None:
        if op not in OPERATORS:
            raise ValueError(f"{op!r} is not a relation operator (<< <= = >= >>)")
        if not version.isascii() or re.search(r"[\s<>=]", version):
            raise ValueError(f"{version!r} is not a version pacman can compare")
    return Relation(name, op, version)


def to_pacman(relation: str) -> str:
    """A relation in the farm's syntax as pacman writes it (``name>=1.0``)."""
    rel = parse_relation(relation)
    if rel.op is None:
        return rel.name
    return f"{rel.name}{OPERATORS[rel.op]}{rel.version}"


def parse_pacman_dep(dep: str) -> tuple[str, str | None, str | None]:
    """(name, operator, version) of a dependency as pacman writes it; ValueError else."""
    for op in PACMAN_OPERATORS:
        name, found, version = dep.partition(op)
        if found:
            break
    else:
        name, op, version = dep, None, None
    if not NAME_RE.fullmatch(name) or name[0] in "-.":
        raise ValueError(f"{dep!r} is not a pacman dependency (name[op version])")
    if op is not None and (not version or re.search(r"[\s<>=]", version)):
        raise ValueError(f"{dep!r} is not a pacman dependency (name[op version])")
    return name, op, version


class PacmanFormat:
    name = "pacman"
    title = "pacman (.pkg.tar.zst)"
    #: no source packages of its own kind: built from definitions only
    source_kinds: Mapping[SourceKind, str] = MappingProxyType({})

    def arch_name(self, arch: str) -> str:
        # Debian ports pacman has no name for keep the farm's name.
        return ARCHES.get(arch, arch)

    def farm_arch(self, arch: str) -> str:
        if arch in FARM_ARCHES:
            return FARM_ARCHES[arch]
        if archmod.is_known(arch) and arch not in ARCHES:
            return arch
        raise ValueError(f"unknown pacman architecture {arch!r}")

    def check_name(self, name: str) -> str | None:
        if not NAME_RE.fullmatch(name) or name[0] in "-.":
            return (f"{name!r} is not a pacman package name (ASCII letters, digits and "
                    "@ . _ + -, not starting with a hyphen or a dot)")
        return None

    def check_version_parts(self, version: str, release: str) -> tuple[str, str] | None:
        epoch, colon, pkgver = version.partition(":") if ":" in version else ("", "", version)
        if colon and not EPOCH_RE.fullmatch(epoch):
            return "version", f"{version!r}: the epoch before ':' must be a number"
        if (not pkgver or not pkgver.isascii() or PKGVER_FORBIDDEN_RE.search(pkgver)
                or not PKGVER_RE.fullmatch(pkgver)):
            return "version", (f"{version!r}: pacman's pkgver must be ASCII and hold no "
                               "colon (but the epoch's), slash, hyphen or whitespace")
        if not PKGREL_RE.fullmatch(release):
            return "release", f"{release!r}: pacman's pkgrel must be integer[.integer]"
        return None

    def check_metadata(self, fields: Mapping[str, str]) -> tuple[str, str] | None:
        return None  # a section and a priority are not part of its metadata

    def full_version(self, version: str, release: str) -> str:
        return f"{version}-{release}"

    def check_version(self, version: str) -> str | None:
        return check_full_version(version)

    def version_key(self, version: str) -> Any:
        return version_key(version)

    def check_relation(self, relation: str, kind: str = "depends") -> str | None:
        try:
            rel = parse_relation(relation)
        except ValueError as exc:
            return str(exc)
        if kind == "provides" and rel.op not in (None, "="):
            return (f"{relation!r}: makepkg refuses a provides with {rel.op!r}; pacman "
                    "packages provide no version or an exact one ('name (= version)')")
        return None

    def relation_names(self, relations: Iterable[str]) -> list[str]:
        names: list[str] = []
        for relation in relations:
            if not relation.strip():
                continue
            name = parse_relation(relation).name
            if name not in names:
                names.append(name)
        return names

    def archive_filename(self, name: str, version: str, arch: str) -> str:
        return f"{name}-{version}-{self.arch_name(arch)}{EXTENSION}"

    def parse_archive_filename(self, filename: str) -> ArchiveName:
        if not filename.endswith(EXTENSION):
            raise ValueError(f"{filename!r} is not a pacman archive name "
                             f"(name-[epoch:]pkgver-pkgrel-arch{EXTENSION})")
        # From the right: names may hold hyphens, pkgver, pkgrel and arch hold none.
        parts = filename[:-len(EXTENSION)].rsplit("-", 3)
        if len(parts) != 4:
            raise ValueError(f"{filename!r} is not a pacman archive name "
                             f"(name-[epoch:]pkgver-pkgrel-arch{EXTENSION})")
        name, pkgver, pkgrel, arch = parts
        version = f"{pkgver}-{pkgrel}"
        problem = self.check_name(name) or check_full_version(version)
        if problem:
            raise ValueError(f"{filename!r}: {problem}")
        return ArchiveName(name, version, self.farm_arch(arch))

    def names_location(self, ref: str) -> bool:
        return self.check_name(ref) is not None

    def resolve_source(self, ref: str, settings: Settings, state_dir: Path,
                       served: Sequence[str], requested: str | None) -> SourcePlan | None:
        return None  # pacman has no source packages of its own kind here (no PKGBUILDs)


PACMAN = PacmanFormat()
