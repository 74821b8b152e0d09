"""RPM's rules as the farm applies them: names, versions and their order, relations,
architecture names and archive file names.

Versions are ``[epoch:]version-release``. Their order is rpm's: `vercmp` follows the segment
rules of rpm's own comparison (alphanumeric segments, numbers longer-is-newer without leading
zeros, ``~`` sorting before anything, even the end, and ``^`` after the end but before any
other segment) and `evr_compare` compares epoch (missing means 0), then version, then release
(a side without one is older), as ``rpm.vercmp`` in rpm's Lua does. The unit tests check a table of
tricky pairs against rpm itself.

Relations arrive in the farm's syntax (Debian's: ``name``, ``name (>= 1.0)``, ``a | b``) and
become rpm's (``name >= 1.0``; alternatives as a rich dependency ``(a or b >= 1)``). Names may be
rpm capabilities (``/bin/sh``, ``perl(Foo::Bar)``). What rpm cannot say is refused: Debian
architecture qualifiers (``[amd64]``, ``:any``) and build profiles (``<!nocheck>``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from common import arch as archmod

#: The farm's architecture names (Debian's) and rpm's.
RPM_ARCHES: dict[str, str] = {
    archmod.ALL: "noarch", "amd64": "x86_64", "arm64": "aarch64", "i386": "i686",
    "armhf": "armv7hl", "ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
    "loong64": "loongarch64", "mips64el": "mips64el",
}
FARM_ARCHES: dict[str, str] = {v: k for k, v in RPM_ARCHES.items()}

#: Package names: what rpm's spec parser accepts, less the characters that break shells,
#: file names and rich dependencies.
NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]*$")
#: A version or release without epoch: rpm allows no ``-`` in either.
PART_RE = re.compile(r"^[A-Za-z0-9._+~^]+$")
EPOCH_RE = re.compile(r"^[0-9]+$")
#: ``name-version-release.arch.rpm``; source rpms (``.src.rpm``) are not archives of the farm.
FILENAME_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9_+][A-Za-z0-9_.+-]*)-(?P<version>[A-Za-z0-9._+~^]+)"
    r"-(?P<release>[A-Za-z0-9._+~^]+)\.(?P<arch>[A-Za-z0-9_]+)\.rpm$")
#: The relation fields (the farm's kinds) whose rpm tags take no rich dependencies, so no
#: alternatives: Provides, and Obsoletes (what ``replaces`` becomes).
NO_RICH = {"provides": "Provides", "replaces": "Obsoletes (the farm's replaces)"}
#: rpm's spelling of the farm's relation operators.
OPERATORS = {"<<": "<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">"}
_ALT_RE = re.compile(
    r"^(?P<name>[^\s|,()\[\]<>=!:]+(?:\([^\s()|,\[\]<>=]*\))*)"
    r"(?:\s*\(\s*(?P<op><<|<=|=|>=|>>)\s*(?P<version>[^\s()]+)\s*\))?$")


# -- names and versions ------------------------------------------------------------------------

def check_name(name: str) -> str | None:
    if not NAME_RE.fullmatch(name):
        return (f"{name!r} is not an rpm package name (letters, digits, _ + . -, starting "
                "with a letter, digit, _ or +)")
    return None


def split_epoch(version: str) -> tuple[str | None, str]:
    """(epoch or None, the rest) of ``[epoch:]rest``."""
    head, colon, rest = version.partition(":")
    if colon and EPOCH_RE.fullmatch(head):
        return head, rest
    return None, version


def check_version_parts(version: str, release: str) -> tuple[str, str] | None:
    _, upstream = split_epoch(version)
    if not PART_RE.fullmatch(upstream):
        return "version", (f"{version!r} is not an rpm version: [epoch:]version, the version "
                           "of letters, digits and . _ + ~ ^ only (no '-')")
    if not PART_RE.fullmatch(release):
        return "release", (f"{release!r} is not an rpm release: letters, digits and . _ + ~ ^ "
                           "only (no '-')")
    return None


def parse_evr(evr: str) -> tuple[str | None, str, str | None]:
    """(epoch, version, release) as rpm's parser splits them: leading digits before ``:``
    are the epoch, everything after the last ``-`` the release."""
    epoch, rest = split_epoch(evr)
    version, dash, release = rest.rpartition("-")
    if not dash:
        return epoch, rest, None
    return epoch, version, release


def check_version(version: str) -> str | None:
    _, upstream, release = parse_evr(version)
    if release is None or not PART_RE.fullmatch(upstream) or not PART_RE.fullmatch(release):
        return f"{version!r} is not an rpm version ([epoch:]version-release)"
    return None


def vercmp(a: str, b: str) -> int:
    """rpm's comparison of two version (or release) strings: -1, 0 or 1."""
    if a == b:
        return 0
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        while i < la and not (_alnum(a[i]) or a[i] in "~^"):
            i += 1
        while j < lb and not (_alnum(b[j]) or b[j] in "~^"):
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":  # a tilde sorts before everything, the end included
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if ca == "^" or cb == "^":  # a caret sorts after the end, before any other segment
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (ca and cb):
            break
        si, sj = i, j
        numeric = ca.isdigit() and ca.isascii()
        test = _digit if numeric else _alpha
        while i < la and test(a[i]):
            i += 1
        while j < lb and test(b[j]):
            j += 1
        seg_a, seg_b = a[si:i], b[sj:j]
        if not seg_b:  # segments of different kinds: a number is newer than letters
            return 1 if numeric else -1
        if numeric:
            seg_a, seg_b = seg_a.lstrip("0"), seg_b.lstrip("0")
            if len(seg_a) != len(seg_b):
                return 1 if len(seg_a) > len(seg_b) else -1
        if seg_a != seg_b:
            return 1 if seg_a > seg_b else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _alpha(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _alnum(c: str) -> bool:
    return _digit(c) or _alpha(c)


def evr_compare(a: str, b: str) -> int:
    """Two ``[epoch:]version[-release]`` as rpm orders them (``rpm.vercmp``)."""
    ea, va, ra = parse_evr(a)
    eb, vb, rb = parse_evr(b)
    rc = vercmp(ea or "0", eb or "0")
    if rc == 0:
        rc = vercmp(va, vb)
        if rc == 0 and (ra is not None or rb is not None):
            # rpm's Lua comparison: a side that gives a release is newer than one that
            # gives none (the farm's own versions always give one)
            rc = vercmp(ra, rb) if ra is not None and rb is not None else (
                1 if ra is not None else -1)
    return rc


_KEY = functools.cmp_to_key(evr_compare)


def version_key(version: str) -> Any:
    return _KEY(version)


# -- relations ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alternative:
    name: str
    op: str | None = None
    version: str | None = None

    def rpm(self) -> str:
        if self.op is None:
            return self.name
        return f"{self.name} {OPERATORS[self.op]} {self.version}"


def parse_relation(relation: str) -> list[Alternative]:
    """The alternatives of one relation in the farm's syntax; ValueError, saying why, for
    what rpm cannot express."""
    text = relation.strip()
    if not text:
        raise ValueError("an empty relation")
    if "[" in text or "]" in text:
        raise ValueError(f"{relation!r}: architecture restrictions ([amd64]) are Debian's; "
                         "rpm relations have none (give the relation per format)")
    if "<" in text.replace("<<", "").replace("<=", ""):
        raise ValueError(f"{relation!r}: build profiles (<!nocheck>) are Debian's; rpm "
                         "relations have none")
    alts = []
    for part in text.split("|"):
        part = part.strip()
        if re.search(r":[a-z]+(?:\s|\(|$)", part.split("(", 1)[0] + " "):
            raise ValueError(f"{relation!r}: architecture qualifiers (:any, :native) are "
                             "Debian's; rpm relations have none")
        m = _ALT_RE.fullmatch(part)
        if not m:
            raise ValueError(f"{relation!r} is not 'name', 'name (op version)' or "
                             "alternatives 'a | b' (ops << <= = >= >>)")
        version = m["version"]
        if version is not None:
            _, rest = split_epoch(version)
            if not all(PART_RE.fullmatch(p) for p in rest.split("-", 1)) or rest.count("-") > 1:
                raise ValueError(f"{relation!r}: {version!r} is not an rpm version "
                                 "([epoch:]version[-release])")
        alts.append(Alternative(m["name"], m["op"], version))
    return alts


def to_rpm(relation: str) -> str:
    """One relation in rpm's syntax: alternatives become a rich dependency ``(a or b)``."""
    alts = parse_relation(relation)
    if len(alts) == 1:
        return alts[0].rpm()
    return "(" + " or ".join(a.rpm() for a in alts) + ")"


# -- architectures and file names --------------------------------------------------------------

def rpm_arch(arch: str) -> str:
    try:
        return RPM_ARCHES[arch]
    except KeyError:
        raise ValueError(f"architecture {arch!r} has no rpm name the farm knows") from None


def farm_arch(arch: str) -> str:
    try:
        return FARM_ARCHES[arch]
    except KeyError:
        raise ValueError(f"unknown rpm architecture {arch!r}") from None


def rpm_filename(name: str, version: str, arch: str) -> str:
    """``name-version-release.arch.rpm``: rpm's own file names carry no epoch."""
    return f"{name}-{split_epoch(version)[1]}.{rpm_arch(arch)}.rpm"


def parse_rpm_filename(filename: str) -> tuple[str, str, str]:
    """(name, version-release without epoch, farm arch) of an rpm file name."""
    if filename.endswith((".src.rpm", ".nosrc.rpm")):
        raise ValueError(f"{filename!r} is a source rpm; the farm publishes binary rpms only")
    m = FILENAME_RE.fullmatch(filename)
    if not m:
        raise ValueError(f"{filename!r} is not an rpm file name (name-version-release."
                         "arch.rpm)")
    return m["name"], f"{m['version']}-{m['release']}", farm_arch(m["arch"])
