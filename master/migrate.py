"""Copying the repository from one storage to another: local disk to S3, S3 to local, bucket to
bucket.

Every key of the source (the pool and the published index) is streamed to a temporary file,
hashed on the way, written to the destination with its atomic `put_file`, then read back and
checked by size and sha256. A key the destination already holds with the same content is left
alone, so running the migration again copies only what is missing or different; nothing is
ever deleted from either side.

Keys go over in the order a client needs them, as each format ranks its keys (for APT: the
pool first, then the by-hash copies, then the indexes, and each suite's Release, Release.gpg
and InRelease last), so a client that reads
the destination during a migration sees the old index or a complete new one. Stop the master
(or at least its uploads) while migrating: an index written meanwhile may be missed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO

from common.digests import sha256_stream
from master import formats
from master.storage import CHUNK, Storage


def copy_order(key: str) -> tuple[int, str]:
    """Sort key: the rank the key's format gives it (archives first, the files that name the
    others last); a key no format claims goes first."""
    ranks = [rank for fmt in formats.FORMATS.values()
             if (rank := fmt.copy_rank(key)) is not None]
    return (min(ranks) if ranks else 0), key


def digest(storage: Storage, key: str) -> tuple[int, str]:
    """(size, sha256) of ``key`` in ``storage``, streamed."""
    with storage.open(key) as fh:
        return sha256_stream(fh, chunk=CHUNK)


def _fetch(source: Storage, key: str, work: Path) -> tuple[Path, int, str]:
    """Stream ``key`` to a temporary file in ``work``: (the file, its size, its sha256)."""
    fd, name = tempfile.mkstemp(dir=work, prefix="copy-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, source.open(key) as fh:
            size, sha256 = sha256_stream(fh, out, chunk=CHUNK)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, size, sha256


def _holds(dest: Storage, key: str, size: int, sha256: str) -> bool:
    """Whether ``dest`` already holds ``key`` with this content."""
    try:
        if dest.size(key) != size:
            return False
        return digest(dest, key) == (size, sha256)
    except FileNotFoundError:
        return False


def migrate(source: Storage, dest: Storage, out: IO[str] | None = None, *,
            tmp_dir: Path | None = None) -> int:
    """Copy every key of ``source`` to ``dest``; returns how many files were copied.

    Progress goes to ``out``: the number of files to look at, then one line per file
    (``[n/N] copied KEY (SIZE bytes)``, or ``already there``), then a summary. Raises `OSError` if a
    copy cannot be written or reads back different from the source (the message names the key).
    ``tmp_dir`` holds the file in transit (default: the system's temporary folder).
    """

    def say(line: str) -> None:
        if out is not None:
            out.write(line + "\n")
            out.flush()

    keys = sorted((key for key, _ in source.list("")), key=copy_order)
    copied = present = vanished = 0
    copied_bytes = 0
    say(f"{len(keys)} file(s) to look at in {source!r}")
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="pkgfarm-migrate-") as work:
        for n, key in enumerate(keys, 1):
            step = f"[{n}/{len(keys)}]"
            try:
                tmp, size, sha256 = _fetch(source, key, Path(work))
            except FileNotFoundError:
                # Removed since the listing (an old by-hash copy expiring, say): nothing to do.
                vanished += 1
                say(f"{step} skipped {key}: no longer in the source")
                continue
            try:
                if _holds(dest, key, size, sha256):
                    present += 1
                    say(f"{step} already there {key}")
                    continue
                dest.put_file(tmp, key)
            finally:
                tmp.unlink(missing_ok=True)
            try:
                got = digest(dest, key)
            except FileNotFoundError as exc:
                raise OSError(f"{key} was copied to {dest!r} but cannot be read back there"
                              ) from exc
            if got != (size, sha256):
                raise OSError(
                    f"{key} reads back from {dest!r} as {got[0]} bytes with sha256 {got[1]}, "
                    f"not {size} bytes with sha256 {sha256} as in {source!r}")
            copied += 1
            copied_bytes += size
            say(f"{step} copied {key} ({size} bytes)")
    summary = f"{copied} copied ({copied_bytes} bytes), {present} already present"
    if vanished:
        summary += f", {vanished} gone from the source meanwhile"
    say(f"{summary} ({source!r} -> {dest!r})")
    return copied
