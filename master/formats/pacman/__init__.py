"""pacman's format on the master: ``.pkg.tar.zst`` uploads, the pool, and signed databases.

Layout under ``/repo/``: the pool at ``pacman/pool/<component>/<pkgbase>/<file>``, and per
suite, component and architecture (pacman's names: x86_64, aarch64, ...) a repository root
``pacman/<suite>/<component>/<arch>/`` with ``<repo>.db``, ``<repo>.files`` and their ``.sig``
(see `index`). pacman downloads each package as ``<Server>/<%FILENAME%>``, that is through the
repository root; `archive_alias` names the suite and file of such a path, and the master
answers it with a redirect to the pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from common.formats.pacman import EXTENSION, PACMAN
from master.formats import ArchiveInfo, Digests, IndexContext
from master.formats.pacman import archive
from master.formats.pacman.index import IndexWriter, newest, repo_name, repo_root
from master.signing import KEY_FILE

if TYPE_CHECKING:
    from common.config import Settings
    from master.signing import Signer
    from master.store import IndexKey, PackageRecord

DATABASE_SUFFIXES = (".db", ".db.sig", ".files", ".files.sig")


class PacmanRepository:
    format = PACMAN

    def is_auxiliary(self, filename: str) -> bool:
        return False

    def inspect(self, path: Path) -> ArchiveInfo:
        return archive.inspect(path)

    def pool_path(self, info: ArchiveInfo, component: str) -> str:
        return archive.pool_path(info, component)

    def index_entry(self, info: ArchiveInfo, pool_path: str, digests: Digests) -> str:
        return archive.index_entry(info, pool_path, digests)

    def indexed(self, records: Iterable[PackageRecord], arch: str) -> list[PackageRecord]:
        return newest(records, arch)

    def write_index(self, ctx: IndexContext, dirty: set[IndexKey], full: bool) -> None:
        IndexWriter(ctx).write(dirty, full)

    def _database(self, key: str) -> bool:
        parts = key.split("/")
        return (len(parts) == 5 and parts[0] == "pacman" and parts[1] != "pool"
                and parts[4].endswith(DATABASE_SUFFIXES))

    def companions(self, pool_path: str) -> tuple[str, ...]:
        """The package's detached signature, written beside it once a database lists it
        (see `index`); it stays while the archive does, also after newer versions took its
        place in the databases."""
        return (f"{pool_path}.sig",)

    def changes_in_place(self, key: str) -> bool:
        return self._database(key)

    def copy_rank(self, key: str) -> int | None:
        """The pool and the packages' signatures first, then the files databases, then the
        package databases."""
        if key.startswith("pacman/pool/"):
            return 0
        if not self._database(key):
            return None
        return 1 if ".files" in key.rsplit("/", 1)[1] else 2

    def archive_alias(self, key: str) -> tuple[str, str] | None:
        """(suite, file name) for ``pacman/<suite>/<component>/<arch>/<archive>``: a package
        as pacman asks for it, through its repository root."""
        parts = key.split("/")
        if len(parts) != 5 or parts[0] != "pacman" or parts[1] == "pool":
            return None
        filename = parts[4]
        if not filename.endswith(EXTENSION):
            return None
        try:
            named = PACMAN.parse_archive_filename(filename)
        except ValueError:
            return None
        if PACMAN.arch_name(named.arch) not in (parts[3], "any"):
            return None
        return parts[1], filename

    def client_config(self, base_url: str, settings: Settings, signer: Signer | None,
                      suite: str | None = None) -> dict[str, str]:
        repo = settings.repository
        suite = suite or repo.suite
        base = base_url.rstrip("/")
        name = repo_name(suite, repo.component, repo.component)
        server = f"{base}/{repo_root(suite, repo.component, '$arch')}"
        level = "Required" if signer is not None else "Optional TrustAll"
        config = {"url": f"{server}/", "repo": name,
                  "db_url": f"{server}/{name}.db",
                  "snippet": f"[{name}]\nSigLevel = {level}\nServer = {server}\n",
                  "file": "/etc/pacman.conf"}
        if signer is not None:
            config["key_url"] = f"{base}/{KEY_FILE}"
            config["key_steps"] = (
                f"curl -fsSL -o pkgfarm.gpg {base}/{KEY_FILE} && pacman-key --add pkgfarm.gpg "
                f"&& pacman-key --lsign-key {signer.fingerprint}")
            config["setup"] = (f"curl -fsSL -o pkgfarm.gpg {base}/{KEY_FILE}\n"
                               "sudo pacman-key --add pkgfarm.gpg\n"
                               f"sudo pacman-key --lsign-key {signer.fingerprint}")
        return config


PACMAN_REPOSITORY = PacmanRepository()
