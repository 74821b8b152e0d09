"""Debian's package format as the farm speaks it: `.deb` archives, APT repositories.

Its rules (names, versions, relations, file names) live in `policy`; Debian source packages,
the format's own source kind, in `source` (what one is, its snapshot) and `resolve` (finding
one by name, .dsc or git); a throwaway apt state in `apt`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from common import arch as archmod
from common.formats import ArchiveName, SourcePlan
from common.formats.deb import policy
from common.states import SourceKind

if TYPE_CHECKING:
    from common.config import Settings


class DebFormat:
    name = "deb"
    title = "Debian (.deb, APT)"
    source_kinds: Mapping[SourceKind, str] = MappingProxyType(
        {SourceKind.DEBIAN_SOURCE: "Debian source package"})

    def arch_name(self, arch: str) -> str:
        return arch  # the farm names architectures as Debian does

    def farm_arch(self, arch: str) -> str:
        if arch != archmod.ALL and not archmod.is_known(arch):
            raise ValueError(f"unknown architecture {arch!r}")
        return arch

    def check_name(self, name: str) -> str | None:
        if not policy.PACKAGE_NAME_RE.fullmatch(name):
            return (f"{name!r} is not a Debian package name (lower case letters, digits, "
                    "+ - . ; at least two characters, starting with a letter or digit)")
        return None

    def check_version_parts(self, version: str, release: str) -> tuple[str, str] | None:
        if not policy.UPSTREAM_RE.fullmatch(version):
            return "version", (f"{version!r} must start with a digit (after an optional "
                               "epoch such as 1:) and hold only letters, digits, . + ~")
        if not policy.REVISION_RE.fullmatch(release):
            return "release", f"{release!r} must hold only letters, digits, . + ~"
        return None

    def check_metadata(self, fields: Mapping[str, str]) -> tuple[str, str] | None:
        problem = policy.check_priority(fields.get("priority", "optional"))
        return ("priority", problem) if problem else None

    def full_version(self, version: str, release: str) -> str:
        return f"{version}-{release}"

    def check_version(self, version: str) -> str | None:
        if not policy.is_valid_version(version):
            return f"{version!r} is not a Debian version"
        return None

    def version_key(self, version: str) -> Any:
        return policy.version_key(version)

    def check_relation(self, relation: str, kind: str = "depends") -> str | None:
        return policy.check_relation(relation, kind)

    def relation_names(self, relations: Iterable[str]) -> list[str]:
        return policy.relation_names(relations)

    def archive_filename(self, name: str, version: str, arch: str) -> str:
        return policy.deb_filename(name, version, arch)

    def parse_archive_filename(self, filename: str) -> ArchiveName:
        name, version, arch = policy.parse_deb_filename(filename)
        return ArchiveName(name, version, arch)

    def names_location(self, ref: str) -> bool:
        from common.formats.deb.resolve import reference_kind

        return self.check_name(ref) is not None or reference_kind(ref) != "apt"

    def resolve_source(self, ref: str, settings: Settings, state_dir: Path,
                       served: Sequence[str], requested: str | None) -> SourcePlan | None:
        from common.formats.deb import resolve
        from common.formats.deb.source import snapshot_debian_source

        source, files = resolve.resolve_with_files(ref, settings, state_dir / "apt")
        return SourcePlan(
            kind=SourceKind.DEBIAN_SOURCE, name=source.name, version=source.version,
            arches=tuple(source.build_arches(list(served), requested)),
            snapshot=snapshot_debian_source(source, files),
            provides=frozenset(b for b, _ in source.binaries),
            needs=frozenset(source.build_depends))


DEB = DebFormat()
