"""Helpers shared by the benchmark scripts in bench/.

Importing this module puts the repository root on ``sys.path`` (a script run as
``python bench/NAME.py`` only has bench/ there), so the scripts can import ``master``,
``common`` and ``tests.integration.farm``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# -- statistics and tables ---------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine_summary() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return (f"{os.cpu_count()} CPUs ({model}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}")


@dataclass
class Timing:
    """Repeated measurements of one step."""

    label: str
    samples: list[float]

    @property
    def median(self) -> float:
        return median(self.samples)

    def spread(self) -> str:
        return f"{fmt_seconds(min(self.samples))} … {fmt_seconds(max(self.samples))}"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """Run a command; on failure, raise with its output."""
    result = subprocess.run([str(a) for a in args], capture_output=True, **kwargs)
    if result.returncode != 0:
        out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode(
            errors="replace")
        err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(
            errors="replace")
        raise RuntimeError(f"{' '.join(str(a) for a in args)} exited with "
                           f"{result.returncode}:\n{out[-2000:]}\n{err[-2000:]}")
    return result


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- fast .deb files, written by hand ----------------------------------------------------------
#
# A .deb is an ar archive of debian-binary, control.tar.* and data.tar.*, in that order
# (deb(5)). Writing it here costs microseconds instead of a dpkg-deb process per package.


def _ar_member(name: str, data: bytes, mtime: int) -> bytes:
    header = (f"{name:<16}{mtime:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n").encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tar_gz(members: Sequence[tuple[str, bytes | None]], mtime: int) -> bytes:
    """A gzip-compressed tar of (name, content) pairs; content None is a directory."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=mtime)


_DATA_CACHE: dict[int, bytes] = {}


def control_text(name: str, version: str, arch: str) -> str:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
            "Maintainer: pkgfarm benchmarks <bench@example.org>\nInstalled-Size: 1\n"
            "Depends: libc6 (>= 2.36)\nSection: misc\nPriority: optional\n"
            f"Description: generated package {name} for the index benchmark\n"
            " This package was written by bench/index_update.py. It holds no files; its\n"
            " control data is about as long as that of a typical small Debian package.\n")


def deb_bytes(control: str, mtime: int = 1700000000) -> bytes:
    """A valid .deb with ``control`` as its control file and an empty data member."""
    data = _DATA_CACHE.get(mtime)
    if data is None:
        data = _DATA_CACHE[mtime] = _tar_gz([("./", None)], mtime)
    ctrl = _tar_gz([("./", None), ("./control", control.encode())], mtime)
    return (b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n", mtime)
            + _ar_member("control.tar.gz", ctrl, mtime)
            + _ar_member("data.tar.gz", data, mtime))


def digests_of(data: bytes) -> tuple[int, str, str, str]:
    return (len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(),
            hashlib.sha1(data, usedforsecurity=False).hexdigest(),
            hashlib.sha256(data).hexdigest())


# -- processes ---------------------------------------------------------------------------------


def children_map() -> dict[int, list[int]]:
    """Every process's children, from /proc (one pass)."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    kids = children_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(kids.get(p, []))
    return tree


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


@contextlib.contextmanager
def temporary_folder(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A fresh folder under $TMPDIR (default /tmp), removed afterwards unless ``keep``."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    # The workers' build users must pass through it to their build areas (mkdtemp makes 0700).
    path.chmod(0o755)
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
