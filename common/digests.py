"""Checksums of files and streams, read in pieces (archives can be gigabytes)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

CHUNK = 1024 * 1024
#: The sha256 of nothing (what a missing input stands for where a checksum is required).
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sha256_stream(source: IO[bytes], copy_to: IO[bytes] | None = None,
                  chunk: int = CHUNK) -> tuple[int, str]:
    """(size, sha256) of what ``source`` yields up to its end, read ``chunk`` bytes at a time;
    each piece is also written to ``copy_to`` when one is given."""
    digest = hashlib.sha256()
    size = 0
    while piece := source.read(chunk):
        size += len(piece)
        digest.update(piece)
        if copy_to is not None:
            copy_to.write(piece)
    return size, digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)[1]
