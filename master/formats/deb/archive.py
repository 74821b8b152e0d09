"""Reading and checking an uploaded .deb, and its entry in the APT index.

An archive is accepted only when dpkg itself reads its control file and its whole data member,
and its control file passes the farm's own stricter reading: one stanza, no blank lines, each
field once, values in UTF-8 without control characters, the fields apt relies on well formed
(names, versions, relations, the architecture, Installed-Size, a Description with a synopsis).
The index entry is written from that parse only: the fields the master computes (Filename,
Size and the checksums) never come from the archive, and an archive that carries one is
refused.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from debian.debfile import DebFile

from common import arch as archmod
from common.errors import Unprocessable
from common.formats.deb import policy
from master.formats import ArchiveInfo, Digests

#: Fields every binary package's control file has (policy 5.3).
REQUIRED_FIELDS = ("Package", "Version", "Architecture", "Maintainer", "Description")
#: Fields of an index entry that the master computes from the archive itself.
COMPUTED_FIELDS = frozenset(f.lower() for f in (
    "Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512", "Description-md5"))
#: Relation fields, checked with python-debian's parser.
RELATION_FIELDS = frozenset(f.lower() for f in (
    "Depends", "Pre-Depends", "Recommends", "Suggests", "Breaks", "Conflicts", "Provides",
    "Replaces", "Enhances", "Built-Using", "Static-Built-Using"))
#: Fields whose value may run over several lines; every other field is one line.
MULTILINE_FIELDS = frozenset(f.lower() for f in ("Description", "Conffiles"))
_FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SOURCE_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]+)(?: \((?P<version>[^()\s]+)\))?$")
#: The largest control file accepted (real ones are a few KiB).
MAX_CONTROL_BYTES = 256 * 1024


def _dpkg_deb(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["dpkg-deb", *args], capture_output=True)


def _reason(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return " ".join(line.strip() for line in lines[-2:]) or "unreadable"


def parse_control(raw: bytes) -> dict[str, str]:
    """The fields of a binary package's control file, read strictly (see the module's text);
    Unprocessable naming what is wrong."""
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


def check_fields(fields: dict[str, str]) -> None:
    """The checks on the fields apt relies on; Unprocessable naming the field."""
    missing = [f for f in REQUIRED_FIELDS if not fields.get(f)]
    if missing:
        raise Unprocessable(f"control file lacks {', '.join(missing)}")
    computed = sorted(f for f in fields if f.lower() in COMPUTED_FIELDS)
    if computed:
        raise Unprocessable(f"the control file carries {', '.join(computed)}, which the "
                            "repository computes itself", field=computed[0])
    if not policy.PACKAGE_NAME_RE.fullmatch(fields["Package"]):
        raise Unprocessable(f"control file names an invalid package {fields['Package']!r}")
    if not policy.is_valid_version(fields["Version"]):
        raise Unprocessable(f"control file has an invalid version {fields['Version']!r}")
    arch = fields["Architecture"]
    if arch != archmod.ALL and not archmod.is_known(arch):
        raise Unprocessable(f"control file has an unknown architecture {arch!r}")
    if "Source" in fields:
        m = _SOURCE_RE.fullmatch(fields["Source"])
        if not m or (m["version"] and not policy.is_valid_version(m["version"])):
            raise Unprocessable(f"control field Source is not 'name' or 'name (version)': "
                                f"{fields['Source']!r}", field="Source")
    size = fields.get("Installed-Size")
    if size is not None and not size.isdigit():
        raise Unprocessable("control field Installed-Size must be a number of KiB",
                            field="Installed-Size")
    synopsis = fields["Description"].split("\n", 1)[0]
    if not synopsis.strip():
        raise Unprocessable("control field Description must start with a synopsis",
                            field="Description")
    for name, value in fields.items():
        if name.lower() in RELATION_FIELDS:
            try:
                policy.parse_relations(value)
            except ValueError as exc:
                raise Unprocessable(f"control field {name}: {exc}", field=name) from None


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
    fields = parse_control(_raw_control(path))
    check_fields(fields)
    source = fields.get("Source", fields["Package"]).split()[0]
    return ArchiveInfo(name=fields["Package"], version=fields["Version"],
                       arch=fields["Architecture"], source=source, fields=fields)


def pool_path(info: ArchiveInfo, component: str) -> str:
    return (f"{policy.pool_dir(component, info.source)}/"
            + policy.deb_filename(info.name, info.version, info.arch))


def index_entry(info: ArchiveInfo, key: str, digests: Digests) -> str:
    """The archive's Packages entry: its checked fields, then what the master computed."""
    lines = []
    for name, value in info.fields.items():
        # A value that starts on the next line (Conffiles) keeps no space after the colon.
        lines.append(f"{name}:{value}" if not value or value.startswith("\n")
                     else f"{name}: {value}")
    lines += [f"Filename: {key}", f"Size: {digests.size}", f"MD5sum: {digests.md5}",
              f"SHA1: {digests.sha1}", f"SHA256: {digests.sha256}"]
    return "\n".join(lines) + "\n"
