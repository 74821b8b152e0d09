"""A tiny Debian source package made in a test's folder: ``pkgfarm-tiny`` 1.0, 3.0 (native).

It makes one arch-specific binary (``pkgfarm-tiny``: a C program) and one arch-independent one
(``pkgfarm-tiny-data``), with a plain-make debian/rules (no debhelper), so building it needs
nothing beyond build-essential.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

NAME = "pkgfarm-tiny"
VERSION = "1.0"

CONTROL = """\
Source: pkgfarm-tiny
Section: misc
Priority: optional
Maintainer: Jane Doe <jane@example.org>
Standards-Version: 4.6.2
Rules-Requires-Root: no
{build_depends}
Package: pkgfarm-tiny
Architecture: any
Description: tiny arch-specific test package
 A C program that prints a greeting.

Package: pkgfarm-tiny-data
Architecture: all
Description: tiny arch-independent test package
 A text file.
"""

CHANGELOG = """\
pkgfarm-tiny ({version}) unstable; urgency=medium

  * Test release.

 -- Jane Doe <jane@example.org>  Mon, 01 Jan 2024 00:00:00 +0000
"""

RULES = """\
#!/usr/bin/make -f
# Plain make: each binary package is assembled and packed by hand.

build: build-arch build-indep
build-arch:
\tcc -O2 -o pkgfarm-tiny tiny.c
build-indep:
\ttrue

binary: binary-arch binary-indep
binary-arch: build-arch
\tinstall -D -m 0755 pkgfarm-tiny debian/tmp-arch/usr/bin/pkgfarm-tiny
\tmkdir -p debian/tmp-arch/DEBIAN
\tdpkg-gencontrol -ppkgfarm-tiny -Pdebian/tmp-arch
\tdpkg-deb --root-owner-group --build debian/tmp-arch ..
binary-indep: build-indep
\tinstall -D -m 0644 data.txt debian/tmp-indep/usr/share/pkgfarm-tiny/data.txt
\tmkdir -p debian/tmp-indep/DEBIAN
\tdpkg-gencontrol -ppkgfarm-tiny-data -Pdebian/tmp-indep
\tdpkg-deb --root-owner-group --build debian/tmp-indep ..

clean:
\trm -rf debian/tmp-arch debian/tmp-indep debian/files debian/substvars pkgfarm-tiny

.PHONY: build build-arch build-indep binary binary-arch binary-indep clean
"""

TINY_C = """\
#include <stdio.h>
int main(void) { puts("hello from pkgfarm-tiny"); return 0; }
"""


def make_tree(folder: Path, version: str = VERSION, build_depends: str = "") -> Path:
    """The unpacked source tree ``folder/pkgfarm-tiny-VERSION``."""
    tree = folder / f"{NAME}-{version}"
    (tree / "debian" / "source").mkdir(parents=True)
    line = f"Build-Depends: {build_depends}\n" if build_depends else ""
    (tree / "debian" / "control").write_text(CONTROL.format(build_depends=line))
    (tree / "debian" / "changelog").write_text(CHANGELOG.format(version=version))
    (tree / "debian" / "source" / "format").write_text("3.0 (native)\n")
    rules = tree / "debian" / "rules"
    rules.write_text(RULES)
    rules.chmod(0o755)
    (tree / "tiny.c").write_text(TINY_C)
    (tree / "data.txt").write_text("some data\n")
    return tree


def make_dsc(folder: Path, version: str = VERSION, build_depends: str = "") -> Path:
    """Build the source package with ``dpkg-source -b``; the .dsc (its tarball beside it)."""
    tree = make_tree(folder, version, build_depends)
    subprocess.run(["dpkg-source", "-b", tree.name], cwd=folder, check=True,
                   capture_output=True)
    return folder / f"{NAME}_{version}.dsc"


def make_git_repo(folder: Path, version: str = VERSION) -> Path:
    """The tree committed to a fresh git repository (the tree is the repository)."""
    tree = make_tree(folder, version)
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org",
           "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "tiny"]):
        subprocess.run([*git, *args], cwd=tree, check=True, capture_output=True)
    return tree


def flat_sources_repo(folder: Path) -> str:
    """A flat deb-src repository that holds one unrelated source; its one-line entry."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Sources").write_text(textwrap.dedent("""\
        Package: pkgfarm-other
        Binary: pkgfarm-other
        Version: 1.0
        Architecture: all
        Format: 3.0 (native)
        Directory: .
        Files:
         00000000000000000000000000000000 1 pkgfarm-other_1.0.dsc
        """))
    return f"deb-src [trusted=yes] file:{folder} ./"
