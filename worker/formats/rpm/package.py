"""Packing a staged tree into an .rpm: a spec generated from the definition, `rpmbuild -bb`.

The spec has no %prep, %build or %install: rpmbuild takes the tree the build script staged as
its build root as it is (it runs none of its post-install scripts over it, so nothing is
stripped or recompressed behind the script's back) and packs exactly the paths %files lists,
which are every path of the tree, owned by root (``%defattr(-,root,root,-)``; modes as staged).
rpm's automatic requirements stay on: rpmbuild reads the files and adds what they need
(``/bin/sh`` for a shell script, the libraries an ELF file links).

rpmbuild runs with a private %_topdir (and a private HOME, so no ~/.rpmmacros) next to the
output folder, its own empty rpm database, no build dependency check against the host's rpm
database, and nothing that reaches the network. ``--target`` makes arm64 and noarch packages
on any host. Given SOURCE_DATE_EPOCH (the worker sets it to the snapshot's time) the build
time and every file's mtime are clamped to it and the build host is ``pkgfarm``: the same
staged tree makes the same .rpm.

Relations: depends -> Requires, recommends -> Recommends, conflicts -> Conflicts, provides ->
Provides. Debian's Replaces lets a package take over another's files, which rpm has no word
for (rpm refuses file conflicts whatever the tags say), so a replaces alone is not recorded;
a relation that is both replaced and conflicted (Debian's way of saying "this package takes the
other's place") becomes Obsoletes, which is rpm's way of saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import IO

from common import arch as archmod
from common.definition import PackageDefinition
from common.errors import BuildFailed
from common.formats.rpm import RPM, policy

#: rpm's License tag needs a value: this one when the definition gives no license (an SPDX
#: reference that says none was stated).
NO_LICENSE = "LicenseRef-not-stated"
#: Characters a %files line may carry as they are; any other is matched by ``?`` (see
#: `files_line`).
_PLAIN_PATH_RE = re.compile(r"[^A-Za-z0-9._+,@=:~^/-]")
_KINDS = (("depends", "Requires"), ("recommends", "Recommends"), ("conflicts", "Conflicts"),
          ("provides", "Provides"))


def relations(definition: PackageDefinition, kind: str) -> tuple[str, ...]:
    """The definition's relations of ``kind`` for rpm, in the farm's syntax."""
    return definition.relations_for(kind, RPM.name)


def rpm_relations(definition: PackageDefinition) -> list[tuple[str, str]]:
    """(tag, relation in rpm's syntax) of the definition's relations."""
    tags: list[tuple[str, str]] = []
    for kind, tag in _KINDS:
        for rel in relations(definition, kind):
            if tag == "Provides" and "|" in rel:
                raise BuildFailed(f"provides {rel!r}: a package cannot provide alternatives")
            tags.append((tag, policy.to_rpm(rel)))
    conflicted = set(RPM.relation_names(relations(definition, "conflicts")))
    for rel in relations(definition, "replaces"):
        alts = policy.parse_relation(rel)
        if len(alts) == 1 and alts[0].name in conflicted:
            tags.append(("Obsoletes", alts[0].rpm()))
    return tags


def escape_text(text: str) -> str:
    """Text for a spec, where ``%`` starts a macro."""
    return text.replace("%", "%%")


def files_line(rel: str) -> str:
    """One %files entry for the staged path ``rel`` (``/usr/bin/x``).

    rpm expands macros in %files (more than once) and reads globs there, and no quoting turns
    either off for every character; so each character outside a plain set is written as the
    glob ``?``. A pattern can then match only paths of the staged tree, and every one of those
    is listed anyway, so the packed set is exactly the tree.
    """
    if "\n" in rel or "\r" in rel:
        raise BuildFailed(f"the staged tree holds a path with a line break: {rel!r}")
    return '"' + _PLAIN_PATH_RE.sub("?", rel) + '"'


def file_list(root: Path) -> list[str]:
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames:
            path = base / name
            rel = "/" + path.relative_to(root).as_posix()
            if path.is_symlink():
                lines.append(files_line(rel))  # a link to a folder is a file of the package
            else:
                lines.append("%dir " + files_line(rel))
        for name in sorted(filenames):
            lines.append(files_line("/" + (base / name).relative_to(root).as_posix()))
    return lines


def spec_text(definition: PackageDefinition, arch: str, root: Path) -> str:
    epoch, version = policy.split_epoch(definition.version)
    summary, _, rest = definition.description.strip("\n").partition("\n")
    body = "\n".join(line.strip() if line.strip() != "." else ""
                     for line in rest.splitlines()).strip("\n") or summary.strip()
    tags = [("Name", definition.name), ("Version", version), ("Release", definition.release)]
    if epoch is not None:
        tags.append(("Epoch", epoch))
    tags += [("Summary", escape_text(summary.strip())),
             ("License", escape_text(definition.license or NO_LICENSE))]
    if definition.homepage:
        tags.append(("URL", escape_text(definition.homepage)))
    tags.append(("Packager", escape_text(definition.maintainer)))
    if definition.architecture == archmod.ALL:
        tags.append(("BuildArch", "noarch"))
    tags += rpm_relations(definition)
    lines = [f"{tag}: {value}" for tag, value in tags]
    lines += ["", "%description", escape_text(body), "", "%files",
              "%defattr(-,root,root,-)", *file_list(root), ""]
    return "\n".join(lines)


def pack(definition: PackageDefinition, arch: str, destdir: Path, outdir: Path,
         env: dict[str, str], out: IO[str]) -> Path:
    """The .rpm of the staged tree ``destdir``, made in ``outdir``."""
    farm_arch = archmod.ALL if definition.architecture == archmod.ALL else arch
    target = RPM.arch_name(farm_arch)
    private = outdir.parent / "rpmbuild"
    for sub in ("top", "home", "db", "tmp"):
        (private / sub).mkdir(parents=True, exist_ok=True)
    spec = private / f"{definition.name}.spec"
    spec.write_text(spec_text(definition, farm_arch, destdir))
    defines = {
        "_topdir": private / "top", "_tmppath": private / "tmp", "_dbpath": private / "db",
        "_rpmdir": outdir, "_build_name_fmt": "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
        # /usr/lib/.build-id links belong to debuginfo packages, which the farm does not make
        "_build_id_links": "none", "_buildhost": "pkgfarm",
        "use_source_date_epoch_as_buildtime": "1", "clamp_mtime_to_source_date_epoch": "1",
    }
    command = ["rpmbuild", "-bb", "--noprep", "--noclean", "--nodeps",
               "--buildroot", str(destdir), "--target", target]
    for name, value in defines.items():
        command += ["--define", f"{name} {value}"]
    command.append(str(spec))
    run_env = {**os.environ, **env, "HOME": str(private / "home"),
               "TMPDIR": str(private / "tmp"), "LANG": "C.UTF-8"}
    out.flush()
    result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=run_env,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise BuildFailed(f"rpmbuild could not pack the package (exit status "
                          f"{result.returncode})")
    archive = outdir / RPM.archive_filename(
        definition.name, RPM.full_version(definition.version, definition.release), farm_arch)
    if not archive.is_file():
        raise BuildFailed(f"rpmbuild made no {archive.name}")
    return archive
