"""Reading and checking an uploaded ``.pkg.tar.zst``, and its entry in the pacman database.

An archive is accepted only when zstd decompresses all of it (the frame checksum included),
the tar inside reads to its end, its ``.PKGINFO`` passes a strict reading (``key = value``
lines, the keys makepkg writes, single-valued keys once, a valid name, version and
architecture, relations pacman can parse), its ``.MTREE`` is there, and every member of the
archive agrees with ``.MTREE`` (type, size, sha256, link target, mode, owner) and the reverse:
what ``.MTREE`` lists is in the archive. The database entry (``desc`` and ``files``, as
repo-add writes them) is computed here once, from that reading and the master's own digests;
the package's signature is added when the database is written (see `index`).
"""

from __future__ import annotations

import gzip
import io
import json
import re
import stat
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import IO, cast

from common.digests import sha256_stream
from common.errors import Unprocessable
from common.formats.pacman import PACMAN, check_full_version, parse_pacman_dep
from master.formats import ArchiveInfo, Digests

#: The members makepkg adds besides the payload.
METADATA = frozenset({".PKGINFO", ".BUILDINFO", ".MTREE", ".INSTALL", ".CHANGELOG"})
#: The largest metadata member read (real ones are a few KiB; .MTREE of big packages more).
MAX_METADATA_BYTES = 16 * 1024 * 1024
SINGLE_KEYS = ("pkgname", "pkgbase", "pkgver", "pkgdesc", "url", "builddate", "packager",
               "size", "arch")
LIST_KEYS = ("license", "replaces", "group", "conflict", "provides", "backup", "depend",
             "optdepend", "makedepend", "checkdepend", "xdata")
DEP_KEYS = frozenset({"replaces", "conflict", "provides", "depend", "makedepend",
                      "checkdepend"})
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MTREE_ESCAPE_RE = re.compile(rb"\\([0-7]{3})")
#: A file mode as bsdtar's mtree writer gives it: octal digits.
_MTREE_MODE_RE = re.compile(r"^[0-7]{1,6}$")


def _zstd(path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["zstd", "-dcq", "--", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def parse_pkginfo(raw: bytes) -> dict[str, list[str]]:
    """The keys of a ``.PKGINFO``, read strictly; Unprocessable naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unprocessable(".PKGINFO is not UTF-8") from None
    if _CONTROL_RE.search(text.replace("\n", "")):
        raise Unprocessable(".PKGINFO holds control characters")
    keys: dict[str, list[str]] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition(" = ")
        if not eq:
            if line.endswith(" ="):  # an empty value (makepkg writes `url = ` so)
                key, value = line[:-2], ""
            else:
                raise Unprocessable(f".PKGINFO line {number} is not 'key = value'")
        if key not in SINGLE_KEYS and key not in LIST_KEYS:
            raise Unprocessable(f".PKGINFO line {number}: unknown key {key!r}", field=key)
        keys.setdefault(key, []).append(value)
    for key in SINGLE_KEYS:
        if len(keys.get(key, [])) > 1:
            raise Unprocessable(f".PKGINFO gives {key} twice", field=key)
    return keys


def check_pkginfo(keys: dict[str, list[str]]) -> dict[str, str]:
    """The checked single values of a ``.PKGINFO``; Unprocessable naming the key."""
    one = {k: v[0] for k, v in keys.items() if k in SINGLE_KEYS}
    for key in ("pkgname", "pkgver", "arch", "size"):
        if not one.get(key):
            raise Unprocessable(f".PKGINFO lacks {key}", field=key)
    problem = PACMAN.check_name(one["pkgname"])
    if problem:
        raise Unprocessable(f".PKGINFO pkgname: {problem}", field="pkgname")
    one.setdefault("pkgbase", one["pkgname"])
    if PACMAN.check_name(one["pkgbase"]):
        raise Unprocessable(f".PKGINFO pkgbase {one['pkgbase']!r} is not a package name",
                            field="pkgbase")
    problem = check_full_version(one["pkgver"])
    if problem:
        raise Unprocessable(f".PKGINFO pkgver: {problem}", field="pkgver")
    try:
        PACMAN.farm_arch(one["arch"])
    except ValueError as exc:
        raise Unprocessable(f".PKGINFO arch: {exc}", field="arch") from None
    for key in ("size", "builddate"):
        if key in one and not one[key].isdigit():
            raise Unprocessable(f".PKGINFO {key} must be a number", field=key)
    for key, values in keys.items():
        for value in values:
            if key in DEP_KEYS or key == "optdepend":
                dep = value.split(": ", 1)[0] if key == "optdepend" else value
                try:
                    parse_pacman_dep(dep)
                except ValueError as exc:
                    raise Unprocessable(f".PKGINFO {key}: {exc}", field=key) from None
    return one


def _mtree_byte(match: re.Match[bytes]) -> bytes:
    value = int(match[1], 8)
    if value > 0xFF:
        raise Unprocessable(f".MTREE holds the escape {match[0].decode()!r}, which is no byte")
    return bytes([value])


def _mtree_name(raw: bytes) -> str:
    name = _MTREE_ESCAPE_RE.sub(_mtree_byte, raw).decode("utf-8", errors="surrogateescape")
    return name[2:] if name.startswith("./") else name


def parse_mtree(raw: bytes) -> dict[str, dict[str, str]]:
    """The entries of a gzipped ``.MTREE`` (bsdtar's mtree format with /set lines): path ->
    keywords."""
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        raise Unprocessable(".MTREE is not gzip-compressed") from None
    entries: dict[str, dict[str, str]] = {}
    defaults: dict[str, str] = {}
    for line in data.split(b"\n"):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        words = line.split()
        if words[0] == b"/set":
            for word in words[1:]:
                k, _, v = word.decode(errors="replace").partition("=")
                defaults[k] = v
            continue
        if words[0] == b"/unset":
            for word in words[1:]:
                defaults.pop(word.decode(errors="replace"), None)
            continue
        name = _mtree_name(words[0])
        keywords = dict(defaults)
        for word in words[1:]:
            k, _, v = word.decode(errors="surrogateescape").partition("=")
            keywords[k] = v
        if name in entries:
            raise Unprocessable(f".MTREE lists {name!r} twice")
        entries[name] = keywords
    return entries


def _mtree_type(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "link"
    return "file"  # regular files and hard links


def _check_against_mtree(members: dict[str, tuple[tarfile.TarInfo, str | None]],
                         mtree: dict[str, dict[str, str]]) -> None:
    for name, (member, sha256) in members.items():
        if name == ".MTREE":
            continue
        entry = mtree.get(name)
        if entry is None:
            raise Unprocessable(f"{name} is in the archive but not in .MTREE")
        kind = _mtree_type(member)
        if entry.get("type", "file") != kind:
            raise Unprocessable(f"{name} is a {kind} in the archive but a "
                                f"{entry.get('type')} in .MTREE")
        if kind == "file" and not member.islnk():
            if entry.get("size") is not None and entry["size"] != str(member.size):
                raise Unprocessable(f"{name}: size {member.size} in the archive, "
                                    f"{entry['size']} in .MTREE")
            if entry.get("sha256digest") != sha256:
                raise Unprocessable(f"{name}: its sha256 is not the one .MTREE gives")
        if kind == "link" and _mtree_name(entry.get("link", "").encode(
                errors="surrogateescape")) != member.linkname:
            raise Unprocessable(f"{name}: the link target differs from .MTREE's")
        if "mode" in entry:
            if not _MTREE_MODE_RE.fullmatch(entry["mode"]):
                raise Unprocessable(f"{name}: .MTREE gives the mode {entry['mode']!r}, which "
                                    "is not an octal number")
            if int(entry["mode"], 8) != stat.S_IMODE(member.mode):
                raise Unprocessable(f"{name}: mode {stat.S_IMODE(member.mode):o} in the "
                                    f"archive, {entry['mode']} in .MTREE")
        for key, value in (("uid", member.uid), ("gid", member.gid)):
            if key in entry and entry[key] != str(value):
                raise Unprocessable(f"{name}: {key} {value} in the archive, {entry[key]} in "
                                    ".MTREE")
    missing = sorted(set(mtree) - set(members))
    if missing:
        raise Unprocessable(f".MTREE lists {missing[0]}, which the archive does not hold")


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    parts = name.split("/")
    if not name or name.startswith("/") or ".." in parts or "\0" in name or "" in parts:
        raise Unprocessable(f"the archive holds an unsafe path {member.name!r}")
    return name


def read_archive(path: Path) -> tuple[dict[str, bytes], dict[str, tuple[tarfile.TarInfo,
                                                                        str | None]]]:
    """(metadata members' bytes, every member with the sha256 of its content)."""
    proc = _zstd(path)
    stdout = cast(IO[bytes], proc.stdout)
    metadata: dict[str, bytes] = {}
    members: dict[str, tuple[tarfile.TarInfo, str | None]] = {}
    try:
        try:
            with tarfile.open(fileobj=stdout, mode="r|") as tar:
                for member in tar:
                    name = _member_name(member)
                    if name in members:
                        raise Unprocessable(f"the archive holds {name} twice")
                    if not (member.isfile() or member.isdir() or member.issym()
                            or member.islnk()):
                        raise Unprocessable(f"{name}: pacman packages hold files, folders "
                                            "and links only")
                    digest = None
                    if member.isfile():
                        handle = tar.extractfile(member)
                        assert handle is not None
                        keep = name in METADATA
                        if keep and member.size > MAX_METADATA_BYTES:
                            raise Unprocessable(f"{name} is larger than "
                                                f"{MAX_METADATA_BYTES} bytes")
                        kept = io.BytesIO() if keep else None
                        _, digest = sha256_stream(handle, kept)
                        if kept is not None:
                            metadata[name] = kept.getvalue()
                    members[name] = (member, digest)
        except tarfile.TarError as exc:
            raise Unprocessable(f"not a pacman package (a zstd-compressed tar): {exc}"
                                ) from None
        stdout.read()
    finally:
        stdout.close()
        stderr = proc.stderr.read() if proc.stderr else b""
        code = proc.wait()
    if code != 0:
        reason = stderr.decode(errors="replace").strip().splitlines()
        raise Unprocessable("not a pacman package (a zstd-compressed tar): "
                            + (reason[-1] if reason else f"zstd exit status {code}"))
    return metadata, members


def inspect(path: Path) -> ArchiveInfo:
    """Read and check a ``.pkg.tar.zst`` (see the module's text)."""
    metadata, members = read_archive(path)
    if ".PKGINFO" not in metadata:
        raise Unprocessable("not a pacman package: the archive holds no .PKGINFO")
    keys = parse_pkginfo(metadata[".PKGINFO"])
    one = check_pkginfo(keys)
    if ".MTREE" not in metadata:
        raise Unprocessable("the archive holds no .MTREE")
    _check_against_mtree(members, parse_mtree(metadata[".MTREE"]))
    fields = {k: v for k, v in one.items()}
    for key in LIST_KEYS:
        if key in keys:
            fields[key] = "\n".join(keys[key])
    # The files entry lists what `bsdtar -tf` names, without the dot files, folders with
    # their slash, sorted bytewise (repo-add's `bsdtar --exclude='^.*' -tf | sort -u`).
    listed = sorted((n + "/" if m.isdir() else n) for n, (m, _) in members.items()
                    if not n.startswith("."))
    fields["%FILES%"] = "\n".join(sorted(listed, key=lambda s: s.encode(
        errors="surrogateescape")))
    return ArchiveInfo(name=one["pkgname"], version=one["pkgver"],
                       arch=PACMAN.farm_arch(one["arch"]), source=one["pkgbase"],
                       fields=fields)


def pool_path(info: ArchiveInfo, component: str) -> str:
    return (f"pacman/pool/{component}/{info.source}/"
            + PACMAN.archive_filename(info.name, info.version, info.arch))


def _block(field: str, *values: str) -> str:
    values = tuple(v for v in values if v)
    if not values:
        return ""
    return f"%{field}%\n" + "".join(f"{v}\n" for v in values) + "\n"


def _squeeze(value: str) -> str:
    return " ".join(value.split())  # repo-add normalises whitespace


def index_entry(info: ArchiveInfo, key: str, digests: Digests) -> str:
    """The database entry as JSON: the folder name, ``desc`` in two halves (the package's
    signature goes between them when the database is written) and ``files``."""
    f = info.fields

    def many(k: str) -> list[str]:
        return [_squeeze(v) for v in f[k].split("\n")] if f.get(k) else []

    filename = key.rsplit("/", 1)[1]
    head = (_block("FILENAME", filename) + _block("NAME", info.name)
            + _block("BASE", f.get("pkgbase", info.name)) + _block("VERSION", info.version)
            + _block("DESC", _squeeze(f.get("pkgdesc", ""))) + _block("GROUPS", *many("group"))
            + _block("CSIZE", str(digests.size)) + _block("ISIZE", f.get("size", "0"))
            + _block("MD5SUM", digests.md5) + _block("SHA256SUM", digests.sha256))
    tail = (_block("URL", _squeeze(f.get("url", ""))) + _block("LICENSE", *many("license"))
            + _block("ARCH", f["arch"]) + _block("BUILDDATE", f.get("builddate", ""))
            + _block("PACKAGER", _squeeze(f.get("packager", "")))
            + _block("REPLACES", *many("replaces")) + _block("CONFLICTS", *many("conflict"))
            + _block("PROVIDES", *many("provides")) + _block("DEPENDS", *many("depend"))
            + _block("OPTDEPENDS", *many("optdepend"))
            + _block("MAKEDEPENDS", *many("makedepend"))
            + _block("CHECKDEPENDS", *many("checkdepend")))
    files = "%FILES%\n" + "".join(f"{p}\n" for p in f["%FILES%"].split("\n") if p)
    return json.dumps({"dir": f"{info.name}-{info.version}", "head": head, "tail": tail,
                       "files": files}, sort_keys=True)
