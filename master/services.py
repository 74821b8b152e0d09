"""The master's parts, wired once per process and shared by the views and the CLI."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from celery import Celery

from common.config import Settings
from common.queues import make_celery
from master import formats
from master.auth import Authenticator
from master.repository import Repository
from master.scheduler import Scheduler
from master.signing import Signer
from master.storage import storage_from_settings
from master.store import Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    repository: Repository
    scheduler: Scheduler
    celery: Celery
    auth: Authenticator
    _openapi: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        store = Store.in_data_dir(settings.master.data_dir)
        celery = make_celery(settings)
        signer = None
        if settings.repository.signing_key:
            signer = Signer.from_key_file(settings.repository.signing_key,
                                          settings.master.data_dir)
        repository = Repository(settings, store, storage_from_settings(settings), signer=signer)
        return cls(
            settings=settings,
            store=store,
            repository=repository,
            scheduler=Scheduler(settings, store, celery, repository),
            celery=celery,
            auth=Authenticator(settings.master.users, store.logins, store.accounts),
        )

    def client_configs(self, repo_url: str, suite: str | None = None
                       ) -> dict[str, dict[str, str]]:
        """How each served format's stock client uses ``suite`` of the repository at
        ``repo_url``."""
        return {name: formats.get(name).client_config(repo_url, self.settings,
                                                      self.repository.signer, suite)
                for name in self.repository.formats}

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            text = (Path(__file__).parent / "openapi.yaml").read_text()
            self._openapi = yaml.safe_load(text)
        return self._openapi

    def broker_reachable(self) -> bool:
        try:
            with self.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
            return True
        except Exception as exc:
            log.debug("broker check failed: %s", exc)
            return False
