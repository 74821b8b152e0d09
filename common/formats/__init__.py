"""The package-format seam, as master and workers both see it.

A package format (Debian's ``deb`` today) is one object that answers everything the rest of
the farm needs to know about names, versions, architectures, relations and archive file names;
the master's repository side (``master.formats``) and the worker's packing side
(``worker.formats``) add what only they need. The rest of the code asks this module for a
format by name and never imports a format's modules, nor runs a format's tools, itself (a test
checks that). docs/FORMATS.md says what a format provides and how to add one.

Build environments are Debian systems whatever archive a build makes: build dependencies are
Debian packages, read with the relation syntax of `build_host()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from common.errors import ConfigError, NotFound
from common.states import SourceKind

if TYPE_CHECKING:
    from common.config import Settings


@dataclass(frozen=True)
class ArchiveName:
    """What an archive's file name says, with the farm's architecture name."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class SourcePlan:
    """A source package of a format's own kind (a Debian source), resolved for a build."""

    #: which of the format's `source_kinds` it is (what the jobs' snapshots hold)
    kind: SourceKind
    name: str
    version: str
    #: the farm architectures its jobs build for (``all`` for the arch-independent part)
    arches: tuple[str, ...]
    snapshot: bytes
    #: the binary packages it makes, and the packages its build needs
    provides: frozenset[str]
    needs: frozenset[str]


class PackageFormat(Protocol):
    """What master and workers share about one package format."""

    #: the format's name in configs, jobs and the API (``deb``)
    name: str
    #: how people call it (``Debian (.deb, APT)``)
    title: str
    #: the kinds of source package of its own the format builds from, each with how people
    #: call one (``Debian source package``); empty when it builds from definitions only
    source_kinds: Mapping[SourceKind, str]

    def arch_name(self, arch: str) -> str:
        """The format's name of farm architecture ``arch`` (``all`` included)."""

    def farm_arch(self, arch: str) -> str:
        """The farm's name of the format's architecture ``arch``; ValueError if none."""

    def check_name(self, name: str) -> str | None:
        """What is wrong with ``name`` as a package name of this format, or None."""

    def check_version_parts(self, version: str, release: str) -> tuple[str, str] | None:
        """(field, problem) for an upstream version or release this format cannot carry."""

    def check_metadata(self, fields: Mapping[str, str]) -> tuple[str, str] | None:
        """(field, problem) for a value of a definition's descriptive fields (``section``,
        ``priority``) the format cannot carry (Debian's priorities are a closed set)."""

    def full_version(self, version: str, release: str) -> str:
        """The version a definition's ``version`` and ``release`` make in this format."""

    def check_version(self, version: str) -> str | None:
        """What is wrong with ``version`` as a full version of this format, or None."""

    def version_key(self, version: str) -> Any:
        """A sort key that orders versions as the format's own tools do."""

    def check_relation(self, relation: str, kind: str = "depends") -> str | None:
        """What is wrong with one relation (``name (>= 1) | other``) of the relation field
        ``kind`` (``depends``, ``recommends``, ``conflicts``, ``provides``, ``replaces``:
        formats allow less in some of them, e.g. no alternatives in ``provides``), or None."""

    def relation_names(self, relations: Iterable[str]) -> list[str]:
        """Every package name the relations mention, in every alternative."""

    def archive_filename(self, name: str, version: str, arch: str) -> str:
        """The file name of the archive of ``name`` ``version`` for farm arch ``arch``."""

    def parse_archive_filename(self, filename: str) -> ArchiveName:
        """The inverse of `archive_filename`; ValueError for another name."""

    def names_location(self, ref: str) -> bool:
        """Whether a build request's ``ref`` names a source by where it is (a URL, a path, a
        repository) rather than by a package name; only admins may ask for those, since the
        master then reads files and reaches other hosts."""

    def resolve_source(self, ref: str, settings: Settings, state_dir: Path,
                       served: Sequence[str], requested: str | None) -> SourcePlan | None:
        """A source package of the format's own kind named by ``ref``, with the jobs it makes
        among the ``served`` architectures (``requested`` narrows them to one), or None when
        the format has no source packages. NotFound when it has but ``ref`` names none.
        ``state_dir`` is a folder the format may keep lookup state in (its own sub-folder)."""


def _registry() -> dict[str, PackageFormat]:
    from common.formats.deb import DEB
    from common.formats.pacman import PACMAN
    from common.formats.rpm import RPM

    return {DEB.name: DEB, RPM.name: RPM, PACMAN.name: PACMAN}


FORMATS: dict[str, PackageFormat] = _registry()
#: The format whose relations build dependencies use: build environments are Debian.
BUILD_HOST = "deb"


def get(name: str) -> PackageFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown package format {name!r} (known: "
                          f"{', '.join(sorted(FORMATS))})") from None


def build_host() -> PackageFormat:
    return FORMATS[BUILD_HOST]


def resolve_source(ref: str, settings: Settings, state_dir: Path, served: Sequence[str],
                   requested: str | None) -> tuple[PackageFormat, SourcePlan] | None:
    """The source package of a format's own kind that ``ref`` names, asked of every format
    that has such sources (`PackageFormat.resolve_source`), with its format. None when no
    format has any; NotFound, saying which kinds were looked for, when none names ``ref``."""
    looked_for: list[str] = []
    for fmt in FORMATS.values():
        if not fmt.source_kinds:
            continue
        try:
            plan = fmt.resolve_source(ref, settings, state_dir, served, requested)
        except NotFound:
            looked_for.extend(fmt.source_kinds.values())
            continue
        if plan is not None:
            return fmt, plan
    if looked_for:
        raise NotFound(f"no {' or '.join(looked_for)} named {ref!r}", package=ref)
    return None


def compare_versions(fmt: PackageFormat, a: str, b: str) -> int:
    ka, kb = fmt.version_key(a), fmt.version_key(b)
    return (ka > kb) - (ka < kb)
