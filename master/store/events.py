"""The farm's events: what happened, in commit order, kept for a window: one aggregate of the
store.

An event is written by `record` inside the transaction of the change it reports (a job's move,
a build's creation, a heartbeat), so a committed change always has its event and the events'
ids follow the order the changes were committed in. SQLite's AUTOINCREMENT never gives an id
twice, even after the newest events are pruned, so an id names one event for good: a client
that read up to id N and asks for what follows gets exactly the events committed after it.

Readers (the SSE stream of every master process, `master events`, webhooks, metrics) poll
`after`; housekeeping prunes what is older than ``master.events_window``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from master.store.db import Database

#: Every kind of event, and the fields each carries besides id, at, kind, build_id, job_id.
KINDS: dict[str, tuple[str, ...]] = {
    "build.created": ("packages", "requested_by", "jobs"),
    "build.finished": ("state", "jobs"),
    "job.queued": ("package", "version", "arch", "format", "attempt"),
    "job.started": ("package", "version", "arch", "format", "attempt", "worker"),
    "job.finished": ("package", "version", "arch", "format", "attempt", "state", "error",
                     "worker", "duration"),
    "upload.accepted": ("files",),
    "index.updated": ("generation", "format", "suites"),
    "worker.online": ("worker", "arches"),
    "worker.offline": ("worker", "arches"),
    "worker.drained": ("worker",),
    "worker.resumed": ("worker",),
    "queue.paused": ("queue",),
    "queue.resumed": ("queue",),
}

#: The most events one read returns.
MAX_LIMIT = 1000
_COLUMNS = "id, at, kind, build_id, job_id, data"


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    kind: str
    build_id: int | None
    job_id: int | None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Event:
        return cls(id=row["id"], at=row["at"], kind=row["kind"], build_id=row["build_id"],
                   job_id=row["job_id"], data=json.loads(row["data"]))

    def to_json(self) -> dict[str, Any]:
        """A flat mapping: the event's id, time, kind, build and job, then its own fields."""
        return {**self.data, "id": self.id, "at": self.at, "kind": self.kind,
                "build_id": self.build_id, "job_id": self.job_id}


def record(db: sqlite3.Connection, kind: str, *, build_id: int | None = None,
           job_id: int | None = None, **data: Any) -> int:
    """Write one event inside the caller's transaction; its id."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    cur = db.execute("INSERT INTO events(at, kind, build_id, job_id, data) VALUES (?,?,?,?,?)",
                     (time.time(), kind, build_id, job_id, json.dumps(data, sort_keys=True)))
    assert cur.lastrowid is not None
    return cur.lastrowid


class EventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, kind: str, *, build_id: int | None = None, job_id: int | None = None,
            **data: Any) -> int:
        """Write one event in a transaction of its own (for changes the store does not make)."""
        with self.db.write() as db:
            return record(db, kind, build_id=build_id, job_id=job_id, **data)

    def after(self, last_id: int, *, kinds: Iterable[str] | None = None,
              build_id: int | None = None, limit: int = MAX_LIMIT,
              newest: bool = False) -> list[Event]:
        """The events after id ``last_id``, oldest first, at most ``limit``: the oldest of
        them, or with ``newest`` the newest of them."""
        query = f"SELECT {_COLUMNS} FROM events WHERE id>?"
        args: list[Any] = [last_id]
        if kinds is not None:
            wanted = sorted(set(kinds))
            if not wanted:
                return []
            query += f" AND kind IN ({','.join('?' * len(wanted))})"
            args += wanted
        if build_id is not None:
            query += " AND build_id=?"
            args.append(build_id)
        query += f" ORDER BY id{' DESC' if newest else ''} LIMIT ?"
        args.append(max(1, min(limit, MAX_LIMIT)))
        with self.db.read() as db:
            rows = db.execute(query, args).fetchall()
        events = [Event.from_row(r) for r in rows]
        return events[::-1] if newest else events

    def newest_id(self) -> int:
        """The id of the newest event ever written (kept or pruned); 0 if none was."""
        with self.db.read() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            newest = db.execute("SELECT max(id) FROM events").fetchone()[0]
        return max(int(row[0]) if row else 0, int(newest or 0))

    def oldest_id(self) -> int | None:
        """The id of the oldest event kept; None if none is."""
        with self.db.read() as db:
            value = db.execute("SELECT min(id) FROM events").fetchone()[0]
        return int(value) if value is not None else None

    def prune(self, window: float) -> int:
        """Forget the events older than ``window`` seconds; how many went."""
        with self.db.write() as db:
            cur = db.execute("DELETE FROM events WHERE at<?", (time.time() - window,))
            return cur.rowcount

    def resumable(self, last_id: int) -> bool:
        """Whether a reader that saw every event up to ``last_id`` can go on from there
        without missing one: the id is not beyond the newest, and nothing after it was pruned."""
        newest = self.newest_id()
        if last_id > newest:
            return False
        if last_id == newest:
            return True
        oldest = self.oldest_id()
        # Something was written after last_id; the next one kept must be last_id + 1 (ids
        # are never reused, and only the oldest events are pruned).
        return oldest is not None and oldest <= last_id + 1
