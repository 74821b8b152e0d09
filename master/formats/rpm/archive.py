"""Reading and checking an uploaded .rpm, and its entry in the repository metadata.

An rpm is accepted when rpm itself verifies its header and payload digests (``rpmkeys
--checksig --nosignature``: a truncated or altered file fails), reads its header, and the
header says a binary package (source rpms are refused) of an architecture the farm knows, with
a name and version that rpm's rules allow.

The index entry is computed once, at upload, by createrepo_c itself: the file is given to
``createrepo_c`` alone in a folder, at the place the suite's repository will name it
(``packages/<file>``), and the ``<package>`` elements of the primary, filelists and other
metadata it writes are kept. The index writer only concatenates them, so every package's
metadata is exactly what createrepo_c writes for it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from common.errors import Unprocessable
from common.formats.rpm import RPM, policy
from master.formats import ArchiveInfo, Digests

#: Where a suite's repository names its archives (an alias of the shared pool, see
#: `archive_alias`).
PACKAGES_DIR = "packages"
QUERY = "%{NAME}\\n%{EPOCH}\\n%{VERSION}\\n%{RELEASE}\\n%{ARCH}\\n%{SOURCERPM}\\n"
KINDS = ("primary", "filelists", "other")


def _run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=300,
                          env={**os.environ, "LANG": "C.UTF-8", "HOME": str(cwd or "/")})


def _reason(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return " ".join(line.strip() for line in lines[-2:]) or "unreadable"


def _source_name(sourcerpm: str) -> str | None:
    if not sourcerpm.endswith(".src.rpm"):
        return None
    parts = sourcerpm[:-len(".src.rpm")].rsplit("-", 2)
    return parts[0] if len(parts) == 3 else None


def read_header(path: Path, work: Path) -> dict[str, str]:
    """Name, epoch, version, release, arch and source rpm, once rpm verified the digests."""
    db = work / "db"
    db.mkdir()
    checked = _run("rpmkeys", "--dbpath", str(db), "--checksig", "--nosignature", str(path),
                   cwd=work)
    if checked.returncode != 0:
        reason = _reason(checked)
        if "not an rpm package" in reason.lower() or "read failed" in reason.lower():
            raise Unprocessable(f"not an rpm package: {reason}")
        raise Unprocessable(f"the rpm's digests do not verify (damaged or altered): {reason}")
    query = _run("rpm", "--dbpath", str(db), "-qp", "--nosignature", "--nodigest",
                 "--qf", QUERY, str(path), cwd=work)
    if query.returncode != 0:
        raise Unprocessable(f"rpm cannot read the header: {_reason(query)}")
    values = query.stdout.split("\n")
    if len(values) != 7:
        raise Unprocessable("rpm's header holds unexpected values")
    name, epoch, version, release, arch, sourcerpm = values[:6]
    return {"Name": name, "Epoch": "" if epoch == "(none)" else epoch, "Version": version,
            "Release": release, "Arch": arch, "SourceRPM": sourcerpm}


def check_header(header: dict[str, str]) -> tuple[str, str, str]:
    """(full version, farm arch, source name) of a header rpm's rules and the farm's allow."""
    if header["SourceRPM"] in ("", "(none)"):
        raise Unprocessable("this is a source rpm; the repository publishes binary rpms only")
    problem = RPM.check_name(header["Name"])
    if problem:
        raise Unprocessable(f"the header's name: {problem}", field="name")
    version = (f"{header['Epoch']}:" if header["Epoch"] else "") + header["Version"]
    wrong = RPM.check_version_parts(version, header["Release"])
    if wrong or (header["Epoch"] and not policy.EPOCH_RE.fullmatch(header["Epoch"])):
        raise Unprocessable(f"the header's {wrong[0] if wrong else 'epoch'} is not an rpm "
                            f"version: {version}-{header['Release']}", field="version")
    try:
        arch = RPM.farm_arch(header["Arch"])
    except ValueError as exc:
        raise Unprocessable(f"the header's architecture: {exc}", field="arch") from None
    source = _source_name(header["SourceRPM"])
    if source is None or RPM.check_name(source):
        raise Unprocessable(f"the header names no source rpm the farm reads: "
                            f"{header['SourceRPM']!r}")
    return f"{version}-{header['Release']}", arch, source


def _package_element(xml: str, kind: str) -> str:
    start, end = xml.find("<package"), xml.rfind("</package>")
    if start < 0 or end < 0 or xml.count("<package ") != 1:
        raise Unprocessable(f"createrepo_c wrote no {kind} entry for the rpm")
    return xml[start:end + len("</package>")] + "\n"


def metadata(path: Path, filename: str, work: Path) -> dict[str, str]:
    """The primary, filelists and other ``<package>`` elements createrepo_c writes for the
    rpm when the repository names it ``packages/<filename>``."""
    repo = work / "repo"
    (repo / PACKAGES_DIR).mkdir(parents=True)
    target = repo / PACKAGES_DIR / filename
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    made = _run("createrepo_c", "--no-database", "--simple-md-filenames", "--workers", "1",
                "--quiet", str(repo), cwd=work)
    if made.returncode != 0:
        raise Unprocessable(f"createrepo_c cannot read the rpm: {_reason(made)}")
    pieces = {}
    for kind in KINDS:
        found = list((repo / "repodata").glob(f"{kind}.xml*"))
        if len(found) != 1:
            raise Unprocessable(f"createrepo_c wrote no {kind} metadata for the rpm")
        raw = found[0].read_bytes()
        text = (gzip.decompress(raw) if found[0].suffix == ".gz" else raw).decode()
        pieces[kind] = _package_element(text, kind)
    return pieces


def inspect(path: Path) -> ArchiveInfo:
    """Read and check an .rpm (see the module's text)."""
    with tempfile.TemporaryDirectory(prefix="pkgfarm-rpm-") as tmp:
        work = Path(tmp)
        header = read_header(path, work)
        version, arch, source = check_header(header)
        filename = RPM.archive_filename(header["Name"], version, arch)
        fields = {**header, **metadata(path, filename, work)}
    return ArchiveInfo(name=header["Name"], version=version, arch=arch, source=source,
                       fields=fields)


def pool_path(info: ArchiveInfo, component: str) -> str:
    """``rpm/pool/<component>/<first letter>/<source>/<file>``."""
    return (f"rpm/pool/{component}/{info.source[0].lower()}/{info.source}/"
            + RPM.archive_filename(info.name, info.version, info.arch))


def index_entry(info: ArchiveInfo, key: str, digests: Digests) -> str:
    """The rpm's three metadata pieces, as JSON; createrepo_c's checksum must be the one the
    master computed while receiving the file."""
    pkgid = f'<checksum type="sha256" pkgid="YES">{digests.sha256}</checksum>'
    if pkgid not in info.fields["primary"]:
        raise Unprocessable("createrepo_c's checksum of the rpm differs from the upload's")
    return json.dumps({kind: info.fields[kind] for kind in KINDS}, sort_keys=True)


def entry_pieces(entry: str) -> dict[str, str]:
    pieces: dict[str, str] = json.loads(entry)
    return pieces
