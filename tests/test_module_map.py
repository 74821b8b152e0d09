"""README's module map names every module: each file of common, master and worker is in a row
of its own folder's (``master/api/``) or by name (``master/streams.py``; a row's later names,
such as `states.py` after `common/messages.py`, are in the first one's folder)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def named_in_the_map() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Module map", 1)[1].split("\n## ", 1)[0]
    named: set[str] = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        names = re.findall(r"`([^`]+)`", first_cell)
        folder = names[0].rsplit("/", 1)[0] if "/" in names[0].rstrip("/") else ""
        for name in names:
            named.add(name if "/" in name else f"{folder}/{name}")
    return named


def test_every_module_is_in_the_map() -> None:
    named = named_in_the_map()
    assert named, "no module map in README.md"
    missing = []
    for package in ("common", "master", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" and path.parent.name in ("common", "master",
                                                                   "worker"):
                continue
            parts = path.relative_to(ROOT).parts
            folders = ["/".join(parts[:i]) + "/" for i in range(1, len(parts))]
            if module not in named and not any(f in named for f in folders):
                missing.append(module)
    assert missing == []


def test_the_map_names_only_what_exists() -> None:
    for name in named_in_the_map():
        assert (ROOT / name).exists(), name
