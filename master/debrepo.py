"""The Debian format of the repository: reading a .deb, its index entry, and the APT index.

This module is the format seam: the rest of the master hands it archives and records and never
looks inside a .deb or an index itself. Another format (RPM, say) would be a sibling module with
the same four functions: ``inspect``, ``pool_key``, ``stanza`` and ``write_index``.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from debian.deb822 import Deb822

from common import debian
from common.config import RepositorySettings
from common.errors import Unprocessable
from master.storage import Storage
from master.store import PackageRecord

REQUIRED_FIELDS = ("Package", "Version", "Architecture", "Maintainer", "Description")


@dataclass(frozen=True)
class ArchiveInfo:
    name: str
    version: str
    arch: str
    source: str
    control: Deb822


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha1: str
    sha256: str


def inspect(path: Path) -> ArchiveInfo:
    """Read and check a .deb: a valid archive whose data unpacks and whose control is complete."""
    fields = subprocess.run(["dpkg-deb", "--field", str(path)], capture_output=True, text=True)
    if fields.returncode != 0:
        reason = fields.stderr.strip().splitlines()[-1:] or ["unreadable"]
        raise Unprocessable(f"not a valid Debian archive: {reason[0]}")
    # Reading the whole data member proves the archive is not truncated or corrupt.
    contents = subprocess.run(["dpkg-deb", "--contents", str(path)], capture_output=True,
                              text=True)
    if contents.returncode != 0:
        reason = contents.stderr.strip().splitlines()[-1:] or ["unreadable"]
        raise Unprocessable(f"archive data is damaged: {reason[0]}")
    control = Deb822(fields.stdout)
    missing = [f for f in REQUIRED_FIELDS if not control.get(f)]
    if missing:
        raise Unprocessable(f"control file lacks {', '.join(missing)}")
    name, version, arch = control["Package"], control["Version"], control["Architecture"]
    if not debian.PACKAGE_NAME_RE.fullmatch(name):
        raise Unprocessable(f"control file names an invalid package {name!r}")
    if not debian.is_valid_version(version):
        raise Unprocessable(f"control file has an invalid version {version!r}")
    source = control.get("Source", name).split()[0]
    return ArchiveInfo(name=name, version=version, arch=arch, source=source, control=control)


def pool_key(info: ArchiveInfo, component: str) -> str:
    return f"{debian.pool_dir(component, info.source)}/" + debian.deb_filename(
        info.name, info.version, info.arch)


def stanza(info: ArchiveInfo, key: str, digests: Digests) -> str:
    """The archive's Packages entry, computed once when it is accepted."""
    entry = Deb822()
    for field, value in info.control.items():
        entry[field] = value
    entry["Filename"] = key
    entry["Size"] = str(digests.size)
    entry["MD5sum"] = digests.md5
    entry["SHA1"] = digests.sha1
    entry["SHA256"] = digests.sha256
    text: str = entry.dump()
    return text if text.endswith("\n") else text + "\n"


def newest(records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
    """For one index architecture: the newest version of each package (arch or all)."""
    best: dict[str, PackageRecord] = {}
    for rec in records:
        if rec.arch not in (arch, "all"):
            continue
        cur = best.get(rec.name)
        if cur is None or debian.version_key(rec.version) > debian.version_key(cur.version):
            best[rec.name] = rec
    return [best[name] for name in sorted(best)]


def render_packages(records: Iterable[PackageRecord]) -> bytes:
    return "\n".join(rec.stanza for rec in records).encode()


def _hashes(data: bytes) -> tuple[str, str, str]:
    return (hashlib.md5(data, usedforsecurity=False).hexdigest(),
            hashlib.sha1(data, usedforsecurity=False).hexdigest(),
            hashlib.sha256(data).hexdigest())


def render_release(repo: RepositorySettings, files: dict[str, bytes], date: float | None = None
                   ) -> bytes:
    lines = [
        f"Origin: {repo.origin}",
        f"Label: {repo.label}",
        f"Suite: {repo.suite}",
        f"Codename: {repo.suite}",
        f"Date: {formatdate(date, usegmt=True)}",
        f"Architectures: {' '.join(repo.architectures)}",
        f"Components: {repo.component}",
        "Description: packages built by pkgfarm",
    ]
    sums = {name: _hashes(data) for name, data in sorted(files.items())}
    for title, idx in (("MD5Sum", 0), ("SHA1", 1), ("SHA256", 2)):
        lines.append(f"{title}:")
        for name, hashes in sums.items():
            lines.append(f" {hashes[idx]} {len(files[name]):>16} {name}")
    return ("\n".join(lines) + "\n").encode()


def write_index(storage: Storage, repo: RepositorySettings,
                records: list[PackageRecord]) -> dict[str, bytes]:
    """Write every index file of the suite, ``Release`` last; returns what was written."""
    files: dict[str, bytes] = {}
    for arch in repo.architectures:
        base = f"{repo.component}/binary-{arch}"
        packages = render_packages(newest(records, arch))
        files[f"{base}/Packages"] = packages
        files[f"{base}/Packages.gz"] = gzip.compress(packages, mtime=0)
        files[f"{base}/Release"] = (
            f"Archive: {repo.suite}\nComponent: {repo.component}\nOrigin: {repo.origin}\n"
            f"Label: {repo.label}\nArchitecture: {arch}\n"
        ).encode()
    for name, data in files.items():
        storage.put_bytes(f"dists/{repo.suite}/{name}", data)
    release = render_release(repo, files)
    storage.put_bytes(f"dists/{repo.suite}/Release", release)
    return {**files, "Release": release}
