"""RPM on the master: .rpm uploads, the pool, and a signed rpm-md repository per suite.

Layout under ``/repo/`` (see `index` for the details):

- ``rpm/pool/<component>/<letter>/<source>/<name>-<version>-<release>.<arch>.rpm``: the pool,
  shared by every suite;
- ``rpm/<suite>/repodata/repomd.xml``, ``repomd.xml.asc`` and the
  ``<sha256>-{primary,filelists,other}.xml.gz`` files it names: the suite's repository, which
  dnf reads with ``baseurl=<farm>/repo/rpm/<suite>/``;
- ``rpm/<suite>/packages/<file>``: how the suite's metadata names each archive; the master
  answers it with a redirect to the pool file (`archive_alias`), 404 if the suite does not
  hold it;
- ``rpm/RPM-GPG-KEY-pkgfarm``: the farm's public key, armoured, for dnf's ``gpgkey``.

Packages themselves are not signed: repomd.xml is (``repo_gpgcheck=1``), and the metadata it
vouches for holds each package's sha256, which dnf checks on download. So the .repo file says
``gpgcheck=0`` (package signatures) and ``repo_gpgcheck=1``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from common.formats.rpm import RPM, policy
from master.formats import ArchiveInfo, Digests, IndexContext
from master.formats.rpm import archive
from master.formats.rpm.index import KEY_FILE, IndexWriter, newest

if TYPE_CHECKING:
    from common.config import Settings
    from master.signing import Signer
    from master.store import IndexKey, PackageRecord


class RpmRepository:
    format = RPM

    def is_auxiliary(self, filename: str) -> bool:
        return False  # rpmbuild -bb makes only the archive

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

    def companions(self, pool_path: str) -> tuple[str, ...]:
        return ()

    def changes_in_place(self, key: str) -> bool:
        return key == KEY_FILE or (key.startswith("rpm/") and key.endswith(
            ("/repodata/repomd.xml", "/repodata/repomd.xml.asc")))

    def copy_rank(self, key: str) -> int | None:
        """The pool and the key first, then the data files, then each repomd.xml, and its
        signature last."""
        if not key.startswith("rpm/"):
            return None
        if key.startswith("rpm/pool/") or key == KEY_FILE:
            return 0
        if key.endswith("/repodata/repomd.xml"):
            return 2
        if key.endswith("/repodata/repomd.xml.asc"):
            return 3
        return 1

    def archive_alias(self, key: str) -> tuple[str, str] | None:
        """(suite, file name) for ``rpm/<suite>/packages/<file>``, the name a suite's metadata
        gives an archive of the pool."""
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != "rpm" or parts[2] != archive.PACKAGES_DIR:
            return None
        suite, filename = parts[1], parts[3]
        if suite == "pool" or not suite:
            return None
        try:
            policy.parse_rpm_filename(filename)
        except ValueError:
            return None
        return suite, filename

    def client_config(self, base_url: str, settings: Settings, signer: Signer | None,
                      suite: str | None = None) -> dict[str, str]:
        suite = suite or settings.repository.suite
        base = base_url.rstrip("/")
        root = f"{base}/rpm/{suite}/"
        lines = [f"[pkgfarm-{suite}]", f"name=pkgfarm ({suite})", f"baseurl={root}",
                 "enabled=1", "gpgcheck=0"]
        config = {"url": root, "file": f"/etc/yum.repos.d/pkgfarm-{suite}.repo"}
        if signer is not None:
            config["key_url"] = f"{base}/{KEY_FILE}"
            config["setup"] = f"sudo rpm --import {config['key_url']}"
            lines += ["repo_gpgcheck=1", f"gpgkey={config['key_url']}"]
        else:
            lines.append("repo_gpgcheck=0")
        config["snippet"] = "\n".join(lines) + "\n"
        return config


RPM_REPOSITORY = RpmRepository()
