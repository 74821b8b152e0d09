"""Getting a Debian source package onto the worker and building it with dpkg-buildpackage.

`fetch` turns a `DebianSource` into an unpacked source tree in ``dest``:

- apt: ``apt-get source --download-only NAME=VERSION`` in a throwaway apt state with the
  source's deb-src lines (apt checks every file against the signed index), then
  ``dpkg-source -x``;
- a .dsc by URL: the .dsc (checked against the sha256 the master read) and each file it
  lists, downloaded from beside it and checked against its Checksums-Sha256, then
  ``dpkg-source -x``;
- a local .dsc: the same files, from the snapshot's ``files/`` folder, checked the same way;
- git: the tree the snapshot carries, or ``git clone --depth 1`` of the commit the master read.

``dpkg-source -x`` runs with ``--no-check``: each file has been checked against a sha256 that
came from a signed apt index or from the .dsc the master read, and an OpenPGP check of the
.dsc's signature would need the uploader's key, which a build farm does not have. A signed
index vouches only for where the files came from, not for what they hold, so before
dpkg-source runs (as the worker's user, often root) every tarball the .dsc lists is checked
member by member with the rules of `common.tarballs` (`check_source_tarballs`): one it cannot
read, or whose compression it does not know, is refused too.

`build_source` installs the build dependencies inside the build environment and runs
``dpkg-buildpackage -us -uc`` there: ``-B`` for an architecture's job, ``-A`` for the ``all``
job, ``-b`` when the source makes only one kind of binary. The archives and the .buildinfo (a
by-product, kept with the build) are collected from the tree's parent folder.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO

import requests
from debian.deb822 import Deb822

from common import arch as archmod
from common.digests import sha256_file
from common.errors import BuildFailed, DefinitionError, NotFound, PkgfarmError, UnsafeArchive
from common.formats.deb.apt import AptState
from common.formats.deb.policy import strip_epoch
from common.formats.deb.source import (
    GIT_TREE_FILE,
    DebianSource,
    dsc_checksums,
    dsc_file_names,
    git_url,
)
from common.git import GitFailed, run_git
from common.tarballs import check_tarball, safe_extract
from worker.environment import BuildEnvironment
from worker.environment.processes import PATH, give_to, run_process, take_tree
from worker.formats import BuildResult

#: apt-get update of a shared download state at most this often (seconds).
UPDATE_INTERVAL = 15 * 60


def _check(path: Path, sha256: str, size: int | None = None) -> None:
    if size is not None and path.stat().st_size != size:
        raise BuildFailed(f"{path.name}: {path.stat().st_size} bytes, but the .dsc says {size}")
    actual = sha256_file(path)
    if actual != sha256:
        raise BuildFailed(f"{path.name}: sha256 {actual} does not match the expected {sha256}")


def _note(out: IO[str], message: str) -> None:
    out.write(f"pkgfarm: {message}\n")
    out.flush()


def fetch(src: DebianSource, dest: Path, out: IO[str], local_files: Path | None = None, *,
          state_dir: Path | None = None, update_interval: float = UPDATE_INTERVAL,
          timeout: float = 1800, cancel: threading.Event | None = None) -> Path:
    """The unpacked source tree of ``src``, made in ``dest`` (which also gets the .dsc and its
    files, and later the built archives).

    ``local_files`` is the snapshot's ``files/`` folder (a local .dsc or git tree).
    ``state_dir`` is where the apt state of apt sources lives: a folder kept between builds
    (its indexes are fetched at most once per ``update_interval``), by default a throwaway one
    in ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if src.origin == "git":
        tree = _fetch_git(src, dest, out, local_files, timeout)
    else:
        if src.origin == "apt":
            dsc = _download_apt(src, dest, out, state_dir or dest / ".apt", update_interval,
                                timeout)
        elif local_files is not None:
            dsc = _copy_local(src, dest, local_files)
        else:
            dsc = _download_dsc(src, dest, out, timeout)
        tree = dest / f"{src.name}-{src.upstream_version}"
        checked = check_source_tarballs(dsc)
        _note(out, f"checked {', '.join(checked) or 'no tarball'} before dpkg-source: no "
                   "member leads outside its tarball or carries privileges")
        run_process(["dpkg-source", "--no-check", "--no-copy", "-x", str(dsc), str(tree)],
                    cwd=dest, env={"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": str(dest)},
                    timeout=timeout, out=out, cancel=cancel, what="dpkg-source -x")
    if not (tree / "debian" / "control").is_file():
        raise BuildFailed(f"{src.name} {src.version}: the unpacked source has no "
                          "debian/control")
    _note(out, f"fetched {src.name} {src.version} ({src.origin}) in "
               f"{time.monotonic() - start:.1f} s")
    return tree


def _download_apt(src: DebianSource, dest: Path, out: IO[str], state_dir: Path,
                  update_interval: float, timeout: float) -> Path:
    if not src.apt_lines:
        raise BuildFailed(f"{src.name}: no apt sources to download it from")
    state = AptState(state_dir, list(src.apt_lines))
    updated = state.update_if_older(update_interval, timeout=timeout)
    spec = f"{src.name}={src.version}"
    _note(out, f"downloading {spec} with apt-get source")
    for attempt in range(2):
        try:
            result = state.run("source", "--download-only", "--only-source", spec, cwd=dest,
                               timeout=timeout)
            out.write(result.stdout)
            break
        except NotFound as exc:
            if attempt == 1 or updated:
                raise BuildFailed(f"apt has no source package {spec} any more: "
                                  f"{exc.message}") from None
            state.update(timeout=timeout)  # the lists may predate it: once more, fresh
        except PkgfarmError as exc:
            raise BuildFailed(f"apt-get source {spec} failed: {exc.message}") from None
    dsc = dest / f"{src.name}_{strip_epoch(src.version)}.dsc"
    if not dsc.is_file():
        raise BuildFailed(f"apt-get source {spec} did not give {dsc.name}")
    return dsc


def _dsc_files(dsc: Path) -> list[tuple[str, str, int]]:
    try:
        files = dsc_checksums(Deb822(dsc.read_text(errors="replace")))
    except DefinitionError as exc:
        raise BuildFailed(f"{dsc.name}: {exc.message}") from None
    if not files:
        raise BuildFailed(f"{dsc.name} has no Checksums-Sha256 field")
    return files


#: A tarball's name in a .dsc, and its compression (none for a plain .tar).
_TARBALL = re.compile(r"\.tar(?:\.([^./]+))?$")
#: The tarfile mode for each compression dpkg-source reads (lzma-alone files open as xz).
_TAR_MODES = {None: "r:", "gz": "r:gz", "bz2": "r:bz2", "xz": "r:xz", "lzma": "r:xz"}


def check_source_tarballs(dsc: Path) -> list[str]:
    """Check every tarball ``dsc`` lists (the upstream one, the debian one, components), in
    the .dsc's folder, member by member as `common.tarballs.safe_extract` would, before
    dpkg-source unpacks them; the names checked. `BuildFailed` naming the tarball and the
    member for one refused, for one missing, and for a compression the worker cannot read."""
    try:
        names = dsc_file_names(Deb822(dsc.read_text(errors="replace")))
    except DefinitionError as exc:
        raise BuildFailed(f"{dsc.name}: {exc.message}") from None
    checked = []
    for name in names:
        match = _TARBALL.search(name)
        if match is None:
            continue
        mode = _TAR_MODES.get(match.group(1))
        if mode is None:
            raise BuildFailed(
                f"{dsc.name} lists {name}, compressed with {match.group(1)!r}, which the worker "
                f"cannot check before unpacking; refused (known: gz, bz2, xz, lzma)")
        path = dsc.parent / name
        if not path.is_file():
            raise BuildFailed(f"{dsc.name} lists {name}, which is not beside it")
        try:
            check_tarball(path, mode)
        except UnsafeArchive as exc:
            raise BuildFailed(f"{name} is refused before dpkg-source unpacks it: "
                              f"{exc.message}") from None
        checked.append(name)
    return checked


def _copy_local(src: DebianSource, dest: Path, local_files: Path) -> Path:
    dscs = sorted(local_files.glob("*.dsc"))
    if len(dscs) != 1:
        raise BuildFailed(f"the snapshot of {src.name} holds {len(dscs)} .dsc files, not one")
    dsc = dscs[0]
    if src.dsc_sha256:
        _check(dsc, src.dsc_sha256)
    shutil.copyfile(dsc, dest / dsc.name)
    for name, sha256, size in _dsc_files(dsc):
        source = local_files / name
        if not source.is_file():
            raise BuildFailed(f"the snapshot of {src.name} lacks {name}")
        shutil.copyfile(source, dest / name)
        _check(dest / name, sha256, size)
    return dest / dsc.name


def _download(url: str, target: Path, timeout: float) -> None:
    try:
        with requests.get(url, stream=True, timeout=min(timeout, 120)) as response:
            if response.status_code != 200:
                raise BuildFailed(f"{url}: HTTP {response.status_code}")
            with open(target, "wb") as fh:
                for block in response.iter_content(1024 * 1024):
                    fh.write(block)
    except requests.RequestException as exc:
        raise BuildFailed(f"{url}: cannot download: {exc}") from exc


def _download_dsc(src: DebianSource, dest: Path, out: IO[str], timeout: float) -> Path:
    url = src.location
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])
    if not name.endswith(".dsc") or "/" in name:
        raise BuildFailed(f"{url} does not name a .dsc")
    dsc = dest / name
    _note(out, f"downloading {url}")
    _download(url, dsc, timeout)
    if src.dsc_sha256:
        try:
            _check(dsc, src.dsc_sha256)
        except BuildFailed:
            raise BuildFailed(f"{url} changed since the build was queued (its sha256 is not "
                              "the one the master read)") from None
    for file_name, sha256, size in _dsc_files(dsc):
        file_url = urllib.parse.urljoin(url, urllib.parse.quote(file_name))
        _note(out, f"downloading {file_url} ({size} bytes)")
        _download(file_url, dest / file_name, timeout)
        _check(dest / file_name, sha256, size)
    return dsc


def _git(args: list[str], cwd: Path, out: IO[str], timeout: float) -> str:
    try:
        text = run_git(*args, cwd=cwd, timeout=timeout, home=cwd).decode(errors="replace")
    except GitFailed as exc:
        raise BuildFailed(exc.message) from None
    out.write(text)
    return text


def _fetch_git(src: DebianSource, dest: Path, out: IO[str], local_files: Path | None,
               timeout: float) -> Path:
    tree = dest / f"{src.name}-{src.upstream_version}"
    shipped = local_files / GIT_TREE_FILE if local_files is not None else None
    if shipped is not None and shipped.is_file():
        _note(out, f"unpacking the git tree of {src.name} from the snapshot "
                   f"(commit {src.revision[:12]})")
        try:
            safe_extract(shipped, tree)
        except UnsafeArchive as exc:
            raise BuildFailed(f"the git tree of {src.name}: {exc.message}") from None
        return tree
    url, branch = git_url(src.location)
    if "://" not in url and ":" not in url.split("/", 1)[0]:
        url = f"file://{Path(url).resolve()}"
    branch = src.branch or branch
    _note(out, f"cloning {url}{' (' + branch + ')' if branch else ''}")
    args = ["clone", "--quiet", "--depth", "1", *(["--branch", branch] if branch else []),
            url, str(tree)]
    _git(args, dest, out, timeout)
    if src.revision:
        head = _git(["rev-parse", "HEAD"], tree, out, timeout).strip()
        if head != src.revision:
            try:
                _git(["fetch", "--quiet", "--depth", "1", "origin", src.revision], tree, out,
                     timeout)
                _git(["checkout", "--quiet", src.revision], tree, out, timeout)
            except BuildFailed as exc:
                raise BuildFailed(f"{url} moved on from commit {src.revision[:12]} (the one "
                                  f"the build was queued with), which cannot be fetched: "
                                  f"{exc.message}") from None
    return tree


# -- building ----------------------------------------------------------------------------------


def binary_kinds(srcdir: Path) -> tuple[bool, bool]:
    """(makes arch-specific binaries, makes arch-independent ones), from debian/control."""
    text = (srcdir / "debian" / "control").read_text(errors="replace")
    paragraphs = list(Deb822.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False))
    has_arch = has_indep = False
    for para in paragraphs[1:]:
        if "Package" not in para:
            continue
        words = para.get("Architecture", "any").split()
        has_indep |= archmod.ALL in words
        has_arch |= any(w != archmod.ALL for w in words)
    return has_arch, has_indep


def build_source(srcdir: Path, arch: str, env: BuildEnvironment, out: IO[str],
                 timeout: float, cancel: threading.Event | None = None, *,
                 parallel: int | None = None, run_tests: bool = True,
                 extra_options: str = "") -> BuildResult:
    """Build the unpacked Debian source ``srcdir`` (a folder of the environment's area) for
    ``arch`` (``all``: its arch-independent binaries) in ``env``: its build dependencies are
    installed as root, then dpkg-buildpackage runs as a build step (the build user, fakeroot,
    offline). The archives are collected from the source's parent folder once the worker has
    taken it out of the area; only regular files count, never links.

    ``timeout`` covers installing the build dependencies and the build. ``DEB_BUILD_OPTIONS``
    gets ``parallel=N`` (default: the machine's cores), ``noautodbgsym`` (debug symbol
    packages are not what the farm publishes), ``nocheck`` unless ``run_tests``, and
    ``extra_options``.
    """
    srcdir = Path(srcdir).resolve()
    has_arch, has_indep = binary_kinds(srcdir)
    if arch == archmod.ALL:
        if not has_indep:
            raise BuildFailed(f"{srcdir.name} makes no architecture-independent package")
        flag, indep = ("-A", True) if has_arch else ("-b", None)
    else:
        if not has_arch:
            raise BuildFailed(f"{srcdir.name} makes only architecture-independent packages; "
                              "build it as all")
        if env.arch != arch:
            raise BuildFailed(f"this environment runs {env.arch} programs; it cannot build "
                              f"{srcdir.name} for {arch}")
        flag, indep = ("-B", False) if has_indep else ("-b", None)
    deadline = time.monotonic() + timeout
    parent = srcdir.parent
    with env:
        env.build_dep(srcdir, out, indep)
        options = [f"parallel={parallel or os.cpu_count() or 1}", "noautodbgsym"]
        if not run_tests:
            options.append("nocheck")
        options.extend(extra_options.split())
        variables = {
            "PATH": PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(env.area / "home"), "TMPDIR": str(env.area / "tmp"),
            "DEB_BUILD_OPTIONS": " ".join(options), "DEBIAN_FRONTEND": "noninteractive",
        }
        if env.build_uid is not None:
            give_to(parent, env.build_uid)
        before = set(os.listdir(parent))
        _note(out, f"dpkg-buildpackage {flag} of {srcdir.name} for {arch}")
        remaining = max(deadline - time.monotonic(), 1.0)
        env.run(["dpkg-buildpackage", "-us", "-uc", flag], srcdir, variables, remaining, out,
                cancel, what="dpkg-buildpackage")
        taken = take_tree(parent, env.private / "pack" / parent.name, env.build_uid)
    made = [taken / name for name in sorted(set(os.listdir(taken)) - before)
            if stat.S_ISREG(os.lstat(taken / name).st_mode)]
    archives = [p for p in made if p.suffix == ".deb"]
    if not archives:
        raise BuildFailed(f"dpkg-buildpackage {flag} made no .deb")
    # The .buildinfo is kept with the build; the .changes, which only an upload to a Debian
    # archive reads, is not.
    by_products = tuple(p for p in made if p.suffix == ".buildinfo")
    for archive in archives:
        _note(out, f"built {archive.name} ({archive.stat().st_size} bytes)")
    return BuildResult(archives=archives, by_products=by_products)
