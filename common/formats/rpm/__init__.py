"""RPM as the farm speaks it: `.rpm` archives in repositories that dnf reads.

The rules live in `policy` (names, ``[E:]V-R`` versions and rpm's own version order,
relations from the farm's syntax into rpm's, architecture names, file names). RPM has no
source packages of the farm's kind: every rpm is made from a definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from common.formats import ArchiveName, SourcePlan
from common.formats.rpm import policy
from common.states import SourceKind

if TYPE_CHECKING:
    from common.config import Settings


class RpmFormat:
    name = "rpm"
    title = "RPM (.rpm, dnf)"
    #: no source packages of its own kind: built from definitions only
    source_kinds: Mapping[SourceKind, str] = MappingProxyType({})

    def arch_name(self, arch: str) -> str:
        return policy.rpm_arch(arch)

    def farm_arch(self, arch: str) -> str:
        return policy.farm_arch(arch)

    def check_name(self, name: str) -> str | None:
        return policy.check_name(name)

    def check_version_parts(self, version: str, release: str) -> tuple[str, str] | None:
        return policy.check_version_parts(version, release)

    def check_metadata(self, fields: Mapping[str, str]) -> tuple[str, str] | None:
        return None  # a section and a priority are not part of its metadata

    def full_version(self, version: str, release: str) -> str:
        return f"{version}-{release}"  # an epoch rides in ``version`` (``1:2.0``)

    def check_version(self, version: str) -> str | None:
        return policy.check_version(version)

    def version_key(self, version: str) -> Any:
        return policy.version_key(version)

    def check_relation(self, relation: str, kind: str = "depends") -> str | None:
        try:
            alternatives = policy.parse_relation(relation)
        except ValueError as exc:
            return str(exc)
        if len(alternatives) > 1 and kind in policy.NO_RICH:
            return (f"{relation!r}: rpm allows no alternatives (rich dependencies) in "
                    f"{policy.NO_RICH[kind]}")
        return None

    def relation_names(self, relations: Iterable[str]) -> list[str]:
        names: list[str] = []
        for relation in relations:
            for alt in policy.parse_relation(relation):
                if alt.name not in names:
                    names.append(alt.name)
        return names

    def archive_filename(self, name: str, version: str, arch: str) -> str:
        """``name-V-R.<rpmarch>.rpm``: rpm's file names never carry the epoch.

        So the master's check of a file name against its archive
        (``master.repository._same_version``: two versions are the same when they make the
        same file name) compares version and release only. The epoch is read from the header
        (`ArchiveInfo.version` is the header's full ``[E:]V-R``) and recorded with the
        package, so the index and the order of versions use it; and the check of an archive
        against its job (``Repository.stage_upload``) compares the header's full version with
        the job's in rpm's order (`compare_versions`), so an archive whose epoch is not the
        job's is refused.
        """
        return policy.rpm_filename(name, version, arch)

    def parse_archive_filename(self, filename: str) -> ArchiveName:
        name, version, arch = policy.parse_rpm_filename(filename)
        return ArchiveName(name, version, arch)

    def names_location(self, ref: str) -> bool:
        return False  # rpm sources are never fetched by the farm: a ref is a definition name

    def resolve_source(self, ref: str, settings: Settings, state_dir: Path,
                       served: Sequence[str], requested: str | None) -> SourcePlan | None:
        return None


RPM = RpmFormat()
