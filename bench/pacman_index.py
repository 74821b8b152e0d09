"""One new package into a pacman repository of 20,000: pkgfarm's database update vs repo-add.

Set-up (not timed): N synthetic records in a fresh Store, each with the database entry the
pacman format's index_entry makes (from .PKGINFO-like fields and made-up digests; no archive
behind them), and one full database write. That database (and its .files) is also repo-add's
starting point, so both tools update the same 20,000 entries.

Checks (not timed): --sample records (default 20, spread over the N) are made again as real
archives by the worker's packer, with the same name, version, fields and files, and added by
repo-add to a scratch database; each synthetic record's desc must equal repo-add's entry of its
real twin but for the fields made up or signed (%CSIZE%, %ISIZE%, %MD5SUM%, %SHA256SUM%: no
archive stands behind the record; %PGPSIG%: the farm signs), and its files entry must equal
repo-add's. Each run's new (real) package's desc and files in the farm's database must equal
repo-add's entry of it in the copy repo-add updated (but %PGPSIG%). At the end repo-remove
reads and rewrites the farm's database.

Timed, each step --runs times, interleaved, medians reported (one new real package per run,
made by the worker's packer):

- pkgfarm: inspect the archive (zstd, tar, .PKGINFO, .MTREE checks), its entry, record it,
  the incremental database write (db + files for the suite);
- repo-add of that one package to the 20,000-package database (+ files database);
- with --sign: both again signing (pkgfarm: the package and both databases; repo-add
  --sign: both databases). pkgfarm's cache of package signatures is pre-filled for the
  20,000 synthetic records (one real signature copied; signing them one by one is set-up).

Run: .venv/bin/python bench/pacman_index.py [--packages N] [--runs N] [--sign]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as bc

from common.config import settings_from_dict
from common.definition import parse_definition
from master.formats import ArchiveInfo, Digests, IndexContext
from master.formats.pacman import archive as pmarchive
from master.formats.pacman.index import IndexWriter
from master.signing import Signer, generate_key
from master.storage import LocalStorage
from master.store import NewPackage, Store
from worker.formats.pacman import package as pmpackage

SUITE, COMPONENT, ARCH = "stable", "main", "amd64"
PREFIXES = "abcdefghijklmnopqrstuvwxyz"


def synthetic(i: int) -> NewPackage:
    name = f"{PREFIXES[i % 26]}bench{i:05d}"
    version = "1.0-1"
    filename = f"{name}-{version}-x86_64.pkg.tar.zst"
    key = f"pacman/pool/{COMPONENT}/{name}/{filename}"
    h = hashlib.sha256(name.encode()).hexdigest()
    info = ArchiveInfo(name=name, version=version, arch=ARCH, source=name, fields={
        "pkgname": name, "pkgbase": name, "pkgver": version,
        "pkgdesc": f"synthetic package {i} for the benchmark", "url": "https://example.org",
        "builddate": "1700000000", "packager": "bench <bench@example.org>", "size": "4096",
        "arch": "x86_64", "depend": "glibc\nbash>=5", "license": "MIT",
        "%FILES%": f"usr/\nusr/bin/\nusr/bin/{name}\nusr/share/\nusr/share/doc/\n"
                   f"usr/share/doc/{name}/\nusr/share/doc/{name}/README"})
    digests = Digests(2048 + i % 1000, h[:32], h[:40], h)
    return NewPackage(format="pacman", suite=SUITE, component=COMPONENT, name=name,
                      version=version, arch=ARCH, filename=filename, pool_path=key,
                      size=digests.size, sha256=h,
                      entry=pmarchive.index_entry(info, key, digests), uploaded_by="bench",
                      job_id=None)


def new_package(work: Path, i: int) -> Path:
    folder = work / f"def{i}"
    folder.mkdir(parents=True)
    path = folder / "p.yaml"
    name = f"znew{i:03d}"
    path.write_text(f"""package:
  name: {name}
  version: "1.0"
  release: "1"
  architecture: any
  description: a new package
  maintainer: bench <bench@example.org>
  depends: ["glibc"]
build: "true"
""")
    d = parse_definition(path)
    tree = folder / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / f"usr/bin/{name}").write_bytes(b"#!/bin/sh\necho new\n" * 50)
    out = folder / "out"
    out.mkdir()
    return pmpackage.pack(d, ARCH, tree, out, {"SOURCE_DATE_EPOCH": "1700000000"}, io.StringIO())


def twin_definition(folder: Path, i: int) -> Path:
    """A definition that makes the real archive of synthetic record ``i``."""
    name = f"{PREFIXES[i % 26]}bench{i:05d}"
    folder.mkdir(parents=True)
    path = folder / "p.yaml"
    path.write_text(f"""package:
  name: {name}
  version: "1.0"
  release: "1"
  architecture: any
  description: synthetic package {i} for the benchmark
  maintainer: bench <bench@example.org>
  homepage: https://example.org
  license: MIT
  depends: ["glibc", "bash (>= 5)"]
build: "true"
""")
    return path


def real_twin(work: Path, i: int) -> Path:
    """The archive of synthetic record ``i`` made for real: its files are the ones the
    record lists (a 4000-byte program and a 96-byte README)."""
    folder = work / f"twin{i}"
    d = parse_definition(twin_definition(folder, i))
    tree = folder / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / f"usr/share/doc/{d.name}").mkdir(parents=True)
    (tree / f"usr/bin/{d.name}").write_bytes(b"#" * 4000)
    (tree / f"usr/share/doc/{d.name}/README").write_bytes(b"r" * 96)
    out = folder / "out"
    out.mkdir()
    return pmpackage.pack(d, ARCH, tree, out, {"SOURCE_DATE_EPOCH": "1700000000"},
                          io.StringIO())


def db_entries(path: Path, only: set[str] | None = None) -> dict[str, dict[str, bytes]]:
    """folder -> member (desc, files) -> bytes of a database, for the folders ``only``."""
    entries: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            folder, _, member = m.name.partition("/")
            if m.isfile() and (only is None or folder in only):
                handle = tar.extractfile(m)
                assert handle is not None
                entries.setdefault(folder, {})[member] = handle.read()
    return entries


def desc_fields(text: bytes, leave_out: set[str]) -> dict[str, list[str]]:
    """A desc entry's fields (%NAME% -> its lines), without ``leave_out``."""
    fields: dict[str, list[str]] = {}
    for block in text.decode().strip("\n").split("\n\n"):
        key, *values = block.split("\n")
        if key not in leave_out:
            fields[key] = values
    return fields


#: Fields of a synthetic record that no real archive stands behind (made-up digests and
#: sizes), and the signature the farm adds (repo-add adds one only from a .sig file).
MADE_UP = {"%CSIZE%", "%ISIZE%", "%MD5SUM%", "%SHA256SUM%"}
SIGNED = {"%PGPSIG%"}


def compare_entries(ours: dict[str, dict[str, bytes]], theirs: dict[str, dict[str, bytes]],
                    leave_out: set[str]) -> int:
    """How many entries agree; exits naming the first that does not."""
    for folder, members in theirs.items():
        if set(ours.get(folder, {})) != set(members):
            sys.exit(f"{folder}: the farm's database has {sorted(ours.get(folder, {}))}, "
                     f"repo-add's {sorted(members)}")
        if desc_fields(ours[folder]["desc"], leave_out) != desc_fields(members["desc"],
                                                                       leave_out):
            sys.exit(f"{folder}: the farm's desc differs from repo-add's")
        if "files" in members and ours[folder]["files"] != members["files"]:
            sys.exit(f"{folder}: the farm's files entry differs from repo-add's")
    return len(theirs)


def farm_entries(db: Path, files: Path, folders: set[str]) -> dict[str, dict[str, bytes]]:
    """The farm's entries of ``folders``: desc from the .db, files from the .files."""
    ours = db_entries(files, folders)
    for folder, members in db_entries(db, folders).items():
        ours.setdefault(folder, {})["desc"] = members["desc"]
    return ours


def check_synthetic_sample(work: Path, n: int, sample: int, db: Path, files: Path,
                           env: dict[str, str]) -> int:
    """Compare ``sample`` synthetic records with repo-add's entries of their real twins."""
    chosen = sorted({round(k * (n - 1) / max(1, sample - 1)) for k in range(sample)})
    scratch = work / "twins"
    scratch.mkdir()
    archives = [real_twin(work / "twin-defs", i) for i in chosen]
    for archive in archives:
        shutil.copy(archive, scratch / archive.name)
    subprocess.run(["repo-add", "-q", str(scratch / "t.db.tar.gz"),
                    *(str(scratch / a.name) for a in archives)],
                   check=True, env=env, capture_output=True)
    folders = {a.name.rsplit("-", 1)[0] for a in archives}
    return compare_entries(farm_entries(db, files, folders),
                           db_entries(scratch / "t.files.tar.gz"), MADE_UP | SIGNED)


def count_entries(db: Path) -> int:
    with tarfile.open(db) as tar:
        return sum(1 for m in tar if m.name.endswith("/desc"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sign", action="store_true")
    ap.add_argument("--sample", type=int, default=20,
                    help="synthetic records checked against repo-add's entries of real twins")
    args = ap.parse_args()
    with bc.temporary_folder("pkgfarm-pacman-bench-") as work:
        return run(work, args)


def run(work: Path, args: argparse.Namespace) -> int:
    n = args.packages
    data_dir = work / "pkgfarm"
    store = Store(data_dir / "state.db")
    storage = LocalStorage(data_dir / "repo")
    settings = settings_from_dict({"master": {"data_dir": str(data_dir)}, "repository": {
        "suite": SUITE, "component": COMPONENT, "architectures": [ARCH],
        "formats": ["pacman"]}})
    signer = None
    env = dict(os.environ)
    if args.sign:
        _, secret = generate_key("pkgfarm bench", "bench@example.org")
        (work / "key.asc").write_bytes(secret)
        signer = Signer.from_key_file(str(work / "key.asc"), work / "gpg")
        env["GNUPGHOME"] = str(signer.home)
    ctx = IndexContext(settings, store, storage, signer)
    writer = IndexWriter(ctx)
    bc.log(f"recording {n} synthetic packages")
    records = [synthetic(i) for i in range(n)]
    store.packages.add(records)
    if signer is not None:
        one = signer.detached(b"bench", armor=False)
        store.index.put("pacman", {f"sig/{signer.fingerprint}/{r.sha256}": one
                                   for r in records})
    t = time.perf_counter()
    dirty = store.packages.dirty()
    writer.write(dirty, full=True)
    store.packages.clear_dirty(dirty)
    bc.log(f"full write of {n} packages: {time.perf_counter() - t:.2f} s")
    root = data_dir / "repo/pacman" / SUITE / COMPONENT / "x86_64"
    db, files = root / "pkgfarm-stable.db", root / "pkgfarm-stable.files"
    assert count_entries(db) == n, "the farm's database lacks entries"
    bc.log(f"  db {db.stat().st_size} bytes, files {files.stat().st_size} bytes")
    checked = check_synthetic_sample(work, n, min(args.sample, n), db, files, env)
    bc.log(f"  {checked} synthetic records equal repo-add's entries of their real twins "
           "(but made-up digests and sizes, and the signature)")

    t_farm, t_repo_add = [], []
    for i in range(args.runs):
        pkg = new_package(work / "new", i)
        # repo-add's copy of the same 20,000-package databases
        ra = work / f"ra{i}"
        ra.mkdir()
        shutil.copy(db, ra / "bench.db.tar.gz")
        shutil.copy(files, ra / "bench.files.tar.gz")
        shutil.copy(pkg, ra / pkg.name)
        cmd = ["repo-add", "-q"]
        if signer is not None:
            cmd += ["--sign", "--key", signer.fingerprint]
        cmd += [str(ra / "bench.db.tar.gz"), str(ra / pkg.name)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        t_repo_add.append(time.perf_counter() - start)
        assert count_entries(ra / "bench.db.tar.gz") == n + 1 + i, "repo-add lost entries"

        def farm(pkg: Path = pkg) -> None:
            info = pmarchive.inspect(pkg)
            key = pmarchive.pool_path(info, COMPONENT)
            data = pkg.read_bytes()
            digests = Digests(*bc.digests_of(data))
            storage.put_file(pkg, key)
            store.packages.add([NewPackage(
                format="pacman", suite=SUITE, component=COMPONENT, name=info.name,
                version=info.version, arch=info.arch, filename=key.rsplit("/", 1)[1],
                pool_path=key, size=digests.size, sha256=digests.sha256,
                entry=pmarchive.index_entry(info, key, digests), uploaded_by="bench",
                job_id=None)])
            dirty = store.packages.dirty()
            writer.write(dirty, full=False)
            store.packages.clear_dirty(dirty)

        t_farm.append(bc.timed(farm))
        assert count_entries(db) == n + 1 + i, "the farm's database lacks the new package"
        folder = {pkg.name.rsplit("-", 1)[0]}
        compare_entries(farm_entries(db, files, folder),
                        db_entries(ra / "bench.files.tar.gz", folder), SIGNED)
        shutil.rmtree(ra)
    # the databases written stay readable by repo-add (a sample check of the writer)
    check = work / "check"
    check.mkdir()
    shutil.copy(db, check / "c.db.tar.gz")
    shutil.copy(files, check / "c.files.tar.gz")
    subprocess.run(["repo-remove", "-q", str(check / "c.db.tar.gz"), "abench00000"],
                   check=True, env=env, capture_output=True)
    assert count_entries(check / "c.db.tar.gz") == n + args.runs - 1
    farm_m, ra_m = bc.median(t_farm), bc.median(t_repo_add)
    signed = " (signed)" if signer is not None else ""
    print(f"\npacman database update after one new package, {n} packages{signed}, "
          f"median of {args.runs}")
    print(bc.table(["system", "median", "all runs"], [
        ["pkgfarm (inspect + record + incremental db/files write)", bc.fmt_seconds(farm_m),
         " ".join(f"{x:.3f}" for x in t_farm)],
        ["repo-add of one package", bc.fmt_seconds(ra_m),
         " ".join(f"{x:.3f}" for x in t_repo_add)],
    ]))
    print(f"ratio repo-add / pkgfarm: {ra_m / farm_m:.1f}x")
    print(f"checked: {checked} synthetic records against repo-add's entries of real twins, "
          f"and each run's new package against repo-add's entry ({args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
