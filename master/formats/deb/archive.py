"""Reading and checking an uploaded .deb, and its entry in the APT index.

An archive is accepted only when dpkg itself reads its control file and its whole data member,
and its control file passes the farm's own stricter reading: one stanza, no blank lines, each
field once, values in UTF-8 without control characters.

The index entry is written from an allow-list: the fields of a binary package's control file
that Debian policy (5.3) names and apt needs, each checked (`INDEX_FIELDS`); the master then
adds what it computes itself (Filename, Size, the checksums). Every other field stays in the
archive only, where dpkg reads it once the package is installed:

- fields only a repository writes (`REPOSITORY_FIELDS`: Filename, Size, the checksums,
  Description-md5, Phased-Update-Percentage) refuse the archive: no build makes them, and the
  index must never take them from an archive;
- fields that make apt treat a package as part of the system (Essential, Protected,
  Important) are left out of the index: from a repository's index apt would install
  every Essential package at the next dist-upgrade and refuse to remove such packages, and a
  farm's repository adds packages to a system, it does not redefine what the system needs
  (Debian's essential packages built here still install; dpkg honours the field from the
  installed package's own control file);
- every other field (Bugs, Task, Tag, Origin, Original-Maintainer, debhelper's Build-Ids and
  Auto-Built-Package, X-…) is left out of the index too: apt acts on some of them (Task names
  a task apt installs, Bugs where reports go), and none is needed to install the package.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from debian.debfile import DebFile

from common import arch as archmod
from common.definition import MAINTAINER_RE, MAX_NAME, MAX_VERSION, SECTION_RE, URL_RE
from common.errors import Unprocessable
from common.formats.deb import policy
from master.formats import ArchiveInfo, Digests

#: Fields every binary package's control file has (policy 5.3).
REQUIRED_FIELDS = ("Package", "Version", "Architecture", "Maintainer", "Description")
#: The fields an index entry takes from the archive, each checked, in the order it gives them.
INDEX_FIELDS = (
    "Package", "Source", "Version", "Architecture", "Maintainer", "Installed-Size",
    "Pre-Depends", "Depends", "Recommends", "Suggests", "Enhances", "Breaks", "Conflicts",
    "Provides", "Replaces", "Built-Using", "Static-Built-Using", "Multi-Arch", "Section",
    "Priority", "Homepage", "Description")
#: Fields only a repository writes: an archive that carries one is refused.
REPOSITORY_FIELDS = frozenset(f.lower() for f in (
    "Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512", "Description-md5",
    "Phased-Update-Percentage"))
#: Relation fields, checked with python-debian's parser.
RELATION_FIELDS = frozenset(f.lower() for f in (
    "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts", "Provides",
    "Replaces", "Enhances", "Built-Using", "Static-Built-Using"))
#: Relation fields whose items may not offer alternatives (policy 7.4 to 7.6; Built-Using
#: 7.8): only Depends and its kin choose between packages.
SINGLE_FIELDS = frozenset(f.lower() for f in (
    "Breaks", "Conflicts", "Provides", "Replaces", "Built-Using", "Static-Built-Using"))
#: Relation fields that name exact versions only (policy 7.5, 7.8).
EXACT_FIELDS = frozenset(f.lower() for f in ("Provides", "Built-Using", "Static-Built-Using"))
#: Fields whose value may run over several lines; every other field is one line.
MULTILINE_FIELDS = frozenset(f.lower() for f in ("Description", "Conffiles"))
MULTI_ARCH = frozenset({"no", "same", "foreign", "allowed"})
_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SOURCE_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?: \((?P<version>[^()\s]+)\))?$")
_SIZE_RE = re.compile(r"^[0-9]{1,15}$")
#: The largest control file accepted (real ones are a few KiB).
MAX_CONTROL_BYTES = 256 * 1024
#: The longest Maintainer, Section or Homepage value accepted.
MAX_SHORT_FIELD = 1000


def _dpkg_deb(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["dpkg-deb", *args], capture_output=True)


def _reason(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return " ".join(line.strip() for line in lines[-2:]) or "unreadable"


def parse_control(raw: bytes) -> dict[str, str]:
    """Every field of a binary package's control file, read strictly (see the module's text),
    under the name the file gives it; Unprocessable naming what is wrong."""
    if len(raw) > MAX_CONTROL_BYTES:
        raise Unprocessable(f"the control file is larger than {MAX_CONTROL_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unprocessable("the control file is not UTF-8") from None
    if _CONTROL_CHARS_RE.search(text):
        raise Unprocessable("the control file holds control characters")
    lines = text.rstrip("\n").split("\n")
    fields: dict[str, str] = {}
    seen: set[str] = set()
    current: str | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise Unprocessable(f"the control file has a blank line (line {number}): one "
                                "stanza is allowed, without blank lines")
        if line[0] in " \t":
            if current is None:
                raise Unprocessable(f"control file line {number} continues no field")
            fields[current] += "\n" + line
            continue
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME_RE.fullmatch(name):
            raise Unprocessable(f"control file line {number} is not 'Field: value'")
        if name.lower() in seen:
            raise Unprocessable(f"the control file gives {name} twice")
        seen.add(name.lower())
        current = name
        fields[name] = value.strip()
    for name, value in fields.items():
        if "\n" in value and name.lower() not in MULTILINE_FIELDS:
            raise Unprocessable(f"control field {name} must be one line")
    return fields


def _check_relations(name: str, value: str) -> None:
    """A binary package's relation field: python-debian reads it, every version is a Debian
    version after an operator of policy 7.1, and nothing of a source package's syntax
    (architecture lists, build profiles) is left; Unprocessable naming the field."""
    def refuse(why: str) -> Unprocessable:
        return Unprocessable(f"control field {name}: {why}", field=name)

    try:
        parsed = policy.parse_relations(value)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    for alternatives in parsed:
        if len(alternatives) > 1 and name.lower() in SINGLE_FIELDS:
            raise refuse("alternatives ('|') are not allowed here")
        for alt in alternatives:
            if alt["arch"] or alt["restrictions"]:
                raise refuse(f"{alt['name']}: architecture lists and build profiles belong to "
                             "a source package, not to a binary one")
            qualifier = alt["archqual"]
            if qualifier is not None and qualifier not in ("any", "native") and \
                    not archmod.is_known(qualifier):
                raise refuse(f"{alt['name']}: unknown architecture qualifier {qualifier!r}")
            if alt["version"] is None:
                if name.lower() in ("built-using", "static-built-using"):
                    raise refuse(f"{alt['name']}: an exact version '(= version)' is required")
                continue
            op, version = alt["version"]
            if op not in policy.RELATION_OPERATORS:
                raise refuse(f"{op!r} is not a relation operator "
                             f"({', '.join(policy.RELATION_OPERATORS)})")
            if name.lower() in EXACT_FIELDS and op != "=":
                raise refuse(f"{alt['name']}: only '=' is allowed here")
            if not policy.is_valid_version(version):
                raise refuse(f"{version!r} is not a Debian version")


def check_fields(fields: dict[str, str]) -> dict[str, str]:
    """The index's fields of a parsed control file (`INDEX_FIELDS`, under their own names, in
    that order), each checked; Unprocessable naming the field (see the module's text)."""
    by_lower = {name.lower(): (name, value) for name, value in fields.items()}
    repository = sorted(name for name in fields if name.lower() in REPOSITORY_FIELDS)
    if repository:
        raise Unprocessable(f"the control file carries {', '.join(repository)}, which only "
                            "the repository writes", field=repository[0])
    found = {name: by_lower[name.lower()][1] for name in INDEX_FIELDS
             if name.lower() in by_lower}
    missing = [f for f in REQUIRED_FIELDS if not found.get(f)]
    if missing:
        raise Unprocessable(f"control file lacks {', '.join(missing)}")

    def refuse(name: str, why: str) -> Unprocessable:
        return Unprocessable(f"control field {name} {why}", field=name)

    package, version = found["Package"], found["Version"]
    if len(package) > MAX_NAME or not policy.PACKAGE_NAME_RE.fullmatch(package):
        raise refuse("Package", f"is not a package name of at most {MAX_NAME} characters: "
                                f"{package[:MAX_NAME + 20]!r}")
    if len(version) > MAX_VERSION or not policy.is_valid_version(version):
        raise refuse("Version", f"is not a Debian version of at most {MAX_VERSION} characters: "
                                f"{version[:MAX_VERSION + 20]!r}")
    arch = found["Architecture"]
    if arch != archmod.ALL and not archmod.is_known(arch):
        raise refuse("Architecture", f"names an unknown architecture {arch!r}")
    if "Source" in found:
        m = _SOURCE_RE.fullmatch(found["Source"])
        if not m or len(m["name"]) > MAX_NAME or (
                m["version"] and not policy.is_valid_version(m["version"])):
            raise refuse("Source", "is not 'name' or 'name (version)' with a package name and "
                                   f"a Debian version: {found['Source'][:200]!r}")
    for name in ("Maintainer", "Section", "Homepage"):
        if len(found.get(name, "")) > MAX_SHORT_FIELD:
            raise refuse(name, f"is longer than {MAX_SHORT_FIELD} characters")
    if not MAINTAINER_RE.fullmatch(found["Maintainer"]):
        raise refuse("Maintainer", "must be 'Full Name <address>'")
    size = found.get("Installed-Size")
    if size is not None and not _SIZE_RE.fullmatch(size):
        raise refuse("Installed-Size", "must be a whole number of KiB")
    multi_arch = found.get("Multi-Arch")
    if multi_arch is not None:
        if multi_arch not in MULTI_ARCH:
            raise refuse("Multi-Arch", f"must be one of {', '.join(sorted(MULTI_ARCH))}")
        if multi_arch == "same" and arch == archmod.ALL:
            raise refuse("Multi-Arch", "cannot be 'same' for an Architecture: all package")
    section = found.get("Section")
    if section is not None and not SECTION_RE.fullmatch(section):
        raise refuse("Section", f"is not a section name ([area/]section): {section!r}")
    priority = found.get("Priority")
    if priority is not None and priority not in policy.PRIORITIES:
        raise refuse("Priority", f"must be one of {', '.join(policy.PRIORITIES)}")
    homepage = found.get("Homepage")
    if homepage is not None and not URL_RE.fullmatch(homepage):
        raise refuse("Homepage", "must be one http(s) URL")
    synopsis = found["Description"].split("\n", 1)[0]
    if not synopsis.strip():
        raise refuse("Description", "must start with a synopsis")
    for name, value in found.items():
        if name.lower() in RELATION_FIELDS:
            _check_relations(name, value)
    return found


def _raw_control(path: Path) -> bytes:
    """The control file as the archive holds it (python-debian reads the ar members)."""
    try:
        with DebFile(str(path)) as deb:
            raw: bytes | None = deb.control.get_content("control")
    except Exception as exc:  # python-debian raises many kinds of errors on garbage
        raise Unprocessable(f"not a valid Debian archive: {exc}") from None
    if raw is None:
        raise Unprocessable("the archive holds no control file")
    return raw


def inspect(path: Path) -> ArchiveInfo:
    """Read and check a .deb (see the module's text)."""
    parsed = _dpkg_deb("--field", str(path), "Package")
    if parsed.returncode != 0:
        reason = _reason(parsed)
        if "not a Debian format archive" in reason or "unexpected end" in reason:
            raise Unprocessable(f"not a valid Debian archive: {reason}")
        raise Unprocessable(f"dpkg refuses the control file: {reason}")
    # Reading the whole data member proves the archive is not truncated or corrupt.
    contents = _dpkg_deb("--contents", str(path))
    if contents.returncode != 0:
        raise Unprocessable(f"archive data is damaged: {_reason(contents)}")
    fields = check_fields(parse_control(_raw_control(path)))
    source = fields.get("Source", fields["Package"]).split()[0]
    return ArchiveInfo(name=fields["Package"], version=fields["Version"],
                       arch=fields["Architecture"], source=source, fields=fields)


def pool_path(info: ArchiveInfo, component: str) -> str:
    return (f"{policy.pool_dir(component, info.source)}/"
            + policy.deb_filename(info.name, info.version, info.arch))


def index_entry(info: ArchiveInfo, key: str, digests: Digests) -> str:
    """The archive's Packages entry: its checked index fields, then what the master
    computed."""
    lines = [f"{name}: {info.fields[name]}" for name in INDEX_FIELDS if name in info.fields]
    lines += [f"Filename: {key}", f"Size: {digests.size}", f"MD5sum: {digests.md5}",
              f"SHA1: {digests.sha1}", f"SHA256: {digests.sha256}"]
    return "\n".join(lines) + "\n"
