"""Writing the farm's own tarballs, and unpacking tarballs that come from outside, safely.

Snapshots (a definition and its sources, a Debian source with its files, a git tree) are written
by `TarWriter` with fixed owners and times, so the same input gives the same bytes.

Every tarball that comes from a user, an upload or the network is unpacked with `safe_extract`,
which refuses, with an `UnsafeArchive` error naming the member, anything that could reach
outside the target folder or carry privileges: absolute names, ``..`` components, symbolic and
hard links whose target leads outside the folder, device nodes and FIFOs, and setuid or setgid
bits. The archive is judged as a whole before anything is written (`check_members`), so the
order of its members cannot matter: symbolic links are followed through each other as they
will stand in the finished tree. Unpacking then makes everything but the symbolic links first,
so that nothing is ever written through a link, makes the links last, and follows each one on
disk to check that it ends inside. Tarballs that another program unpacks (a Debian source's,
by dpkg-source) are checked the same way with `check_tarball`.

The checks are the project's own and run on every Python the project supports. Where a
tarfile with extraction filters is at hand (the standard library's from Python 3.11.4, or the
``backports.tarfile`` package that pkgfarm installs on Debian 12's 3.11.2) its ``data`` filter
runs after them as a second line; without one, the members are extracted one by one. Both ways
are tested. The farm's own mmdebstrap base, which rightly holds setuid programs, is not
unpacked here.
"""

from __future__ import annotations

import copy
import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import IO, Any

from common.errors import UnsafeArchive


def _filtering_tarfile() -> ModuleType | None:
    """A tarfile module with extraction filters (PEP 706): the standard library's (3.11.4 and
    later), else the ``backports.tarfile`` package where it is installed (a dependency on
    older Pythons), else None."""
    if hasattr(tarfile, "data_filter"):
        return tarfile
    try:
        import backports.tarfile as backport  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    module: ModuleType = backport
    return module


_FILTERING = _filtering_tarfile()
#: Whether extraction filters are available to run after the project's own checks.
HAS_FILTERS: bool = _FILTERING is not None

_PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
#: What the filtering tarfile raises when its own filter refuses a member, and when it cannot
#: read the archive (its classes are its own when it is the backport).
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (_FILTERING.FilterError,) if _FILTERING is not None else ())
_READ_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError, EOFError, OSError, zlib.error,
    *((_FILTERING.TarError,) if _FILTERING is not None else ()))


class TarWriter:
    """A gzipped tarball whose members are owned by root and carry one fixed time.

    Use as a context manager around `add_file` and `add_dir`; `data` is the result after the
    ``with`` block ends.
    """

    def __init__(self, mtime: int = 0, compresslevel: int = 6) -> None:
        self.mtime = mtime
        self._buf = io.BytesIO()
        self._gz = gzip.GzipFile(fileobj=self._buf, mode="wb", compresslevel=compresslevel,
                                 mtime=0)
        self._tar = tarfile.TarFile(fileobj=self._gz, mode="w", format=tarfile.PAX_FORMAT)

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tar.close()
        self._gz.close()

    def _info(self, name: str, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = self.mtime
        info.mode = mode
        return info

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        info = self._info(name, mode)
        info.type = tarfile.DIRTYPE
        self._tar.addfile(info)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = self._info(name, mode)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    @property
    def data(self) -> bytes:
        return self._buf.getvalue()


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _normal(name: str) -> str:
    """A member's name as a path relative to the archive's root, without ``./`` parts, doubled
    or trailing slashes (``.`` for the root itself). Only for names without ``..``."""
    return posixpath.normpath(name)


def _climbs_out(relative: str) -> bool:
    """Whether a normalised relative path leads above the folder it is read from."""
    return relative == ".." or relative.startswith("../")


def _check_alone(member: tarfile.TarInfo) -> None:
    """The checks that need nothing but the member itself: its name, type, bits and, read
    lexically, its link target."""
    name = member.name
    if not name or "\0" in name:
        raise UnsafeArchive("a member has an empty or NUL-holding name", member=name)
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise UnsafeArchive(f"member {name!r} has an absolute path", member=name)
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchive(f"member {name!r} climbs out with '..'", member=name)
    if member.ischr() or member.isblk():
        raise UnsafeArchive(f"member {name!r} is a device node", member=name)
    if member.isfifo():
        raise UnsafeArchive(f"member {name!r} is a FIFO", member=name)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"member {name!r} is of an unsupported type {member.type!r}",
                            member=name)
    if member.mode & _PRIVILEGE_BITS:
        raise UnsafeArchive(f"member {name!r} has the setuid or setgid bit", member=name)
    if _normal(name) == "." and not member.isdir():
        raise UnsafeArchive(f"member {name!r} would replace the folder itself", member=name)
    link = member.linkname
    if member.issym():
        if not link or "\0" in link or link.startswith("/"):
            raise UnsafeArchive(f"symbolic link {name!r} points to an absolute path {link!r}",
                                member=name)
        if _climbs_out(posixpath.normpath(posixpath.join(posixpath.dirname(_normal(name)),
                                                         link))):
            raise UnsafeArchive(f"symbolic link {name!r} points outside the folder ({link!r})",
                                member=name)
    if member.islnk() and (not link or "\0" in link or link.startswith("/")
                           or ".." in PurePosixPath(link).parts):
        raise UnsafeArchive(f"hard link {name!r} points outside the folder ({link!r})",
                                member=name)


#: More symbolic links than this on one path are refused as a loop (Linux stops at 40).
_MAX_HOPS = 40


def _resolve(links: dict[str, str], start: str, target: str) -> str | None:
    """Where ``target``, read in the folder ``start`` (both relative to the archive's root),
    ends up once every symbolic link of the archive (``links``: normalised name → target) is
    followed, as the kernel would in the finished tree; None if it leads outside the root.
    The tree's links, not the order they are unpacked in, decide."""
    parts = [] if start == "." else start.split("/")
    todo = list(reversed(target.split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
        link = links.get("/".join(parts))
        if link is not None:
            hops += 1
            if hops > _MAX_HOPS:
                raise UnsafeArchive(f"symbolic links loop on {target!r} (more than "
                                    f"{_MAX_HOPS} of them on one path)")
            parts.pop()
            if link.startswith("/"):
                return None
            todo.extend(reversed(link.split("/")))
    return "/".join(parts) or "."


def check_members(members: Iterable[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """Check a whole archive's members without unpacking anything; the members, in order.

    Each member alone: no absolute name, no ``..``, no device node or FIFO, no setuid or
    setgid bit, no link whose target leaves the folder lexically. The archive as a whole, so
    that the order of its members cannot matter: a hard link names a regular file that comes
    earlier (never a symbolic link); a symbolic link has a name no other member has; no
    member's name passes through a symbolic link of the archive; and every symbolic link,
    followed through all the others as they stand in the finished tree, ends inside.
    Raises `UnsafeArchive` naming the first member at fault.
    """
    listed = list(members)
    files: set[str] = set()
    names: set[str] = set()
    links: dict[str, str] = {}
    for member in listed:
        _check_alone(member)
        name = _normal(member.name)
        if member.islnk() and _normal(member.linkname) not in files:
            raise UnsafeArchive(
                f"hard link {member.name!r} points to {member.linkname!r}, which is not a "
                "regular file earlier in the archive", member=member.name)
        if member.issym():
            if name in names or name in links:
                raise UnsafeArchive(f"symbolic link {member.name!r} would replace another "
                                    "member of the same name", member=member.name)
            links[name] = member.linkname
        else:
            if name in links:
                raise UnsafeArchive(f"member {member.name!r} would replace the symbolic link "
                                    "of the same name (and could be written outside through "
                                    "it)", member=member.name)
            names.add(name)
            if member.isreg() or member.islnk():
                files.add(name)
    for member in listed:
        name = _normal(member.name)
        parent = posixpath.dirname(name)
        while parent:
            if parent in links:
                raise UnsafeArchive(f"member {member.name!r} passes through the symbolic link "
                                    f"{parent!r} (it could land outside the folder)",
                                    member=member.name)
            parent = posixpath.dirname(parent)
    for name, link in links.items():
        if _resolve(links, posixpath.dirname(name) or ".", link) is None:
            raise UnsafeArchive(f"symbolic link {name!r} leads outside the folder through the "
                                f"archive's other links ({link!r})", member=name)
    return listed


def _open(module: ModuleType, source: bytes | IO[bytes] | Path, mode: str) -> tarfile.TarFile:
    fileobj: IO[bytes] | None = io.BytesIO(source) if isinstance(source, bytes) else (
        None if isinstance(source, Path) else source)
    name = str(source) if isinstance(source, Path) else None
    tar: tarfile.TarFile = module.open(name, mode, fileobj)
    return tar


def check_tarball(source: bytes | IO[bytes] | Path, mode: str = "r:*") -> int:
    """Check every member of the tarball ``source`` as `safe_extract` would, without
    unpacking it (for tarballs another program unpacks); the number of members.
    `UnsafeArchive` for a member refused, and for a tarball that cannot be read."""
    try:
        with _open(tarfile, source, mode) as tar:
            return len(check_members(tar.getmembers()))
    except UnsafeArchive:
        raise
    except _READ_ERRORS as exc:
        raise UnsafeArchive(f"the tarball cannot be read: {exc}") from exc


def _check_placement(member: tarfile.TarInfo, root: str) -> None:
    """Refuse a member whose path, as the folder ``root`` stands now (what is already there
    counts, links included), resolves outside it."""
    if not _inside(root, os.path.realpath(os.path.join(root, member.name))):
        raise UnsafeArchive(f"member {member.name!r} would land outside the folder "
                            "(through a link)", member=member.name)
    if member.islnk() and not _inside(
            root, os.path.realpath(os.path.join(root, member.linkname))):
        raise UnsafeArchive(f"hard link {member.name!r} points outside the folder "
                            f"({member.linkname!r})", member=member.name)


def _owned_by_me(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A copy of ``member`` that extracts as the current user with tame permissions."""
    safe = copy.copy(member)
    safe.uid, safe.gid = os.geteuid(), os.getegid()
    safe.uname = safe.gname = ""
    if not member.issym():
        # No write for group and others; the owner may always read and write (and enter).
        mode = member.mode & 0o755 | 0o600
        safe.mode = mode | 0o100 if member.isdir() else mode
    return safe


#: The standard library's own extraction asks for a filter from Python 3.12 on (a warning
#: without one); the own-checks path says explicitly that it trusts what it extracts, since
#: every member has passed the project's checks.
_TRUSTED: dict[str, Any] = (
    {"filter": tarfile.fully_trusted_filter} if hasattr(tarfile, "fully_trusted_filter")
    else {})


def _make_links(symlinks: list[tarfile.TarInfo], root: str,
                check: Callable[[tarfile.TarInfo], object] | None) -> None:
    """Create the archive's symbolic links once everything else is in place, then check that
    each, followed through all the others, stays inside ``root`` (if one does not, all are
    removed again before the refusal)."""
    made: list[tuple[str, str]] = []
    for member in symlinks:
        name = _normal(member.name)
        parent = os.path.realpath(os.path.join(root, posixpath.dirname(name)))
        if not _inside(root, parent):
            raise UnsafeArchive(f"symbolic link {member.name!r} would land outside the folder "
                                "(through a link)", member=member.name)
        if check is not None:
            check(member)
        os.makedirs(parent, exist_ok=True)
        path = os.path.join(parent, posixpath.basename(name))
        if os.path.lexists(path):
            what = "a folder" if os.path.isdir(path) and not os.path.islink(path) else (
                "something")
            raise UnsafeArchive(f"symbolic link {member.name!r}: {what} of that name is in the "
                                "way", member=member.name)
        os.symlink(member.linkname, path)
        made.append((member.name, path))
    leading_out = [name for name, path in made
                   if not _inside(root, os.path.realpath(path))]
    if leading_out:
        # None stays behind to be followed by whoever looks in the folder before it goes.
        for _, path in made:
            os.unlink(path)
        raise UnsafeArchive(f"symbolic link {leading_out[0]!r} leads outside the folder "
                            "through the archive's other links", member=leading_out[0])


def safe_extract(source: bytes | IO[bytes] | Path, dest: Path, *,
                 use_filters: bool | None = None, mode: str = "r:*") -> None:
    """Unpack the tarball ``source`` (bytes, a file object or a path) into ``dest``.

    Every member is checked (`check_members`) before anything is written. Then everything
    but the symbolic links is unpacked, so that nothing can be written through a link; then
    the links are made, each where its folder really is inside ``dest`` and nothing is in
    the way; last, each link is followed to check that it ends inside ``dest``.
    Raises `UnsafeArchive` on a member refused (what came before it may stay in ``dest``,
    which the caller throws away) and on a tarball that cannot be read.
    ``use_filters`` chooses the code path (default: filters where this Python has them); the
    tests run both.
    """
    filters = HAS_FILTERS if use_filters is None else use_filters
    if filters and _FILTERING is None:
        raise RuntimeError("no tarfile with extraction filters is available")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    module = _FILTERING if filters and _FILTERING is not None else tarfile
    try:
        with _open(module, source, mode) as tar:
            members = check_members(tar.getmembers())
            symlinks = [m for m in members if m.issym()]
            others = [m for m in members if not m.issym()]
            if filters:
                base: Callable[..., tarfile.TarInfo | None] = module.data_filter

                def checked(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                    _check_placement(member, root)
                    return base(_owned_by_me(member), path)

                # Every member has passed the project's checks; tarfile's data filter runs
                # after them on each, links included.
                tar.extractall(root, members=others, filter=checked)  # noqa: S202
                _make_links(symlinks, root, lambda member: base(member, root))
            else:
                for member in others:
                    _check_placement(member, root)
                    tar.extract(_owned_by_me(member), root, **_TRUSTED)
                _make_links(symlinks, root, None)
    except UnsafeArchive:
        raise
    except _FILTER_ERRORS as exc:
        raise UnsafeArchive(f"refused by tarfile's data filter: {exc}") from exc
    except _READ_ERRORS as exc:
        raise UnsafeArchive(f"the tarball cannot be unpacked: {exc}") from exc
