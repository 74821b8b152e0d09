"""Packing a staged tree into a .deb: the control file from the definition, md5sums, dpkg-deb.

The control file is generated here from the definition (never from the build script), and
dpkg-deb packs the tree with root ownership.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import IO

from common import arch as archmod
from common.definition import PackageDefinition
from common.errors import BuildFailed
from common.formats.deb import DEB, policy


def control_fields(definition: PackageDefinition, arch: str,
                   installed_size_kib: int) -> dict[str, str]:
    """The DEBIAN/control fields of the binary package ``definition`` makes for ``arch``."""
    control = {
        "Package": definition.name,
        "Version": DEB.full_version(definition.version, definition.release),
        "Architecture": archmod.ALL if definition.architecture == archmod.ALL else arch,
        "Maintainer": definition.maintainer,
        "Installed-Size": str(installed_size_kib),
    }
    for field, kind in (("Depends", "depends"), ("Recommends", "recommends"),
                        ("Conflicts", "conflicts"), ("Provides", "provides"),
                        ("Replaces", "replaces")):
        values = definition.relations_for(kind, DEB.name)
        if values:
            control[field] = ", ".join(values)
    control["Section"] = definition.section
    control["Priority"] = definition.priority
    if definition.homepage:
        control["Homepage"] = definition.homepage
    control["Description"] = policy.format_description(definition.description)
    return control


def control_text(fields: dict[str, str]) -> str:
    return "".join(f"{name}: {value}\n" for name, value in fields.items())


def installed_size_kib(root: Path) -> int:
    """Installed-Size as dpkg-gencontrol counts it: each file rounded up to 1 KiB, dirs 1 KiB."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "DEBIAN"]
        total += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += (st.st_size + 1023) // 1024 if not os.path.islink(
                os.path.join(dirpath, name)) else 1
    return max(total, 1)


def md5sums(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == "DEBIAN" or path.is_symlink() or not path.is_file():
            continue
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        lines.append(f"{digest}  {rel.as_posix()}\n")
    return "".join(lines)


def pack(definition: PackageDefinition, arch: str, destdir: Path, outdir: Path,
         env: dict[str, str], out: IO[str]) -> Path:
    """The .deb of the staged tree ``destdir``, made in ``outdir``."""
    if os.path.lexists(destdir / "DEBIAN"):
        raise BuildFailed("the build script must not write $DESTDIR/DEBIAN; pkgfarm makes it")
    debian_dir = destdir / "DEBIAN"
    debian_dir.mkdir()
    # dpkg-deb insists on 0755 for the control folder, whatever the worker's umask is.
    debian_dir.chmod(0o755)
    destdir.chmod(0o755)
    control = control_fields(definition, arch, installed_size_kib(destdir))
    (debian_dir / "control").write_text(control_text(control))
    sums = md5sums(destdir)
    if sums:
        (debian_dir / "md5sums").write_text(sums)
    filename = policy.deb_filename(definition.name, control["Version"], control["Architecture"])
    archive = outdir / filename
    out.flush()
    result = subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(destdir), str(archive)],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )
    if result.returncode != 0:
        raise BuildFailed(f"dpkg-deb could not pack the package (exit status {result.returncode})")
    return archive
