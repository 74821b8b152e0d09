"""Publishing one new package into a repository of 20,000: pkgfarm vs apt-ftparchive, reprepro.

Set-up (not timed): N generated .deb files (valid ar archives, a real control file, an empty
data member) in a pool tree; for pkgfarm, one record per archive in a fresh Store with its
Packages entry (made by the deb format's index_entry from the control text and hashes computed
here);
for apt-ftparchive, a `generate` configuration with a cache database; for reprepro, a
repository that has included all N archives.

Timed, each step --runs times, systems interleaved in every run, medians reported:

- pkgfarm: recording one package + the deb format's incremental index write (what follows an
  accepted upload, without the upload); also, as extra rows, the same plus reading the new
  archive (inspect, hashes, entry), and Repository.accept_upload as a whole (receive, hash,
  dpkg-deb checks, fsync into the pool, record, index, retention; no HTTP).
- apt-ftparchive generate (Packages, Packages.gz, Packages.xz) + apt-ftparchive release, with
  the cache database warm, after the new .deb is put in the pool.
- reprepro includedeb of the new .deb (it writes Packages, .gz, .xz and Release).

And the full build of the same N packages (--full-runs times): pkgfarm's full index write
vs apt-ftparchive generate + release with an empty cache, and one `reprepro export`.

Run: /work/main/.venv/bin/python bench/index_update.py [--packages N] [--runs N]
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as bc

from common.config import settings_from_dict
from common.formats.deb import policy as debian
from master.formats import ArchiveInfo, Digests, IndexContext
from master.formats.deb import archive as debarchive
from master.formats.deb.index import IndexWriter
from master.repository import Repository
from master.storage import LocalStorage
from master.store import GROUPS, NewPackage, Store

ARCH = "amd64"
SUITE, COMPONENT = "stable", "main"
VERSION = "1.0-1"
PREFIXES = "abcdefghijklmnopqrstuvwxyz"


def package_name(i: int, tag: str = "bench") -> str:
    return f"{PREFIXES[i % len(PREFIXES)]}{tag}{i:05d}"


class Generated:
    """One archive made for the benchmark: where it is and what pkgfarm records for it."""

    def __init__(self, archive: Path, name: str) -> None:
        self.name = name
        self.control = bc.control_text(name, VERSION, ARCH)
        self.data = bc.deb_bytes(self.control)
        self.key = f"{debian.pool_dir(COMPONENT, name)}/" + debian.deb_filename(
            name, VERSION, ARCH)
        self.path = archive / self.key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(self.data)

    def record(self) -> NewPackage:
        size, md5, sha1, sha256 = bc.digests_of(self.data)
        fields = debarchive.parse_control(self.control.encode())
        info = ArchiveInfo(name=self.name, version=VERSION, arch=ARCH, source=self.name,
                           fields=fields)
        entry = debarchive.index_entry(info, self.key, Digests(size, md5, sha1, sha256))
        return record_for(self.name, self.key, size, sha256, entry)


def record_for(name: str, key: str, size: int, sha256: str, entry: str) -> NewPackage:
    """The record Repository makes for an accepted upload."""
    return NewPackage(format="deb", suite=SUITE, component=COMPONENT, name=name,
                      version=VERSION, arch=ARCH, filename=key.rsplit("/", 1)[1],
                      pool_path=key, size=size, sha256=sha256, entry=entry,
                      uploaded_by="bench", job_id=None)


def read_new_archive(path: Path, key: str) -> NewPackage:
    """What the master does with a received archive before recording it."""
    info = debarchive.inspect(path)
    digests = Digests(*bc.digests_of(path.read_bytes()))
    return record_for(info.name, key, digests.size, digests.sha256,
                      debarchive.index_entry(info, key, digests))


def index_update(store: Store, writer: IndexWriter, full: bool = False) -> None:
    """What Repository.rebuild_index does for the deb format: render the dirty groups (all of
    them when ``full``), write the files, mark the groups clean."""
    dirty = store.packages.dirty()
    writer.write(dirty, full=full)
    store.packages.clear_dirty(dirty)


# -- apt-ftparchive ----------------------------------------------------------------------------


class AptFtparchive:
    def __init__(self, archive: Path, work: Path) -> None:
        self.archive = archive
        self.cache = work / "aft-cache"
        self.conf = work / "aft-generate.conf"
        self.dists = archive / "dists" / SUITE
        (self.dists / COMPONENT / f"binary-{ARCH}").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
Dir {{ ArchiveDir "{archive}"; CacheDir "{self.cache}"; }};
Default {{ Packages::Compress ". gzip xz"; Packages::Extensions ".deb"; FileMode 0644; }};
TreeDefault {{
  Directory "pool/$(SECTION)";
  Packages "$(DIST)/$(SECTION)/binary-$(ARCH)/Packages";
  BinCacheDB "packages-$(SECTION)-$(ARCH).db";
}};
Tree "dists/{SUITE}" {{ Sections "{COMPONENT}"; Architectures "{ARCH}"; }};
""")

    def drop_cache(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.mkdir()

    def publish(self) -> None:
        """Packages, .gz, .xz, then Release; with the checksums pkgfarm writes (MD5, SHA1,
        SHA256: no SHA512) and no Contents (pkgfarm writes none)."""
        bc.run(["apt-ftparchive", "-q", "-q", "--no-contents", "--no-sha512", "generate",
                self.conf])
        opts = [f"-oAPT::FTPArchive::Release::{k}={v}" for k, v in (
            ("Origin", "bench"), ("Label", "bench"), ("Suite", SUITE), ("Codename", SUITE),
            ("Architectures", ARCH), ("Components", COMPONENT))]
        release = bc.run(["apt-ftparchive", "--no-sha512", *opts, "release",
                          self.dists]).stdout
        tmp = self.archive / f".Release.{os.getpid()}"
        tmp.write_bytes(release)
        os.replace(tmp, self.dists / "Release")

    def packages_dir(self) -> Path:
        return self.dists / COMPONENT / f"binary-{ARCH}"


# -- reprepro ----------------------------------------------------------------------------------


class Reprepro:
    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "conf").mkdir(parents=True)
        (base / "conf/distributions").write_text(
            f"Origin: bench\nLabel: bench\nCodename: {SUITE}\nSuite: {SUITE}\n"
            f"Architectures: {ARCH}\nComponents: {COMPONENT}\n"
            "DebIndices: Packages Release . .gz .xz\n")

    def cmd(self, *args: str | Path) -> None:
        bc.run(["reprepro", "--silent", "-b", self.base, *args])

    def include_many(self, paths: list[Path], batch: int = 1000) -> None:
        for start in range(0, len(paths), batch):
            self.cmd("--export=silent-never", "includedeb", SUITE, *paths[start:start + batch])

    def packages_dir(self) -> Path:
        return self.base / "dists" / SUITE / COMPONENT / f"binary-{ARCH}"


# -- checks ------------------------------------------------------------------------------------


def check_index(folder: Path, expected: int, what: str) -> None:
    """The plain, .gz and .xz Packages agree and list ``expected`` packages."""
    plain = (folder / "Packages").read_bytes()
    if gzip.decompress((folder / "Packages.gz").read_bytes()) != plain:
        raise RuntimeError(f"{what}: Packages.gz differs from Packages")
    if lzma.decompress((folder / "Packages.xz").read_bytes()) != plain:
        raise RuntimeError(f"{what}: Packages.xz differs from Packages")
    count = sum(1 for line in io.BytesIO(plain) if line.startswith(b"Package: "))
    if count != expected:
        raise RuntimeError(f"{what}: Packages lists {count} packages, expected {expected}")


def check_samples(generated: list[Generated], records: list[NewPackage]) -> None:
    """A few archives: dpkg-deb reads them, and the deb format's inspect gives the entry used
    here."""
    step = max(1, len(generated) // 5)
    for gen, rec in list(zip(generated, records, strict=True))[::step]:
        bc.run(["dpkg-deb", "--info", gen.path])
        again = read_new_archive(gen.path, gen.key)
        if again.entry != rec.entry:
            raise RuntimeError(f"entry of {gen.name} differs from the deb format's inspect:\n"
                               f"{again.entry}\n{rec.entry}")


# -- the benchmark -----------------------------------------------------------------------------


def ratio(baseline: float, ours: float) -> str:
    return f"{baseline / ours:.1f}x" if ours > 0 else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--packages", type=int, default=20000,
                        help="packages already in the repository (default 20000)")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed one-package updates per system (default 5)")
    parser.add_argument("--full-runs", type=int, default=3,
                        help="timed full index builds per system (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.packages < 1 or args.runs < 1 or args.full_runs < 1:
        parser.error("--packages, --runs and --full-runs must be at least 1")
    for tool in ("apt-ftparchive", "reprepro", "dpkg-deb"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing (apt-get install apt-utils reprepro dpkg-dev)")

    with bc.temporary_folder("pkgfarm-bench-index-", keep=args.keep) as work:
        return run_benchmark(work, args)


def run_benchmark(work: Path, args: argparse.Namespace) -> int:
    n = args.packages
    archive = work / "archive"
    bc.log(f"generating {n} .deb files under {archive}/pool")
    start = time.perf_counter()
    # File creation is latency-bound on some virtual disks; threads overlap it.
    with ThreadPoolExecutor(16) as pool:
        generated = list(pool.map(lambda i: Generated(archive, package_name(i)), range(n)))
    records = [g.record() for g in generated]
    bc.log(f"  done in {time.perf_counter() - start:.1f} s; checking samples with dpkg-deb")
    check_samples(generated, records)

    # pkgfarm: a fresh store with every archive recorded.
    data_dir = work / "pkgfarm"
    store = Store(data_dir / "state.db")
    storage = LocalStorage(data_dir / "repo")
    settings = settings_from_dict({
        "master": {"data_dir": str(data_dir)},
        "repository": {"suite": SUITE, "component": COMPONENT, "architectures": [ARCH]},
    })
    writer = IndexWriter(IndexContext(settings, store, storage, None))
    store_time = bc.timed(lambda: store.packages.add(records))
    bc.log(f"recorded {n} packages in the store in {store_time:.1f} s")
    repository = Repository(settings, store, storage=storage)
    pkg_dir = data_dir / "repo" / "dists" / SUITE / COMPONENT / f"binary-{ARCH}"

    aft = AptFtparchive(archive, work)
    rep = Reprepro(work / "reprepro")

    # Full builds, interleaved: pkgfarm write(full=True) vs apt-ftparchive with an empty cache.
    full_pkgfarm, full_aft = [], []
    for i in range(args.full_runs):
        bc.log(f"full build {i + 1}/{args.full_runs}")
        full_pkgfarm.append(bc.timed(lambda: index_update(store, writer, full=True)))
        aft.drop_cache()
        full_aft.append(bc.timed(aft.publish))
    check_index(pkg_dir, n, "pkgfarm full build")
    check_index(aft.packages_dir(), n, "apt-ftparchive full build")
    # The last cold run filled the cache; one more run is the "warm" state's first use.
    warm_first = bc.timed(aft.publish)

    bc.log(f"reprepro: including {n} archives (not timed per package)")
    include_time = bc.timed(lambda: rep.include_many([g.path for g in generated]))
    bc.log(f"  done in {include_time:.1f} s; exporting")
    rep_export = bc.timed(lambda: rep.cmd("export", SUITE))
    check_index(rep.packages_dir(), n, "reprepro export")

    # One new package per run, the same new archive for every system.
    t_index, t_read, t_accept, t_aft, t_rep = [], [], [], [], []
    new_dir = work / "new"
    for i in range(args.runs):
        bc.log(f"one-package update {i + 1}/{args.runs}")
        new = Generated(archive, package_name(i, "znew"))  # lands in the apt-ftparchive pool
        copy = new_dir / new.key.rsplit("/", 1)[1]
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(new.data)

        # pkgfarm: reading the archive is what accept_upload does before the index work.
        read_time = bc.timed(lambda copy=copy, new=new: read_new_archive(copy, new.key))
        rec = new.record()
        t_index.append(bc.timed(lambda rec=rec: (store.packages.add([rec]),
                                                 index_update(store, writer))))
        t_read.append(read_time)

        # pkgfarm as a whole, with another new archive (a name of its own).
        other = bc.deb_bytes(bc.control_text(package_name(i, "ynew"), VERSION, ARCH))
        other_name = debian.deb_filename(package_name(i, "ynew"), VERSION, ARCH)
        sha = bc.digests_of(other)[3]
        t_accept.append(bc.timed(lambda other=other, other_name=other_name, sha=sha: (
            repository.accept_upload(io.BytesIO(other), other_name, sha, uploader="bench",
                                     content_length=len(other)))))

        t_aft.append(bc.timed(aft.publish))
        t_rep.append(bc.timed(lambda copy=copy: rep.cmd("includedeb", SUITE, copy)))

    check_index(pkg_dir, n + 2 * args.runs, "pkgfarm after the updates")
    check_index(aft.packages_dir(), n + args.runs, "apt-ftparchive after the updates")
    check_index(rep.packages_dir(), n + args.runs, "reprepro after the updates")
    plain_size = (pkg_dir / "Packages").stat().st_size

    index_med = bc.median(t_index)
    with_read = [a + b for a, b in zip(t_index, t_read, strict=True)]
    print()
    print(f"# index_update: one new package into a repository of {n} packages")
    print(f"machine: {bc.machine_summary()}")
    print(f"Packages: {plain_size / 1e6:.1f} MB plain, {GROUPS} pkgfarm groups; "
          f"{args.runs} runs per system, interleaved; median (min … max)")
    print()
    rows = [
        ["pkgfarm: record 1 package + incremental index write",
         bc.fmt_seconds(index_med), _spread(t_index), "1.0x (reference)"],
        ["pkgfarm: the same + reading the new .deb (inspect, hashes, entry)",
         bc.fmt_seconds(bc.median(with_read)), _spread(with_read),
         f"{bc.median(with_read) / index_med:.1f}x of the reference"],
        ["pkgfarm: Repository.accept_upload, whole (no HTTP)",
         bc.fmt_seconds(bc.median(t_accept)), _spread(t_accept),
         f"{bc.median(t_accept) / index_med:.1f}x of the reference"],
        ["apt-ftparchive generate + release, warm cache",
         bc.fmt_seconds(bc.median(t_aft)), _spread(t_aft),
         f"pkgfarm {ratio(bc.median(t_aft), index_med)} faster"],
        ["reprepro includedeb (exports .gz, .xz, Release)",
         bc.fmt_seconds(bc.median(t_rep)), _spread(t_rep),
         f"pkgfarm {ratio(bc.median(t_rep), index_med)} faster"],
    ]
    print(bc.table(["one new package", "median", "min … max", "ratio"], rows))
    print()
    full_med = bc.median(full_pkgfarm)
    rows = [
        ["pkgfarm: full index write", bc.fmt_seconds(full_med),
         _spread(full_pkgfarm), "1.0x (reference)"],
        ["apt-ftparchive generate + release, empty cache", bc.fmt_seconds(bc.median(full_aft)),
         _spread(full_aft), f"pkgfarm {ratio(bc.median(full_aft), full_med)} faster"],
        ["apt-ftparchive generate + release, warm cache, nothing new",
         bc.fmt_seconds(warm_first), "1 run", f"pkgfarm {ratio(warm_first, full_med)} faster"],
        ["reprepro export (all already in its database)", bc.fmt_seconds(rep_export), "1 run",
         f"pkgfarm {ratio(rep_export, full_med)} faster"],
    ]
    print(bc.table([f"full index of {n}", "median", "min … max", "ratio"], rows))
    print()
    aft_ratio = bc.median(t_aft) / index_med
    rep_ratio = bc.median(t_rep) / index_med
    print(f"goal: >= 5x faster than apt-ftparchive (warm): {aft_ratio:.1f}x -> "
          f"{'met' if aft_ratio >= 5 else 'NOT met'}")
    print(f"goal: faster than reprepro: {rep_ratio:.1f}x -> "
          f"{'met' if rep_ratio > 1 else 'NOT met'}")
    print(f"(set-up: recording {n} rows in the Store {store_time:.1f} s; reprepro includedeb of "
          f"{n} archives in batches of 1000 without export {include_time:.1f} s)")
    return 0


def _spread(samples: list[float]) -> str:
    return f"{bc.fmt_seconds(min(samples))} … {bc.fmt_seconds(max(samples))}"


if __name__ == "__main__":
    sys.exit(main())
