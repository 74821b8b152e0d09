"""Shared helpers of the unit tests: definition files and small real .deb archives."""

from __future__ import annotations

import copy
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

#: A complete, valid definition; tests copy it and change one thing.
VALID_DEFINITION: dict[str, Any] = {
    "package": {
        "name": "hello",
        "version": "1.0",
        "release": "2",
        "architecture": "any",
        "description": "Say hello\nA longer text\nover two lines.\n\nSecond paragraph.\n",
        "maintainer": "Jane Doe <jane@example.org>",
        "depends": ["bash (>= 5)", "coreutils"],
        "section": "utils",
        "priority": "optional",
        "homepage": "https://example.org/hello",
    },
    "build_depends": ["make"],
    "sources": [{"path": "src"}],
    "build": 'install -D -m 0755 hello.sh "$DESTDIR/usr/bin/hello"\n',
}


@pytest.fixture
def valid_definition() -> dict[str, Any]:
    """A fresh deep copy of VALID_DEFINITION (safe to modify)."""
    return copy.deepcopy(VALID_DEFINITION)


@pytest.fixture
def write_definition() -> Callable[..., Path]:
    """Write a definition (a mapping, dumped as YAML, or raw text) to ``path``.

    Creates ``src/hello.sh`` beside it unless ``with_sources=False``.
    """

    def write(path: Path, data: dict[str, Any] | str, with_sources: bool = True) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        if with_sources:
            src = path.parent / "src"
            src.mkdir(exist_ok=True)
            script = src / "hello.sh"
            script.write_text("#!/bin/sh\necho hello\n")
            script.chmod(0o755)
        return path

    return write


def build_deb(
    folder: Path, name: str, version: str, arch: str, *, filename: str | None = None,
    payload: bytes = b"hello\n", extra_control: str = "",
) -> Path:
    """Pack a tiny real .deb with dpkg-deb (named as Debian would, by default).

    Each archive lands in a fresh folder under ``folder``, so two archives may share a name.
    """
    folder = Path(tempfile.mkdtemp(prefix="deb-", dir=folder))
    root = folder / "root"
    root.mkdir()
    (root / "DEBIAN").mkdir()
    root.chmod(0o755)
    (root / "DEBIAN").chmod(0o755)
    data = root / "usr" / "share" / name / "payload"
    data.parent.mkdir(parents=True)
    data.write_bytes(payload)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        f"Maintainer: Jane Doe <jane@example.org>\nInstalled-Size: 1\n{extra_control}"
        f"Description: test package {name}\n a test archive\n"
    )
    upstream = version.split(":", 1)[-1]
    out = folder / (filename or f"{name}_{upstream}_{arch}.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture
def make_deb(tmp_path: Path) -> Callable[..., Path]:
    folder = tmp_path / "debs"
    folder.mkdir()

    def make(name: str, version: str, arch: str, **kwargs: Any) -> Path:
        return build_deb(folder, name, version, arch, **kwargs)

    return make
