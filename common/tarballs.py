"""Writing the farm's own tarballs, and unpacking tarballs that come from outside, safely.

Snapshots (a definition and its sources, a Debian source with its files, a git tree) are written
by `TarWriter` with fixed owners and times, so the same input gives the same bytes.

Every tarball that comes from a user, an upload or the network is unpacked with `safe_extract`,
which refuses, with an `UnsafeArchive` error naming the member, anything that could reach
outside the target folder or carry privileges: absolute names, ``..`` components, symbolic and
hard links whose target resolves outside the folder, device nodes and FIFOs, and setuid or
setgid bits. The checks are the project's own and run on every Python the project supports.
Where a tarfile with extraction filters is at hand (the standard library's from Python 3.11.4,
or the ``backports.tarfile`` package that pkgfarm installs on Debian 12's 3.11.2) its ``data``
filter runs after them as a second line; without one, members are extracted one by one, each
checked against the folder as it stands after the ones before. Both ways are tested.
The farm's own mmdebstrap base, which rightly holds setuid programs, is not unpacked here.
"""

from __future__ import annotations

import copy
import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO

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


def check_member(member: tarfile.TarInfo, dest: str) -> None:
    """Refuse a member that could write outside ``dest`` (a resolved, absolute folder) or carry
    privileges. Symbolic links already extracted under ``dest`` are followed, so a name that
    passes through one is judged by where it really lands."""
    name = member.name
    if not name or "\0" in name:
        raise UnsafeArchive("a member has an empty or NUL-holding name", member=name)
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise UnsafeArchive(f"member {name!r} has an absolute path", member=name)
    if ".." in Path(name).parts:
        raise UnsafeArchive(f"member {name!r} climbs out with '..'", member=name)
    target = os.path.realpath(os.path.join(dest, name))
    if not _inside(dest, target):
        raise UnsafeArchive(f"member {name!r} would land outside the folder (through a link)",
                            member=name)
    if member.ischr() or member.isblk():
        raise UnsafeArchive(f"member {name!r} is a device node", member=name)
    if member.isfifo():
        raise UnsafeArchive(f"member {name!r} is a FIFO", member=name)
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"member {name!r} is of an unsupported type {member.type!r}",
                            member=name)
    if member.mode & _PRIVILEGE_BITS:
        raise UnsafeArchive(f"member {name!r} has the setuid or setgid bit", member=name)
    if member.issym():
        link = member.linkname
        if not link or os.path.isabs(link):
            raise UnsafeArchive(f"symbolic link {name!r} points to an absolute path {link!r}",
                                member=name)
        resolved = os.path.realpath(os.path.join(dest, os.path.dirname(name), link))
        if not _inside(dest, resolved):
            raise UnsafeArchive(f"symbolic link {name!r} points outside the folder ({link!r})",
                                member=name)
    if member.islnk():
        link = member.linkname
        if not link or os.path.isabs(link) or ".." in Path(link).parts:
            raise UnsafeArchive(f"hard link {name!r} points outside the folder ({link!r})",
                                member=name)
        resolved = os.path.realpath(os.path.join(dest, link))
        if not _inside(dest, resolved):
            raise UnsafeArchive(f"hard link {name!r} points outside the folder ({link!r})",
                                member=name)


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


def safe_extract(source: bytes | IO[bytes] | Path, dest: Path, *,
                 use_filters: bool | None = None, mode: str = "r:*") -> None:
    """Unpack the tarball ``source`` (bytes, a file object or a path) into ``dest``.

    Raises `UnsafeArchive` on the first member the checks refuse (what came before it stays in
    ``dest``, which the caller throws away) and on a tarball that cannot be read.
    ``use_filters`` chooses the code path (default: filters where this Python has them); the
    tests run both.
    """
    filters = HAS_FILTERS if use_filters is None else use_filters
    if filters and _FILTERING is None:
        raise RuntimeError("no tarfile with extraction filters is available")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(dest)
    fileobj: IO[bytes] | None = io.BytesIO(source) if isinstance(source, bytes) else (
        None if isinstance(source, Path) else source)
    name = str(source) if isinstance(source, Path) else None
    module = _FILTERING if filters and _FILTERING is not None else tarfile
    try:
        with module.open(name, mode, fileobj) as tar:
            if filters:
                base: Callable[..., tarfile.TarInfo | None] = module.data_filter

                def checked(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                    check_member(member, root)
                    return base(_owned_by_me(member), path)

                # Every member passes check_member first, then tarfile's own data filter.
                tar.extractall(root, filter=checked)  # noqa: S202
            else:
                for member in tar:
                    check_member(member, root)
                    tar.extract(_owned_by_me(member), root)
    except UnsafeArchive:
        raise
    except _FILTER_ERRORS as exc:
        raise UnsafeArchive(f"refused by tarfile's data filter: {exc}") from exc
    except _READ_ERRORS as exc:
        raise UnsafeArchive(f"the tarball cannot be unpacked: {exc}") from exc
