"""Fixtures that start real parts: redis-server, the master under gunicorn, workers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.farm import (
    CLIENT_FOLDERS,
    TEST_PACKAGES,
    Master,
    RedisServer,
    Worker,
    free_port,
    stop_gpg_agents,
    write_config,
)
from tests.integration.hooks import Receiver


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _tools_present() -> None:
    missing = [t for t in ("redis-server", "dpkg-deb", "apt-get") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"integration tests need {', '.join(missing)} (run the README's set-up)")


@pytest.fixture(autouse=True)
def _client_keyrings_stopped() -> Iterator[None]:
    """gpg starts an agent for each dnf or pacman keyring a test makes; it goes with the test."""
    yield
    while CLIENT_FOLDERS:
        stop_gpg_agents(CLIENT_FOLDERS.pop())


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """A webhook receiver for the module's farm (it accepts every delivery until a test plans
    otherwise)."""
    r = Receiver()
    r.start()
    try:
        yield r
    finally:
        r.stop()


class Farm:
    """A running farm: its own redis-server, the master, and workers named by arch."""

    def __init__(self, root: Path, extra_master: dict[str, Any] | None = None,
                 extra_worker: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.redis = RedisServer(root / "redis")
        self.port = free_port()
        self.data_dir = root / "data"
        self.config = root / "config.yaml"
        self.extra_master, self.extra_worker, self.extra = extra_master, extra_worker, extra
        self.master: Master | None = None
        self.workers: dict[str, Worker] = {}

    def start(self, worker_arches: dict[str, list[str]]) -> None:
        self.redis.start()
        write_config(self.config, data_dir=self.data_dir, port=self.port,
                     broker_url=self.redis.url, package_paths=[TEST_PACKAGES],
                     extra_master=self.extra_master, extra_worker=self.extra_worker,
                     extra=self.extra)
        self.master = Master(self.config, self.port, self.root / "master.log")
        self.master.start()
        for name, arches in worker_arches.items():
            self.add_worker(name, arches)

    def add_worker(self, name: str, arches: list[str]) -> Worker:
        worker = Worker(self.config, name, arches, self.root / f"{name}.log")
        worker.start()
        self.workers[name] = worker
        return worker

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        if self.master is not None:
            self.master.stop()
        self.redis.stop()


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """redis-server, the master, a worker tagged amd64 and one tagged arm64."""
    f = Farm(tmp_path_factory.mktemp("farm"))
    try:
        f.start({"w-amd64": ["amd64"], "w-arm64": ["arm64"]})
        yield f
    finally:
        f.stop()
