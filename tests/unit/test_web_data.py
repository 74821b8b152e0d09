"""The dashboard's data layer: when the repository's index was last written comes from the
store, whatever formats the farm serves (no format's index files are read)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.config import settings_from_dict
from master.services import Services
from master.store import NewPackage
from master.web.data import index_updated


def services_for(tmp_path: Path, formats: list[str]) -> Services:
    # The broker is never reached: nothing here queues a job.
    return Services.build(settings_from_dict({
        "master": {"data_dir": str(tmp_path / "data")},
        "broker_url": "redis://127.0.0.1:1/0",
        "repository": {"formats": formats, "suites": ["testing"]}}))


@pytest.mark.parametrize("formats", [["rpm"], ["pacman"], ["deb", "rpm", "pacman"]])
def test_the_index_time_is_the_stores_for_every_format(tmp_path: Path,
                                                       formats: list[str]) -> None:
    services = services_for(tmp_path, formats)
    assert index_updated(services) is None  # nothing written, nothing published
    before = time.time()
    assert services.repository.rebuild_index(full=True)
    after = time.time()
    written = index_updated(services)
    assert written is not None and before <= written <= after
    assert services.store.packages.index_written_at() == written
    # The next index moves it on; a time recorded by hand is read back as it was given.
    time.sleep(0.01)
    services.repository.rebuild_index(full=True)
    again = index_updated(services)
    assert again is not None and again > written
    services.store.packages.set_index_generation(services.store.packages.generation(),
                                                 at=1_700_000_000.25)
    assert index_updated(services) == 1_700_000_000.25


def test_before_any_index_the_newest_publication_stands_in(tmp_path: Path) -> None:
    """A store an older pkgfarm wrote has no index time until the master's next index."""
    services = services_for(tmp_path, ["rpm"])
    services.store.packages.add([NewPackage(
        format="rpm", suite="stable", component="main", name="fx", version="1.0-1",
        arch="all", filename="fx-1.0-1.noarch.rpm", pool_path="pool/fx-1.0-1.noarch.rpm",
        size=1, sha256="0" * 64, entry="{}", uploaded_at=1_600_000_000.5, uploaded_by="t",
        job_id=None)])
    assert services.store.packages.index_written_at() is None
    assert index_updated(services) == 1_600_000_000.5
