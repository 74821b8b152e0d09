"""Package definitions: the YAML model, its parser, the lookup by name, and the snapshot.

A definition is found as ``NAME.yaml`` or ``NAME/package.yaml`` under one of the configured
``package_paths``. The master validates it before anything is queued and snapshots it (the YAML
plus its sources) into a tarball, so a build uses exactly what was submitted even if the file
changes afterwards; the worker unpacks that snapshot into a fresh directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common import arch as archmod
from common import formats
from common.errors import DefinitionError, NotFound
from common.formats import PackageFormat
from common.tarballs import TarWriter, safe_extract

SNAPSHOT_DEFINITION = "package.yaml"
SNAPSHOT_SOURCES = "sources"

_TOP_KEYS = {"package", "build_depends", "sources", "build", "build_network"}
_PACKAGE_KEYS = {
    "name", "version", "release", "architecture", "description", "maintainer", "depends",
    "section", "priority", "homepage", "recommends", "conflicts", "provides", "replaces",
    "license", "formats",
}
#: The relation fields of a package; each is a list for every format or a mapping per format.
RELATION_KINDS = ("depends", "recommends", "conflicts", "provides", "replaces")
#: Limits of names and versions (pkgfarm's own: formats allow more than anyone needs).
MAX_NAME = 128
MAX_VERSION = 128
#: What a name must look like to be looked up as a file under package_paths.
_LOOKUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$")
#: A section (``name`` or ``area/name``), a homepage, and a maintainer (one ``Name
#: <address>``): checked here at submission and again in an uploaded archive, the same way.
SECTION_RE = re.compile(r"^[A-Za-z0-9+._-]+(?:/[A-Za-z0-9+._-]+)?$")
URL_RE = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$")
MAINTAINER_RE = re.compile(r"^[^<>]*<[^<>\s]+>$")


@dataclass(frozen=True)
class PackageDefinition:
    name: str
    version: str  # upstream version
    release: str  # Debian revision
    architecture: tuple[str, ...] | str  # "all", "any" or a tuple of arches
    description: str
    maintainer: str
    build: str
    depends: tuple[str, ...] = ()
    recommends: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    section: str = "misc"
    priority: str = "optional"
    homepage: str | None = None
    #: the license, for formats that record one (rpm's License, pacman's license)
    license: str | None = None
    #: the formats this package is made in (None: every format the farm serves)
    formats: tuple[str, ...] | None = None
    #: relation fields given per format: (kind, format, relations); a kind listed here has
    #: no plain list, and a format it does not name gets none of that kind
    per_format: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    build_depends: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    #: the build step may reach the network (builds are offline otherwise); a worker's
    #: ``build_network: deny`` refuses such builds
    build_network: bool = False
    #: where the YAML was read from (for error messages and the snapshot)
    path: Path = field(default=Path("."), compare=False)

    @property
    def full_version(self) -> str:
        return f"{self.version}-{self.release}"

    def relations_for(self, kind: str, fmt: str) -> tuple[str, ...]:
        """The relations of ``kind`` (depends, recommends, …) that format ``fmt`` records, in
        the farm's relation syntax (Debian's); the format translates them into its own."""
        if kind not in RELATION_KINDS:
            raise ValueError(f"unknown relation kind {kind!r}")
        mapped = [(f, rels) for k, f, rels in self.per_format if k == kind]
        if not mapped and not any(k == kind for k, _, _ in self.per_format):
            return tuple(getattr(self, kind))
        return next((rels for f, rels in mapped if f == fmt), ())

    def build_formats(self, served: Iterable[str]) -> list[str]:
        """The formats to make among those the farm serves (in the farm's order)."""
        return [f for f in served if self.formats is None or f in self.formats]

    def check_format(self, fmt: PackageFormat) -> None:
        """Refuse (DefinitionError naming the field) what format ``fmt`` cannot carry: the
        name, the version, a descriptive field, or a relation it cannot express."""
        _check_for(self.path, fmt, self.name, self.version, self.release)
        _check_metadata(self.path, fmt, {"section": self.section, "priority": self.priority})
        for kind in RELATION_KINDS:
            mapped = any(k == kind for k, _, _ in self.per_format)
            field_name = f"package.{kind}" + (f".{fmt.name}" if mapped else "")
            for rel in self.relations_for(kind, fmt.name):
                problem = fmt.check_relation(rel, kind)
                if problem:
                    raise _fail(self.path, field_name, _naming(fmt, rel, problem))

    @property
    def folder(self) -> Path:
        return self.path.parent

    def build_arches(self, served: Iterable[str], requested: str | None = None) -> list[str]:
        """The architectures to build for: ``all`` once, ``any`` per served arch, or a list.

        ``requested`` narrows the result to one arch (``all`` packages ignore it).
        """
        served = list(served)
        if self.architecture == archmod.ALL:
            return [archmod.ALL]
        if requested is not None and not archmod.is_known(requested):
            raise DefinitionError(f"unknown architecture {requested!r}", field="arch")
        wanted = served if self.architecture == archmod.ANY else list(self.architecture)
        if requested is not None:
            if requested not in wanted:
                raise DefinitionError(
                    f"{self.name} is not built for {requested} (it builds for: "
                    f"{', '.join(wanted)})",
                    package=self.name, field="arch",
                )
            return [requested]
        return wanted


class _DefinitionLoader(yaml.SafeLoader):
    """YAML that keeps numbers as written: ``version: 1.10`` stays "1.10", never the float 1.1.

    Every field of a definition is text, so plain scalars that look like numbers stay strings.
    """


_DefinitionLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _fail(path: Path, fieldname: str, message: str) -> DefinitionError:
    return DefinitionError(f"{path}: {fieldname}: {message}", file=str(path), field=fieldname)


def _string(path: Path, data: dict[str, Any], key: str, where: str, required: bool = True,
            default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None:
        if required:
            raise _fail(path, f"{where}{key}", "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, f"{where}{key}", "must be a string")
    text = str(value)
    if not text.strip():
        raise _fail(path, f"{where}{key}", "must not be empty")
    return text


def _string_list(path: Path, data: dict[str, Any], key: str, where: str,
                 syntax: Iterable[PackageFormat], kind: str = "depends") -> tuple[str, ...]:
    """A list of relations of field ``kind`` (depends, provides, ...), each checked with the
    relation syntax of every format in ``syntax``."""
    value = data.get(key, [])
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, f"{where}{key}", "must be a list of non-empty strings")
    for v in value:
        if "\n" in v or "," in v:
            raise _fail(path, f"{where}{key}", f"{v!r}: one relation per list item, no newlines")
        for fmt in syntax:
            problem = fmt.check_relation(v.strip(), kind)
            if problem:
                raise _fail(path, f"{where}{key}", f"{v!r}: {problem}")
    return tuple(v.strip() for v in value)


def _naming(fmt: PackageFormat, value: str, problem: str) -> str:
    """A format's problem with ``value``, saying the value and the format once each."""
    text = problem if value in problem else f"{value!r}: {problem}"
    return text if fmt.name in text else f"{text} (as {fmt.name})"


def _check_for(path: Path, fmt: PackageFormat, name: str, version: str, release: str) -> None:
    problem = fmt.check_name(name)
    if problem:
        raise _fail(path, "package.name", _naming(fmt, name, problem))
    wrong = fmt.check_version_parts(version, release)
    if wrong:
        raise _fail(path, f"package.{wrong[0]}",
                    _naming(fmt, version if wrong[0] == "version" else release, wrong[1]))


def _check_metadata(path: Path, fmt: PackageFormat, fields: dict[str, str]) -> None:
    wrong = fmt.check_metadata(fields)
    if wrong:
        raise _fail(path, f"package.{wrong[0]}", _naming(fmt, fields[wrong[0]], wrong[1]))


def _relations(path: Path, pkg: dict[str, Any], kind: str, syntax: list[PackageFormat]
               ) -> tuple[tuple[str, ...], list[tuple[str, str, tuple[str, ...]]]]:
    """A relation field: a plain list (checked with every format of ``syntax``), or a mapping
    of format names to lists (each checked with its own format)."""
    value = pkg.get(kind)
    if not isinstance(value, dict):
        return _string_list(path, pkg, kind, "package.", syntax, kind), []
    mapped = []
    for fmt_name in value:
        if not isinstance(fmt_name, str) or fmt_name not in formats.FORMATS:
            raise _fail(path, f"package.{kind}", f"unknown package format {fmt_name!r} (known: "
                        f"{', '.join(sorted(formats.FORMATS))})")
        mapped.append((kind, fmt_name, _string_list(path, value, fmt_name, f"package.{kind}.",
                                                    [formats.FORMATS[fmt_name]], kind)))
    return (), mapped


def parse_definition(
    path: Path, text: str | None = None, check_sources: bool = True
) -> PackageDefinition:
    """Parse and validate one definition file; errors name the file and the field.

    ``check_sources=False`` skips checking that the listed sources exist on disk (a worker
    reading an unpacked snapshot, where they are already merged into ``sources/``).
    """
    path = Path(path)
    if text is None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise DefinitionError(f"{path}: cannot read: {exc.strerror}", file=str(path)) from exc
    try:
        data = yaml.load(text, Loader=_DefinitionLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{path}: not valid YAML: {exc}", file=str(path)) from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}: must be a mapping with a 'package' key", file=str(path))
    for key in data:
        if key not in _TOP_KEYS:
            raise _fail(path, str(key), f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    pkg = data.get("package")
    if not isinstance(pkg, dict):
        raise _fail(path, "package", "is required and must be a mapping")
    for key in pkg:
        if key not in _PACKAGE_KEYS:
            raise _fail(path, f"package.{key}",
                        f"unknown key (known: {', '.join(sorted(_PACKAGE_KEYS))})")
    w = "package."
    name = _string(path, pkg, "name", w)
    assert name is not None
    if len(name) > MAX_NAME:
        raise _fail(path, "package.name", f"is longer than {MAX_NAME} characters")
    version = _string(path, pkg, "version", w)
    assert version is not None
    release = _string(path, pkg, "release", w, default="1")
    assert release is not None
    for key, value in (("version", version), ("release", release)):
        if len(value) > MAX_VERSION:
            raise _fail(path, f"package.{key}", f"is longer than {MAX_VERSION} characters")
    named = pkg.get("formats")
    chosen: tuple[str, ...] | None = None
    if named is not None:
        if isinstance(named, str):
            named = [named]
        if not isinstance(named, list) or not named or not all(isinstance(f, str)
                                                               for f in named):
            raise _fail(path, "package.formats", "must be a list of package formats")
        for f in named:
            if f not in formats.FORMATS:
                raise _fail(path, "package.formats", f"unknown package format {f!r} (known: "
                            f"{', '.join(sorted(formats.FORMATS))})")
        chosen = tuple(dict.fromkeys(named))
    # The formats it names, or else the build host's (the farm's own syntax): checked here;
    # the others a farm builds it in are checked at submission (`check_format`).
    targets = [formats.FORMATS[f] for f in chosen] if chosen else [formats.build_host()]
    for fmt in targets:
        _check_for(path, fmt, name, version, release)

    arch_value = pkg.get("architecture", archmod.ANY)
    architecture: tuple[str, ...] | str
    if arch_value in (archmod.ALL, archmod.ANY):
        architecture = arch_value
    elif isinstance(arch_value, list | str) and arch_value:
        arches = [arch_value] if isinstance(arch_value, str) else arch_value
        for a in arches:
            if not isinstance(a, str) or not archmod.is_known(a):
                raise _fail(path, "package.architecture",
                            f"unknown architecture {a!r} (use all, any or Debian arch names)")
        architecture = tuple(dict.fromkeys(arches))
    else:
        raise _fail(path, "package.architecture", "must be all, any or a list of architectures")

    description = _string(path, pkg, "description", w)
    assert description is not None
    if not description.strip("\n").splitlines()[0].strip():
        raise _fail(path, "package.description", "must start with a one-line summary")
    maintainer = _string(path, pkg, "maintainer", w)
    assert maintainer is not None
    if not MAINTAINER_RE.fullmatch(maintainer.strip()):
        raise _fail(path, "package.maintainer", "must look like 'Full Name <email@example.org>'")
    section = _string(path, pkg, "section", w, default="misc")
    priority = _string(path, pkg, "priority", w, default="optional")
    homepage = _string(path, pkg, "homepage", w, required=False)
    license_ = _string(path, pkg, "license", w, required=False)
    for key, text in (("section", section), ("priority", priority), ("maintainer", maintainer),
                      ("name", name), ("homepage", homepage), ("license", license_)):
        if text is not None and (not text.isprintable() or len(text) > 1000):
            raise _fail(path, f"package.{key}", "must be one line of printable text")
    if section is not None and not SECTION_RE.fullmatch(section):
        raise _fail(path, "package.section", f"{section!r} is not a section name (letters, "
                    "digits, + - . _ and one /)")
    if homepage is not None and not URL_RE.fullmatch(homepage):
        raise _fail(path, "package.homepage", f"{homepage!r} is not an http(s) URL")
    assert section is not None and priority is not None
    for fmt in targets:  # a format's own values (Debian's priorities) are the format's to say
        _check_metadata(path, fmt, {"section": section, "priority": priority})

    build = data.get("build")
    if not isinstance(build, str) or not build.strip():
        raise _fail(path, "build", "is required: a shell script that installs into $DESTDIR")
    build_network = data.get("build_network", False)
    if not isinstance(build_network, bool):
        raise _fail(path, "build_network", "must be true or false")

    sources = []
    raw_sources = data.get("sources") or []
    if not isinstance(raw_sources, list):
        raise _fail(path, "sources", "must be a list of {path: …} entries")
    for i, entry in enumerate(raw_sources):
        rel = entry.get("path") if isinstance(entry, dict) else entry
        if isinstance(entry, dict) and set(entry) - {"path"}:
            raise _fail(path, f"sources[{i}]", "only 'path' is supported")
        if not isinstance(rel, str) or not rel.strip():
            raise _fail(path, f"sources[{i}].path", "must be a relative path")
        if os.path.isabs(rel) or "\0" in rel:
            raise _fail(path, f"sources[{i}].path", "must be relative to the definition's folder")
        folder = path.parent.resolve()
        target = (folder / rel).resolve()
        if target != folder and folder not in target.parents:
            raise _fail(path, f"sources[{i}].path", f"{rel!r} leaves the definition's folder")
        if check_sources and not target.exists():
            raise _fail(path, f"sources[{i}].path", f"{rel!r} does not exist")
        sources.append(rel)

    plain: dict[str, tuple[str, ...]] = {}
    per_format: list[tuple[str, str, tuple[str, ...]]] = []
    for kind in RELATION_KINDS:
        plain[kind], mapped = _relations(path, pkg, kind, targets)
        per_format.extend(mapped)

    return PackageDefinition(
        name=name,
        version=version,
        release=release,
        architecture=architecture,
        description=description.strip("\n"),
        maintainer=maintainer.strip(),
        build=build,
        depends=plain["depends"],
        recommends=plain["recommends"],
        conflicts=plain["conflicts"],
        provides=plain["provides"],
        replaces=plain["replaces"],
        section=section or "misc",
        priority=priority or "optional",
        homepage=homepage,
        license=license_,
        formats=chosen,
        per_format=tuple(per_format),
        build_depends=_string_list(path, data, "build_depends", "", [formats.build_host()]),
        sources=tuple(sources),
        build_network=build_network,
        path=path,
    )


def find_definition(name: str, package_paths: Iterable[str]) -> PackageDefinition:
    """Look ``name`` up in ``package_paths``; NotFound if no definition matches."""
    if len(name) > MAX_NAME or not _LOOKUP_RE.fullmatch(name):
        raise NotFound(f"{name!r} is not a valid package name", package=name)
    searched = []
    for folder in package_paths:
        for candidate in (Path(folder) / f"{name}.yaml", Path(folder) / name / "package.yaml"):
            searched.append(str(candidate))
            if candidate.is_file():
                definition = parse_definition(candidate)
                if definition.name != name:
                    raise _fail(candidate, "package.name",
                                f"is {definition.name!r} but the file is found as {name!r}")
                return definition
    raise NotFound(
        f"no package definition named {name!r} (looked in: {', '.join(searched) or 'nowhere'})",
        package=name,
    )


def snapshot(definition: PackageDefinition) -> bytes:
    """A gzipped tarball of the definition and its sources, as the worker will unpack it.

    Layout: ``package.yaml`` and ``sources/`` (each listed source merged into it: a folder's
    contents, or a file under its own name). Owners are normalised and every member carries the
    newest modification time of the inputs, so the same input gives the same bytes, and the
    worker uses that time as SOURCE_DATE_EPOCH: rebuilding an unchanged definition gives a
    byte-identical archive, which the repository accepts as already present.
    """
    folder = definition.folder
    members: list[tuple[str, Path]] = []
    for rel in definition.sources:
        src = (folder / rel).resolve()
        if src.is_dir():
            members.extend((f"{SNAPSHOT_SOURCES}/{item.relative_to(src).as_posix()}", item)
                           for item in sorted(src.rglob("*")))
        else:
            members.append((f"{SNAPSHOT_SOURCES}/{src.name}", src))
    for _, item in members:
        if item.is_symlink():
            raise DefinitionError(f"{item}: symbolic links are not allowed in sources",
                                  file=str(item))
    epoch = int(max([definition.path.stat().st_mtime]
                    + [p.stat().st_mtime for _, p in members if p.is_file()]))
    with TarWriter(mtime=epoch) as tar:
        tar.add_file(SNAPSHOT_DEFINITION, definition.path.read_bytes())
        tar.add_dir(SNAPSHOT_SOURCES)
        for arcname, path in members:
            if path.is_dir():
                tar.add_dir(arcname)
            else:
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                tar.add_file(arcname, path.read_bytes(), mode)
    return tar.data


def unpack_snapshot(data: bytes, dest: Path) -> PackageDefinition:
    """Unpack a snapshot into ``dest``; `UnsafeArchive` for any member that could reach
    outside it (common.tarballs)."""
    safe_extract(data, dest, mode="r:gz")
    (dest / SNAPSHOT_SOURCES).mkdir(exist_ok=True)
    return parse_definition(dest / SNAPSHOT_DEFINITION, check_sources=False)
