"""The store's typed records: what goes in and what comes out of each aggregate."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from common.states import JobState, SourceKind


@dataclass(frozen=True)
class Build:
    id: int
    created_at: float
    requested_by: str | None
    packages: tuple[str, ...]
    arch: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Build:
        return cls(id=row["id"], created_at=row["created_at"], requested_by=row["requested_by"],
                   packages=tuple(json.loads(row["packages"])), arch=row["arch"])


@dataclass(frozen=True)
class Job:
    id: int
    build_id: int
    package: str
    version: str
    arch: str
    state: JobState
    attempt: int
    enqueued: bool
    worker: str | None
    claimed_by: str | None
    token_hash: str | None
    lease_expires: float | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    error: str | None
    files: tuple[str, ...]
    depends_on: tuple[int, ...] = ()
    format: str = "deb"
    source_kind: SourceKind = SourceKind.DEFINITION
    #: built by a worker on its own (`worker package-add --now`); never queued to the farm
    local: bool = False
    #: when the current attempt's message reached the broker
    enqueued_at: float | None = None

    COLUMNS = ("id, build_id, package, version, arch, format, source_kind, local, state, "
               "attempt, enqueued, enqueued_at, worker, claimed_by, token_hash, lease_expires, "
               "queued_at, started_at, finished_at, error, files, depends_on")

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"], build_id=row["build_id"], package=row["package"],
            version=row["version"], arch=row["arch"], format=row["format"],
            source_kind=SourceKind(row["source_kind"]), local=bool(row["local"]),
            state=JobState(row["state"]), attempt=row["attempt"],
            enqueued=bool(row["enqueued"]), enqueued_at=row["enqueued_at"],
            worker=row["worker"], claimed_by=row["claimed_by"],
            token_hash=row["token_hash"], lease_expires=row["lease_expires"],
            queued_at=row["queued_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], error=row["error"],
            files=tuple(json.loads(row["files"])),
            depends_on=tuple(json.loads(row["depends_on"])),
        )


@dataclass(frozen=True)
class PlannedJob:
    """A job of a build about to be recorded."""

    package: str
    version: str
    arch: str
    snapshot: bytes
    #: indexes of the jobs (in the same plan) that must succeed first
    depends_on: tuple[int, ...] = ()
    format: str = "deb"
    source_kind: SourceKind = SourceKind.DEFINITION


@dataclass(frozen=True)
class StagedFile:
    """A file an attempt uploaded, waiting for the attempt's report to publish it."""

    job_id: int
    attempt: int
    filename: str
    #: "archive" (for the pool) or "auxiliary" (kept with the build, such as a .buildinfo)
    kind: str
    path: str
    size: int
    sha256: str
    md5: str
    sha1: str
    entry: str | None = None
    name: str | None = None
    version: str | None = None
    arch: str | None = None
    pool_path: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StagedFile:
        return cls(**{k: row[k] for k in row.keys()})  # noqa: SIM118 (a Row, not a dict)


@dataclass(frozen=True)
class NewPackage:
    """An archive about to be published in one suite."""

    format: str
    suite: str
    component: str
    name: str
    version: str
    arch: str
    filename: str
    pool_path: str
    size: int
    sha256: str
    entry: str
    uploaded_by: str | None
    job_id: int | None
    #: when it was first published (a promotion keeps the original's); None: now
    uploaded_at: float | None = None


@dataclass(frozen=True)
class PackageRecord:
    id: int
    format: str
    suite: str
    component: str
    grp: int
    name: str
    version: str
    arch: str
    filename: str
    pool_path: str
    size: int
    sha256: str
    entry: str
    uploaded_at: float
    uploaded_by: str | None
    job_id: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PackageRecord:
        return cls(**{k: row[k] for k in row.keys()})  # noqa: SIM118 (a Row, not a dict)

    def published_in(self, suite: str) -> NewPackage:
        """This archive as a new record of another suite (a promotion)."""
        return NewPackage(format=self.format, suite=suite, component=self.component,
                          name=self.name, version=self.version, arch=self.arch,
                          filename=self.filename, pool_path=self.pool_path, size=self.size,
                          sha256=self.sha256, entry=self.entry, uploaded_by=self.uploaded_by,
                          job_id=self.job_id)


@dataclass(frozen=True)
class IndexKey:
    """One index group: what an update marks to render again."""

    format: str
    suite: str
    component: str
    grp: int


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker's heartbeat says of it."""

    architectures: tuple[str, ...]
    concurrency: int
    queues: tuple[str, ...] = ()
    #: the user the worker authenticates as
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"architectures": list(self.architectures),
                           "concurrency": self.concurrency, "queues": list(self.queues),
                           "user": self.user, **self.extra})

    @classmethod
    def from_json(cls, text: str) -> WorkerInfo:
        data = json.loads(text)
        known = {"architectures", "concurrency", "queues", "user"}
        return cls(architectures=tuple(data.get("architectures", ())),
                   concurrency=int(data.get("concurrency", 1)),
                   queues=tuple(data.get("queues", ())), user=data.get("user"),
                   extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class WorkerRecord:
    name: str
    info: WorkerInfo
    last_seen: float
