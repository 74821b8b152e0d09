"""Where the repository's files live, behind one small interface.

`LocalStorage` keeps them under ``data_dir/repo``; every write lands under a temporary name in
the same folder, is flushed to disk, and is renamed into place, so a reader sees the old file or
the new one, never a part. Errors of a backend surface as `OSError` (`FileNotFoundError` for a
missing key).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    def put_file(self, src: Path, key: str) -> None:
        """Publish the file ``src`` (which is consumed) at ``key``, atomically."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Publish ``data`` at ``key``, atomically."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> list[tuple[str, float]]:
        """Keys under ``prefix`` with their modification times."""

    def local_path(self, key: str) -> Path:
        """A path on this machine that serves ``key`` (FileNotFoundError if absent)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key {key!r} leaves the repository")
        return path

    def put_file(self, src: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(src, 0o644)
        os.replace(src, dest)
        _fsync_dir(dest.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(dest.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[tuple[str, float]]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root.resolve()
        if not base.is_dir():
            return []
        return [(p.relative_to(self.root.resolve()).as_posix(), p.stat().st_mtime)
                for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path
