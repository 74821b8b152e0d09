"""Debian source packages as the farm builds them: what one is, which jobs it makes, its snapshot.

A `DebianSource` is what the master resolved a reference to (a source package name in apt, a
.dsc by URL or path, or a git repository): its name and version, the architectures its .dsc
allows, the binaries it makes and its build dependencies, and where the worker gets it from.
The master sends it to the worker in a snapshot (a gzipped tarball holding
``debian-source.json`` and, for a local .dsc, the .dsc and its files under ``files/``), which
`is_debian_source_snapshot` tells apart from a definition snapshot (``package.yaml``).
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from debian.deb822 import Deb822
from debian.debian_support import DpkgArchTable

from common import arch as archmod
from common.errors import DefinitionError
from common.formats.deb import policy
from common.tarballs import TarWriter, safe_extract

SNAPSHOT_MANIFEST = "debian-source.json"
SNAPSHOT_FILES = "files"
#: The file a snapshot of a local git repository carries: a tar of the resolved commit's tree.
GIT_TREE_FILE = "git-tree.tar"
ORIGINS = ("apt", "dsc", "git")
#: The build dependency fields, in the order dpkg reads them.
BUILD_DEPENDS_FIELDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep")


@functools.cache
def _arch_table() -> DpkgArchTable:
    return DpkgArchTable.load_arch_table()


def arch_matches(arch: str, wildcard: str) -> bool:
    """Whether the Debian architecture ``arch`` matches ``wildcard`` (any, linux-any, any-arm64,
    or a plain name), as dpkg decides it. ``all`` matches only ``all``."""
    if arch == archmod.ALL or wildcard == archmod.ALL:
        return arch == wildcard
    if arch == wildcard:
        return True
    try:
        return bool(_arch_table().matches_architecture(arch, wildcard))
    except (KeyError, ValueError):
        return False


def _words(value: str) -> list[str]:
    return value.replace(",", " ").split()


@dataclass(frozen=True)
class DebianSource:
    name: str
    version: str
    #: the .dsc's Architecture words, e.g. ("any",), ("any", "all"), ("amd64", "arm64")
    architecture: tuple[str, ...]
    #: (binary name, its architecture field: "any", "all", "amd64 arm64", "linux-any", ...)
    binaries: tuple[tuple[str, str], ...]
    #: every name in Build-Depends, -Arch and -Indep (every alternative, no versions)
    build_depends: tuple[str, ...]
    origin: str  # "apt" | "dsc" | "git"
    #: the .dsc URL or path, or the git URL; "" for apt
    location: str = ""
    #: the deb-src lines the source was found with (apt) and is downloaded with
    apt_lines: tuple[str, ...] = ()
    #: the sha256 of the .dsc the master read (dsc); the worker checks it gets the same
    dsc_sha256: str = ""
    #: (file name, sha256, size) of each file the .dsc lists
    files: tuple[tuple[str, str, int], ...] = ()
    #: the commit the master read (git); a branch or tag to clone ("" for the default)
    revision: str = ""
    branch: str = ""
    #: the raw relation fields, for information and for installing by relation
    build_depends_relations: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, not {self.origin!r}")

    @property
    def upstream_version(self) -> str:
        version = self.version.split(":", 1)[-1]
        return version.rsplit("-", 1)[0] if "-" in version else version

    # -- what it builds ------------------------------------------------------------------------

    @property
    def builds_arch_independent(self) -> bool:
        return archmod.ALL in self.architecture or any(
            archmod.ALL in _words(arch) for _, arch in self.binaries)

    @property
    def arch_wildcards(self) -> list[str]:
        """The Architecture words that stand for arch-specific binaries."""
        return [w for w in self.architecture if w != archmod.ALL]

    def builds_for(self, arch: str) -> bool:
        """Whether the arch-specific part may be built for ``arch``."""
        return any(arch_matches(arch, w) for w in self.arch_wildcards)

    def build_arches(self, served: Iterable[str], requested: str | None = None) -> list[str]:
        """The jobs: one per served architecture the source allows, plus ``all`` once when it
        makes arch-independent binaries. A source that is only ``all`` gives ``["all"]``.

        ``requested`` narrows the result to that architecture (``all`` for the
        arch-independent part); a source that is only ``all`` ignores it.
        """
        served = list(served)
        arch_part = [a for a in served if a != archmod.ALL and self.builds_for(a)]
        indep = self.builds_arch_independent
        if not self.arch_wildcards:
            return [archmod.ALL] if indep else []
        if requested is None:
            return arch_part + ([archmod.ALL] if indep else [])
        if requested == archmod.ALL:
            if indep:
                return [archmod.ALL]
        elif not archmod.is_known(requested):
            raise DefinitionError(f"unknown architecture {requested!r}", field="arch")
        elif self.builds_for(requested):
            return [requested] if requested in served else []
        raise DefinitionError(
            f"{self.name} is not built for {requested} (its Architecture is "
            f"{' '.join(self.architecture)})", package=self.name, field="arch")

    def produces(self, arch: str) -> list[str]:
        """The binary packages a job for ``arch`` makes (``all``: the arch-independent ones)."""
        names = []
        for name, binary_arch in self.binaries:
            words = _words(binary_arch)
            if arch == archmod.ALL:
                hit = archmod.ALL in words
            else:
                hit = any(w != archmod.ALL and arch_matches(arch, w) for w in words)
            if hit:
                names.append(name)
        return names

    # -- wire form -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version,
            "architecture": list(self.architecture),
            "binaries": [list(b) for b in self.binaries],
            "build_depends": list(self.build_depends),
            "origin": self.origin, "location": self.location,
            "apt_lines": list(self.apt_lines), "dsc_sha256": self.dsc_sha256,
            "files": [list(f) for f in self.files],
            "revision": self.revision, "branch": self.branch,
            "build_depends_relations": list(self.build_depends_relations),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DebianSource:
        """The inverse of `to_json`; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        for key in ("architecture", "build_depends", "apt_lines", "build_depends_relations"):
            if key in values:
                values[key] = tuple(str(v) for v in values[key])
        if "binaries" in values:
            values["binaries"] = tuple((str(n), str(a)) for n, a in values["binaries"])
        if "files" in values:
            values["files"] = tuple((str(n), str(h), int(s)) for n, h, s in values["files"])
        return cls(**values)


def git_url(ref: str) -> tuple[str, str]:
    """(what to clone, branch or tag or "") of a git reference: ``git+`` and ``#REF`` split off."""
    url, _, branch = ref.partition("#")
    if url.startswith("git+"):
        url = url[len("git+"):]
    return url, branch


# -- from control data -------------------------------------------------------------------------


def binaries_of(control: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, arch) of each binary package (type deb) a .dsc or Sources stanza makes.

    From Package-List when present; else from Binary, each given the whole Architecture.
    """
    package_list = field_text(control, "Package-List")
    result: list[tuple[str, str]] = []
    if package_list.strip():
        for line in package_list.strip().splitlines():
            words = line.split()
            if len(words) < 2 or words[1] != "deb":
                continue  # udebs are not collected by the farm
            options = dict(w.split("=", 1) for w in words[4:] if "=" in w)
            arch = " ".join(_words(options.get("arch", "")))
            if not arch:
                arch = " ".join(field_text(control, "Architecture", "any").split())
            result.append((words[0], arch))
        return tuple(result)
    arch = " ".join(field_text(control, "Architecture", "any").split())
    return tuple((name, arch) for name in _words(field_text(control, "Binary")))


def field_text(control: Mapping[str, Any], key: str, default: str = "") -> str:
    """A field's text as written, also from python-debian's `Dsc`/`Sources`, which parse some
    fields into lists."""
    if key not in control:
        return default
    getter = getattr(control, "get_as_string", None)
    if getter is not None:
        return str(getter(key))
    value = control[key]
    return value if isinstance(value, str) else default


def dsc_checksums(control: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(name, sha256, size) of each file in Checksums-Sha256 of a .dsc or Sources stanza.

    The one reader of that field: a line that is not ``SHA256 SIZE NAME``, or a name that is
    not a plain file name in the .dsc's own folder, raises DefinitionError.
    """
    files: list[tuple[str, str, int]] = []
    for line in field_text(control, "Checksums-Sha256").strip().splitlines():
        words = line.split()
        if len(words) != 3 or not words[1].isdigit() or len(words[0]) != 64:
            raise DefinitionError(f"a Checksums-Sha256 line is not 'SHA256 SIZE NAME': "
                                  f"{line.strip()!r}", field="Checksums-Sha256")
        name = words[2]
        if "/" in name or name.startswith(".") or "\0" in name:
            raise DefinitionError(f"the .dsc lists a file outside its folder: {name!r}",
                                  field="Checksums-Sha256")
        files.append((name, words[0].lower(), int(words[1])))
    return files


#: The .dsc fields that list its files (dpkg-source reads all of them).
DSC_FILE_FIELDS = ("Files", "Checksums-Sha1", "Checksums-Sha256")


def dsc_file_names(control: Mapping[str, Any]) -> list[str]:
    """The name of every file a .dsc lists in any of `DSC_FILE_FIELDS`, each once, in order;
    a name that is not a plain file name in the .dsc's own folder raises DefinitionError."""
    names: list[str] = []
    for key in DSC_FILE_FIELDS:
        for line in field_text(control, key).strip().splitlines():
            words = line.split()
            if not words or words[-1] in names:
                continue
            name = words[-1]
            if "/" in name or name.startswith(".") or "\0" in name:
                raise DefinitionError(f"the .dsc lists a file outside its folder: {name!r}",
                                      field=key)
            names.append(name)
    return names


def source_from_control(control: Mapping[str, Any], *, origin: str, location: str = "",
                        apt_lines: Iterable[str] = (), dsc_sha256: str = "") -> DebianSource:
    """A `DebianSource` from a .dsc or a Sources stanza (name in Source or Package)."""
    name = field_text(control, "Source") or field_text(control, "Package")
    version = field_text(control, "Version")
    if not name or not version:
        raise DefinitionError(f"{location or 'the source'}: no Source/Package or Version field",
                              field="Source")
    architecture = tuple(field_text(control, "Architecture").split())
    if not architecture:
        raise DefinitionError(f"{location or name}: no Architecture field", field="Architecture")
    relations = tuple(field_text(control, f).strip() for f in BUILD_DEPENDS_FIELDS)
    files = dsc_checksums(control)
    return DebianSource(
        name=name.split()[0], version=version.strip(), architecture=architecture,
        binaries=binaries_of(control),
        build_depends=tuple(policy.relation_names(relations)), origin=origin, location=location,
        apt_lines=tuple(apt_lines), dsc_sha256=dsc_sha256, files=tuple(files),
        build_depends_relations=tuple(r for r in relations if r),
    )


def source_from_debian_dir(control_text: str, changelog_text: str, *, origin: str = "git",
                           location: str = "", revision: str = "",
                           branch: str = "") -> DebianSource:
    """A `DebianSource` from a tree's debian/control and debian/changelog (the newest entry)."""
    from debian.changelog import Changelog

    changelog = Changelog(changelog_text, max_blocks=1, strict=False)
    if not changelog.package or changelog.version is None:
        raise DefinitionError(f"{location}: debian/changelog has no entry", field="changelog")
    paragraphs = list(Deb822.iter_paragraphs(control_text.splitlines(keepends=True),
                                             use_apt_pkg=False))
    if not paragraphs or "Source" not in paragraphs[0]:
        raise DefinitionError(f"{location}: debian/control does not start with a Source "
                              "paragraph", field="control")
    source_para, binary_paras = paragraphs[0], [p for p in paragraphs[1:] if "Package" in p]
    if not binary_paras:
        raise DefinitionError(f"{location}: debian/control lists no binary package",
                              field="control")
    binaries = []
    words: list[str] = []
    for para in binary_paras:
        if para.get("Package-Type", "deb") != "deb" or para.get("XC-Package-Type") == "udeb":
            continue
        arch = " ".join(para.get("Architecture", "any").split())
        binaries.append((para["Package"].strip(), arch))
        words.extend(w for w in arch.split() if w not in words)
    if "any" in words:  # as dpkg-source writes the .dsc: any absorbs the other wildcards
        words = [w for w in words if w in ("any", archmod.ALL)]
    relations = tuple(source_para.get(f, "").strip() for f in BUILD_DEPENDS_FIELDS)
    return DebianSource(
        name=str(changelog.package), version=str(changelog.version),
        architecture=tuple(words), binaries=tuple(binaries),
        build_depends=tuple(policy.relation_names(relations)), origin=origin, location=location,
        revision=revision, branch=branch,
        build_depends_relations=tuple(r for r in relations if r),
    )


# -- snapshot ----------------------------------------------------------------------------------


def snapshot_debian_source(src: DebianSource, files: Mapping[str, bytes] | None = None) -> bytes:
    """A gzipped tarball: ``debian-source.json`` and, if given, ``files/NAME`` for each file.

    The same input gives the same bytes (fixed owners and times, sorted members).
    """
    manifest = json.dumps(src.to_json(), indent=1, sort_keys=True).encode()
    with TarWriter() as tar:
        tar.add_file(SNAPSHOT_MANIFEST, manifest)
        if files:
            tar.add_dir(SNAPSHOT_FILES)
            for name in sorted(files):
                if "/" in name or name in ("", ".", ".."):
                    raise DefinitionError(f"{name!r} is not a plain file name", field="files")
                tar.add_file(f"{SNAPSHOT_FILES}/{name}", files[name])
    return tar.data


def is_debian_source_snapshot(data: bytes) -> bool:
    """Whether ``data`` is a Debian source snapshot (not a definition snapshot, not garbage)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if member.name in (SNAPSHOT_MANIFEST, f"./{SNAPSHOT_MANIFEST}"):
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def unpack_debian_source(data: bytes, dest: Path) -> tuple[DebianSource, Path | None]:
    """Unpack a snapshot into ``dest``; the source, and its ``files`` folder if it has one."""
    safe_extract(data, dest, mode="r:gz")
    manifest = dest / SNAPSHOT_MANIFEST
    if not manifest.is_file():
        raise DefinitionError(f"the snapshot holds no {SNAPSHOT_MANIFEST}")
    src = DebianSource.from_json(json.loads(manifest.read_text()))
    folder = dest / SNAPSHOT_FILES
    return src, (folder if folder.is_dir() else None)
