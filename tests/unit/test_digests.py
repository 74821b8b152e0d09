"""common/digests.py: the one sha256 helper, for files and streams."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from common.digests import CHUNK, EMPTY_SHA256, sha256_file, sha256_stream


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17])
def test_streams_and_files_hash_as_hashlib_does(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    expected = hashlib.sha256(data).hexdigest()
    copy = io.BytesIO()
    assert sha256_stream(io.BytesIO(data), copy) == (size, expected)
    assert copy.getvalue() == data  # the copy is whole, in order
    assert sha256_stream(io.BytesIO(data), chunk=7) == (size, expected)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert sha256_file(path) == expected


def test_the_empty_digest() -> None:
    assert EMPTY_SHA256 == hashlib.sha256(b"").hexdigest() == sha256_stream(io.BytesIO())[1]
