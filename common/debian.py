"""Debian rules that master and worker share: names, versions, archive file names, control text.

Version ordering is python-debian's implementation of Debian policy 5.6.12, never string order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from debian.debian_support import Version

#: Debian policy 5.6.1: lower-case alphanumerics, + - . ; at least two characters.
PACKAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
#: An upstream version as a definition gives it (no epoch, no hyphen: the revision is separate).
UPSTREAM_RE = re.compile(r"^[0-9][A-Za-z0-9.+~]*$")
REVISION_RE = re.compile(r"^[A-Za-z0-9.+~]+$")
EPOCH_RE = re.compile(r"^[0-9]+$")
#: A full Debian version: [epoch:]upstream[-revision].
VERSION_RE = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$")
#: One alternative of a dependency relation: name[:arch] [(op version)] [[arches]] [<profiles>].
RELATION_RE = re.compile(
    r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?"
    r"(?:\s*\((?:<<|<=|=|>=|>>)\s*[A-Za-z0-9.+~:-]+\))?"
    r"(?:\s*\[[a-z0-9! -]+\])?(?:\s*<[a-z0-9.! -]+>)*"
)
#: The file name of an archive in the pool: name_version_arch.deb (version without epoch).
DEB_FILENAME_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9+.-]+)_(?P<version>[0-9][A-Za-z0-9.+~-]*)_(?P<arch>[a-z0-9-]+)\.deb$"
)


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


def is_valid_relation(relation: str) -> bool:
    """One item of Depends and friends: alternatives separated by ``|``."""
    return all(RELATION_RE.fullmatch(alt.strip()) for alt in relation.split("|"))


def strip_epoch(version: str) -> str:
    return version.split(":", 1)[1] if ":" in version else version


@dataclass(frozen=True)
class DebName:
    name: str
    version: str  # without epoch, as in the file name
    arch: str

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_{self.arch}.deb"


def deb_filename(name: str, version: str, arch: str) -> str:
    return DebName(name, strip_epoch(version), arch).filename


def parse_deb_filename(filename: str) -> DebName:
    """Split ``name_version_arch.deb``; raises ValueError for anything else."""
    m = DEB_FILENAME_RE.fullmatch(filename)
    if not m:
        raise ValueError(f"{filename!r} is not a Debian archive name (name_version_arch.deb)")
    return DebName(m["name"], m["version"], m["arch"])


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
