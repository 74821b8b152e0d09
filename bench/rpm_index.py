"""Publishing one new rpm into a repository of 20,000: pkgfarm vs createrepo_c.

Set-up (not timed): N real .rpm files made by rpmbuild (one spec per 1,000 packages, each a
sub-package with one small file; real headers, digests and payloads), in a folder laid out as a
suite's repository names them (``packages/<file>``). One full ``createrepo_c`` run over them
gives every package's primary/filelists/other elements; pkgfarm's store gets one record per
rpm with those elements as its index entry (the same entry the rpm format computes at upload,
with createrepo_c on the one file: checked on a sample, as is the farm's whole index against
createrepo_c's after the first update).

Timed, each step --runs times, systems interleaved, medians reported; each run adds one new
rpm (a new name):

- pkgfarm: recording the package + the rpm format's incremental index write (primary,
  filelists, other, repomd.xml); as an extra row, reading the new rpm as an upload does
  (digest check, header, createrepo_c on the one file);
- ``createrepo_c --update`` (the tool's incremental mode: it reuses the old metadata of files
  whose size and mtime did not change) after the new rpm is put in the folder;
- a full ``createrepo_c`` run over the same folder.

All three write no sqlite databases (``--no-database``; dnf does not need them) and gzip
metadata, as pkgfarm does; repomd.xml is not signed in any (pkgfarm's signature adds one gpg
call, measured separately as the last row).

Run: .venv/bin/python bench/rpm_index.py [--packages N] [--runs N]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as bc

from common.config import settings_from_dict
from master.formats import Digests, IndexContext
from master.formats.rpm import RPM_REPOSITORY
from master.formats.rpm import archive as rpmarchive
from master.formats.rpm.index import IndexWriter
from master.storage import LocalStorage
from master.store import NewPackage, Store

SUITE, COMPONENT = "stable", "main"
BATCH = 1000
PREFIXES = "abcdefghijklmnopqrstuvwxyz"


def package_name(i: int, tag: str = "bench") -> str:
    return f"{PREFIXES[i % len(PREFIXES)]}{tag}{i:05d}"


def build_batch(work: Path, names: list[str], out: Path) -> None:
    """rpmbuild of one spec whose sub-packages are ``names``."""
    tree = work / "tree"
    (tree / "usr/share/bench").mkdir(parents=True)
    lines = ["Name: benchbase", "Version: 1.0", "Release: 1", "Summary: bench",
             "License: MIT", "BuildArch: noarch", "%description", "bench", ""]
    for name in names:
        (tree / "usr/share/bench" / name).write_text(f"{name}\n")
        lines += [f"%package -n {name}", f"Summary: benchmark package {name}",
                  f"%description -n {name}", f"The package {name} of pkgfarm's benchmark.",
                  f"%files -n {name}", f"/usr/share/bench/{name}", ""]
    spec = work / "bench.spec"
    spec.write_text("\n".join(lines))
    (work / "home").mkdir()
    bc.run(["rpmbuild", "-bb", "--quiet", "--noprep", "--noclean", "--nodeps",
            "--buildroot", str(tree), "--define", f"_topdir {work / 'top'}",
            "--define", f"_rpmdir {out}", "--define",
            "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
            "--define", "_build_id_links none", str(spec)],
           env={**os.environ, "HOME": str(work / "home")})


def make_rpms(work: Path, names: list[str], out: Path) -> None:
    batches = [names[i:i + BATCH] for i in range(0, len(names), BATCH)]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(lambda b: build_batch(work / f"batch{b[0]}", b[1], out),
                      enumerate(batches)))


def createrepo(folder: Path, *extra: str) -> None:
    bc.run(["createrepo_c", "--no-database", "--quiet", *extra, str(folder)])


def metadata_files(folder: Path) -> dict[str, str]:
    """The uncompressed primary, filelists and other that repomd.xml in ``folder`` names."""
    repomd = (folder / "repodata" / "repomd.xml").read_text()
    texts = {}
    for kind in rpmarchive.KINDS:
        href = re.search(rf'<data type="{kind}">.*?<location href="([^"]+)"', repomd, re.S)[1]
        texts[kind] = gzip.decompress((folder / href).read_bytes()).decode()
    return texts


_PKG_RE = re.compile(r"<package[ >].*?</package>\n", re.S)
_PKGID_RE = re.compile(r'pkgid="([0-9a-f]{64})"|<checksum type="sha256" pkgid="YES">'
                       r"([0-9a-f]{64})</checksum>")


def split_entries(texts: dict[str, str]) -> dict[str, dict[str, str]]:
    """Per package (by its sha256), its three elements."""
    entries: dict[str, dict[str, str]] = {}
    for kind, text in texts.items():
        for m in _PKG_RE.finditer(text):
            ids = _PKGID_RE.search(m[0])
            entries.setdefault(ids[1] or ids[2], {})[kind] = m[0]
    return entries


def record_of(path: Path, entry: dict[str, str]) -> NewPackage:
    named = RPM_REPOSITORY.format.parse_archive_filename(path.name)
    name, version, arch = named.name, named.version, named.arch
    data = path.read_bytes()
    return NewPackage(format="rpm", suite=SUITE, component=COMPONENT, name=name,
                      version=version, arch=arch, filename=path.name,
                      pool_path=f"rpm/pool/{COMPONENT}/{name[0]}/{name}/{path.name}",
                      size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                      entry=json.dumps(entry, sort_keys=True), uploaded_by=None, job_id=None)


def read_upload(path: Path) -> NewPackage:
    """What an upload computes: the checks and the entry (createrepo_c on the one file)."""
    info = RPM_REPOSITORY.inspect(path)
    data = path.read_bytes()
    digests = Digests(len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(),
                      hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                      hashlib.sha256(data).hexdigest())
    key = RPM_REPOSITORY.pool_path(info, COMPONENT)
    return NewPackage(format="rpm", suite=SUITE, component=COMPONENT, name=info.name,
                      version=info.version, arch=info.arch, filename=path.name, pool_path=key,
                      size=digests.size, sha256=digests.sha256,
                      entry=RPM_REPOSITORY.index_entry(info, key, digests), uploaded_by=None,
                      job_id=None)


def _untimed(text: str) -> str:
    return re.sub(r'<time file="\d+"', "<time", text)


def check_sample(paths: list[Path], entries: dict[str, dict[str, str]]) -> None:
    """The entry an upload computes is the one the full createrepo_c run wrote."""
    for path in paths:
        mine = json.loads(read_upload(path).entry)
        theirs = entries[hashlib.sha256(path.read_bytes()).hexdigest()]
        for kind in rpmarchive.KINDS:
            if _untimed(mine[kind]) != _untimed(theirs[kind]):
                sys.exit(f"{path.name}: the upload's {kind} entry differs from createrepo_c's")


def check_same_index(ours: Path, theirs: Path) -> None:
    """The same packages' elements (in another order: pkgfarm's follows its groups), under
    the same head."""
    a, b = metadata_files(ours), metadata_files(theirs)
    for kind in rpmarchive.KINDS:
        elements = [sorted(_PKG_RE.findall(_untimed(t))) for t in (a[kind], b[kind])]
        heads = [t.split("<package", 1)[0] for t in (a[kind], b[kind])]
        if elements[0] != elements[1] or heads[0] != heads[1]:
            sys.exit(f"pkgfarm's {kind} differs from createrepo_c's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--packages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    with bc.temporary_folder("pkgfarm-rpm-bench-", keep=args.keep) as work:
        return run_benchmark(work, args)


def run_benchmark(work: Path, args: argparse.Namespace) -> int:
    n = args.packages
    folder = work / "createrepo"
    pool = folder / rpmarchive.PACKAGES_DIR
    pool.mkdir(parents=True)
    names = [package_name(i) for i in range(n)]
    extra = [package_name(i, "new") for i in range(args.runs + 1)]
    bc.log(f"building {n + len(extra)} rpms with rpmbuild")
    started = time.perf_counter()
    make_rpms(work / "build", names, pool)
    spare = work / "spare"
    make_rpms(work / "build-new", extra, spare)
    bc.log(f"  done in {time.perf_counter() - started:.1f} s")

    bc.log("full createrepo_c run for the entries")
    first_full = bc.timed(lambda: createrepo(folder))
    entries = split_entries(metadata_files(folder))
    if len(entries) != n:
        sys.exit(f"createrepo_c listed {len(entries)} packages, not {n}")
    paths = sorted(pool.iterdir())
    check_sample(paths[:: max(1, n // 5)], entries)

    data_dir = work / "pkgfarm"
    store = Store(data_dir / "state.db")
    storage = LocalStorage(data_dir / "repo")
    settings = settings_from_dict({
        "master": {"data_dir": str(data_dir)},
        "repository": {"suite": SUITE, "component": COMPONENT, "formats": ["rpm"],
                       "architectures": ["amd64"]},
    })
    writer = IndexWriter(IndexContext(settings, store, storage, None))
    records = [record_of(p, entries[hashlib.sha256(p.read_bytes()).hexdigest()])
               for p in paths]
    store.packages.add(records)
    full_pkgfarm = bc.timed(lambda: update(store, writer, full=True))
    bc.log(f"recorded {n}; pkgfarm's full write {full_pkgfarm:.2f} s, createrepo_c's "
           f"{first_full:.2f} s")

    ours, update_times, upd_times, full_times, read_times = [], [], [], [], []
    for i in range(args.runs):
        new = spare / sorted(os.listdir(spare))[i]
        bc.log(f"run {i + 1}/{args.runs}: {new.name}")
        read_times.append(bc.timed(lambda new=new: ours.append(read_upload(new)))) # type: ignore[misc]
        update_times.append(bc.timed(lambda: (store.packages.add([ours[-1]]),
                                              update(store, writer))))
        shutil.copyfile(new, pool / new.name)
        upd_times.append(bc.timed(lambda: createrepo(folder, "--update")))
        full_times.append(bc.timed(lambda: createrepo(folder)))
    check_same_index(data_dir / "repo" / "rpm" / SUITE, folder)
    sign = signing_time(work)

    med = bc.median
    ours_t, upd_t, full_t = med(update_times), med(upd_times), med(full_times)
    print()
    print(bc.machine_summary())
    print(f"\nOne new rpm into a repository of {n} (median of {args.runs} runs):\n")
    print(bc.table(["what", "median", "min", "max", "vs pkgfarm"], [
        ["pkgfarm: record + incremental index write", bc.fmt_seconds(ours_t),
         bc.fmt_seconds(min(update_times)), bc.fmt_seconds(max(update_times)), "1.0x"],
        ["createrepo_c --update", bc.fmt_seconds(upd_t), bc.fmt_seconds(min(upd_times)),
         bc.fmt_seconds(max(upd_times)), f"{upd_t / ours_t:.1f}x slower"],
        ["createrepo_c (full run)", bc.fmt_seconds(full_t), bc.fmt_seconds(min(full_times)),
         bc.fmt_seconds(max(full_times)), f"{full_t / ours_t:.1f}x slower"],
        ["pkgfarm: reading the upload (checks + entry)", bc.fmt_seconds(med(read_times)),
         bc.fmt_seconds(min(read_times)), bc.fmt_seconds(max(read_times)), ""],
        ["pkgfarm: signing repomd.xml (one gpg call)", bc.fmt_seconds(sign), "", "", ""],
    ]))
    print(f"\nfull index of {n}: pkgfarm {bc.fmt_seconds(full_pkgfarm)}, createrepo_c "
          f"{bc.fmt_seconds(first_full)}")
    print("pkgfarm's primary, filelists and other equal createrepo_c's (but file times)")
    return 0


def update(store: Store, writer: IndexWriter, full: bool = False) -> None:
    """What Repository.rebuild_index does for the rpm format."""
    dirty = store.packages.dirty()
    writer.write(dirty, full=full)
    store.packages.clear_dirty(dirty)


def signing_time(work: Path) -> float:
    from master.signing import Signer, generate_key

    _, secret = generate_key("bench", "bench@example.org")
    (work / "key.asc").write_bytes(secret)
    signer = Signer.from_key_file(str(work / "key.asc"), work / "signer")
    data = os.urandom(4000)
    signer.detached(data)
    times = [bc.timed(lambda: signer.detached(data)) for _ in range(5)]
    subprocess.run(["gpgconf", "--homedir", str(work / "signer" / "gnupg"), "--kill", "all"],
                   capture_output=True)
    return bc.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
