"""Resolving a reference to a Debian source package, to plan and snapshot a build of it.

The master uses it to plan builds; `worker package-add NAME --now` uses it to build here.

A reference is one of:

- a source package name (``hello``): looked up with ``apt-cache showsrc`` in a throwaway apt
  state under ``state_dir``, with ``Settings.debian_sources`` or, when that is empty, this
  machine's own sources as deb-src; the highest version wins (Debian version ordering). The
  indexes are fetched at most once per ``update_interval`` seconds;
- a .dsc by URL (``http(s)://…/hello_2.10-3.dsc``): downloaded and read; the worker fetches
  the files it lists from beside it and checks them against its Checksums-Sha256;
- a local .dsc (``/srv/src/hello_2.10-3.dsc``): read with its files, which travel in the
  snapshot (checked against the .dsc's Checksums-Sha256 here);
- a git repository (``git+https://…``, ``…/x.git``, ``…/x.git#branch``, or a local folder that
  holds debian/control and debian/changelog): cloned (``--depth 1``) to read the newest
  changelog entry and debian/control; the worker clones the same commit. A local repository
  travels in the snapshot (``git archive`` of its HEAD), so workers elsewhere can build it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import requests
from debian.deb822 import Dsc, Sources
from debian.debian_support import Version

from common.config import Settings
from common.errors import BadRequest, DefinitionError, NotFound, PkgfarmError, Unavailable
from common.formats.deb import policy
from common.formats.deb.apt import AptState, machine_deb_src_lines
from common.formats.deb.source import (
    GIT_TREE_FILE,
    DebianSource,
    dsc_checksums,
    git_url,
    source_from_control,
    source_from_debian_dir,
)
from common.git import GitFailed, git_text, run_git

log = logging.getLogger(__name__)

#: apt-get update of the lookup state at most this often (seconds).
UPDATE_INTERVAL = 15 * 60
#: A .dsc is a small text; anything larger is refused.
MAX_DSC_BYTES = 1024 * 1024


def resolve(ref: str, settings: Settings, state_dir: Path,
            update_interval: float = UPDATE_INTERVAL) -> DebianSource:
    """What ``ref`` names; NotFound when it names nothing (see the module's text)."""
    return resolve_with_files(ref, settings, state_dir, update_interval)[0]


def resolve_with_files(ref: str, settings: Settings, state_dir: Path,
                       update_interval: float = UPDATE_INTERVAL
                       ) -> tuple[DebianSource, dict[str, bytes]]:
    """`resolve`, plus the files the snapshot must carry (a local .dsc and its files, or a local
    git repository's tree); empty for the others."""
    ref = ref.strip()
    kind = reference_kind(ref)
    if kind == "dsc-url":
        return resolve_dsc_url(ref), {}
    if kind == "dsc-path":
        return resolve_dsc_path(Path(ref))
    if kind == "git":
        return resolve_git(ref)
    return resolve_apt(ref, settings, state_dir, update_interval), {}


def reference_kind(ref: str) -> str:
    """``dsc-url``, ``dsc-path``, ``git`` or ``apt`` (a package name)."""
    plain = ref.split("#", 1)[0]
    if plain.startswith("git+") or plain.endswith(".git") or plain.endswith(".git/"):
        return "git"
    if plain.endswith(".dsc"):
        return "dsc-url" if plain.startswith(("http://", "https://")) else "dsc-path"
    if "/" in plain or plain.startswith("."):
        return "git"
    return "apt"


# -- apt ---------------------------------------------------------------------------------------


def lookup_state(settings: Settings, state_dir: Path) -> AptState:
    lines = list(settings.debian_sources) or machine_deb_src_lines(
        keyring_dir=state_dir / "keyrings")
    if not lines:
        raise Unavailable("no Debian sources to look source packages up in: set "
                          "debian_sources or give this machine an apt source")
    return AptState(state_dir, lines)


def resolve_apt(name: str, settings: Settings, state_dir: Path,
                update_interval: float = UPDATE_INTERVAL) -> DebianSource:
    missing = NotFound(f"no package definition and no Debian source package named {name!r}",
                       package=name)
    if not policy.PACKAGE_NAME_RE.fullmatch(name):
        raise missing
    state = lookup_state(settings, state_dir)
    try:
        state.update_if_older(update_interval)
    except Unavailable as exc:
        if state.age() is None:
            raise
        # The mirror is unreachable right now: the indexes fetched before still answer.
        log.warning("Debian source indexes not updated (%s); using the ones from %.0f s ago",
                    exc.message, state.age())
    try:
        result = state.cache("showsrc", "--only-source", name)
    except NotFound:
        raise missing from None
    stanzas = [s for s in Sources.iter_paragraphs(result.stdout.splitlines(keepends=True),
                                                  use_apt_pkg=False)
               if s.get("Package") == name and s.get("Version")]
    if not stanzas:
        raise missing
    best = max(stanzas, key=lambda s: Version(s["Version"]))
    return source_from_control(best, origin="apt", apt_lines=state.lines)


# -- .dsc --------------------------------------------------------------------------------------


def _parse_dsc(data: bytes, where: str) -> Dsc:
    try:
        dsc = Dsc(data.decode("utf-8", "replace"))
    except Exception as exc:  # python-debian raises a variety of errors on garbage
        raise DefinitionError(f"{where}: not a .dsc: {exc}", file=where) from exc
    if not dsc.get("Source") or not dsc.get("Version") or not dsc_checksums(dsc):
        raise DefinitionError(f"{where}: not a .dsc (it needs Source, Version and "
                              "Checksums-Sha256)", file=where)
    return dsc


def resolve_dsc_url(url: str, timeout: float = 60) -> DebianSource:
    try:
        with requests.get(url, timeout=timeout, stream=True) as response:
            if response.status_code == 404:
                raise NotFound(f"{url}: not found (404)")
            if response.status_code != 200:
                raise Unavailable(f"{url}: HTTP {response.status_code}")
            data = response.raw.read(MAX_DSC_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise Unavailable(f"{url}: cannot download: {exc}") from exc
    if len(data) > MAX_DSC_BYTES:
        raise BadRequest(f"{url}: larger than {MAX_DSC_BYTES} bytes; not a .dsc")
    dsc = _parse_dsc(data, url)
    return source_from_control(dsc, origin="dsc", location=url,
                               dsc_sha256=hashlib.sha256(data).hexdigest())


def resolve_dsc_path(path: Path) -> tuple[DebianSource, dict[str, bytes]]:
    path = path.expanduser().resolve()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such .dsc") from None
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read: {exc.strerror}") from exc
    dsc = _parse_dsc(data, str(path))
    src = source_from_control(dsc, origin="dsc", location=str(path),
                              dsc_sha256=hashlib.sha256(data).hexdigest())
    files = {path.name: data}
    for name, sha256, size in src.files:
        try:
            content = (path.parent / name).read_bytes()
        except OSError:
            raise NotFound(f"{path}: the file it lists, {name}, is not beside it") from None
        if len(content) != size or hashlib.sha256(content).hexdigest() != sha256:
            raise DefinitionError(f"{path}: {name} does not match its Checksums-Sha256 entry",
                                  file=str(path))
        files[name] = content
    return src, files


# -- git ---------------------------------------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> str:
    """git, with a failure reported as the reference naming nothing usable."""
    try:
        return git_text(*args, cwd=cwd)
    except GitFailed as exc:
        raise NotFound(exc.message) from None


def resolve_git(ref: str) -> tuple[DebianSource, dict[str, bytes]]:
    url, branch = git_url(ref)
    local = None
    if "://" not in url and ":" not in url.split("/", 1)[0]:
        local = Path(url).expanduser().resolve()
        if not local.is_dir():
            raise NotFound(f"no package definition, no Debian source package and no folder "
                           f"named {ref!r}")
        try:
            git_text("-C", str(local), "rev-parse", "--git-dir")
        except GitFailed:
            if (local / "debian" / "control").is_file():
                raise DefinitionError(f"{local}: not a git repository (commit the tree to "
                                      "git, or build it from a .dsc)", file=str(local)) from None
            raise NotFound(f"no package definition, no Debian source package and no Debian "
                           f"source tree at {ref!r}") from None
        url = str(local)
    with tempfile.TemporaryDirectory(prefix="pkgfarm-git-") as tmp:
        tree = Path(tmp) / "tree"
        clone_url = f"file://{url}" if local is not None else url
        args = ["clone", "--quiet", "--depth", "1"]
        if branch:
            args += ["--branch", branch]
        _git(*args, clone_url, str(tree))
        revision = _git("rev-parse", "HEAD", cwd=tree).strip()
        control, changelog = tree / "debian" / "control", tree / "debian" / "changelog"
        if not control.is_file() or not changelog.is_file():
            raise DefinitionError(f"{ref}: the repository has no debian/control and "
                                  "debian/changelog", file=ref)
        src = source_from_debian_dir(control.read_text(errors="replace"),
                                     changelog.read_text(errors="replace"),
                                     origin="git", location=url, revision=revision,
                                     branch=branch)
        files: dict[str, bytes] = {}
        if local is not None:
            try:
                files[GIT_TREE_FILE] = run_git("archive", "--format=tar", revision, cwd=tree)
            except GitFailed as exc:
                raise PkgfarmError(f"git archive of {url} failed: {exc.message}") from None
    return src, files
