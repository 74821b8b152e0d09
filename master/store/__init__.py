"""The master's durable store, one aggregate per concern over one SQLite database.

`Store` opens (and migrates) the database under ``data_dir`` and offers ``jobs`` (builds,
jobs, staged files), ``packages`` (published archives, generations, dirty index groups),
``index`` (each format's index cache), ``workers`` (heartbeats, drained workers),
``logins`` (failed logins), ``events`` (what happened, in commit order), ``queues``
(paused queues), ``counters`` (what /metrics counts), ``webhooks`` (queued deliveries),
``accounts`` (users and API tokens made at run time, shared secrets) and ``stats`` (what the
dashboard counts, queue samples). Redis is only the queue: whatever is here is the truth.
"""

from __future__ import annotations

from pathlib import Path

from master.store.accounts import AccountStore, TokenRecord, UserRecord
from master.store.counters import CounterStore
from master.store.db import GROUPS, SCHEMA_VERSION, Database, group_of
from master.store.events import Event, EventStore
from master.store.index import IndexCache
from master.store.jobs import JobStore
from master.store.logins import LoginStore
from master.store.packages import PackageStore
from master.store.queues import QueueStore
from master.store.records import (
    Build,
    IndexKey,
    Job,
    NewPackage,
    PackageRecord,
    PlannedJob,
    StagedFile,
    WorkerInfo,
    WorkerRecord,
)
from master.store.stats import StatsStore
from master.store.webhooks import WebhookStore
from master.store.workers import WorkerStore

__all__ = ["GROUPS", "SCHEMA_VERSION", "AccountStore", "Build", "Event", "IndexKey", "Job",
           "NewPackage", "PackageRecord", "PlannedJob", "StagedFile", "Store", "TokenRecord",
           "UserRecord", "WorkerInfo", "WorkerRecord", "group_of"]


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = Database(self.path)
        self.jobs = JobStore(self.db)
        self.packages = PackageStore(self.db)
        self.index = IndexCache(self.db)
        self.workers = WorkerStore(self.db)
        self.logins = LoginStore(self.db)
        self.counters = CounterStore(self.db)
        self.webhooks = WebhookStore(self.db)
        self.events = EventStore(self.db)
        self.queues = QueueStore(self.db)
        self.accounts = AccountStore(self.db)
        self.stats = StatsStore(self.db)

    @classmethod
    def in_data_dir(cls, data_dir: str | Path) -> Store:
        return cls(Path(data_dir) / "state.db")
