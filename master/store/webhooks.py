"""Queued webhook deliveries, the dispatcher's cursor, and leases: one aggregate of the store.

The dispatcher (master.webhooks) turns events into deliveries and moves its cursor in ONE
transaction, so an event is queued for each hook exactly once, whichever process does it and
however it stops. A delivery stays ``pending`` until it is ``delivered`` or, after its last
try, ``failed``; a hook's deliveries for one build go out one after the other (`due` holds a
delivery back while an earlier one of the same hook and build is pending).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from master.store.db import Database

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
CURSOR_KEY = "webhooks_cursor"


@dataclass(frozen=True)
class NewDelivery:
    delivery: str
    hook: str
    event_id: int | None
    kind: str
    build_id: int | None
    body: str


@dataclass(frozen=True)
class Delivery:
    seq: int
    delivery: str
    hook: str
    event_id: int | None
    kind: str
    build_id: int | None
    body: str
    created_at: float
    state: str
    attempts: int
    next_try: float
    last_try: float | None
    last_status: int | None
    last_error: str | None
    delivered_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Delivery:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def cursor(self) -> int:
        with self.db.read() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (CURSOR_KEY,)).fetchone()
        return int(row[0]) if row else 0

    def enqueue(self, expected_cursor: int, new_cursor: int,
                deliveries: list[NewDelivery]) -> bool:
        """Queue ``deliveries`` and move the cursor from ``expected_cursor`` to ``new_cursor``,
        together; False (nothing done) if the cursor had moved meanwhile."""
        now = time.time()
        with self.db.write() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (CURSOR_KEY,)).fetchone()
            if (int(row[0]) if row else 0) != expected_cursor:
                return False
            for d in deliveries:
                db.execute("INSERT INTO webhook_deliveries(delivery, hook, event_id, kind, "
                           "build_id, body, created_at, state, next_try) "
                           "VALUES (?,?,?,?,?,?,?,?,?)",
                           (d.delivery, d.hook, d.event_id, d.kind, d.build_id, d.body, now,
                            PENDING, now))
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) "
                       "DO UPDATE SET value=excluded.value", (CURSOR_KEY, new_cursor))
        return True

    def due(self, now: float, limit: int = 100, hook: str | None = None) -> list[Delivery]:
        """Pending deliveries (of one hook, or all) whose time has come and that no earlier
        pending delivery of the same hook and build holds back, oldest first."""
        where = "" if hook is None else " AND d.hook=?"
        args = (PENDING, now, PENDING) + (() if hook is None else (hook,)) + (limit,)
        with self.db.read() as db:
            rows = db.execute(
                "SELECT * FROM webhook_deliveries d WHERE state=? AND next_try<=? AND NOT "
                "EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.state=? AND "
                "e.hook=d.hook AND e.build_id IS d.build_id AND e.seq<d.seq)"
                f"{where} ORDER BY seq LIMIT ?", args).fetchall()
        return [Delivery.from_row(r) for r in rows]

    def next_due(self) -> float | None:
        """When the soonest pending delivery is due (None: nothing is pending)."""
        with self.db.read() as db:
            row = db.execute("SELECT min(next_try) FROM webhook_deliveries WHERE state=?",
                             (PENDING,)).fetchone()
        return row[0]

    def record(self, seq: int, *, delivered: bool, status: int | None, error: str | None,
               next_try: float | None) -> None:
        """The outcome of one try: delivered, to be tried again at ``next_try``, or given up
        (not delivered and no next try)."""
        now = time.time()
        state = DELIVERED if delivered else (PENDING if next_try is not None else FAILED)
        with self.db.write() as db:
            db.execute("UPDATE webhook_deliveries SET state=?, attempts=attempts+1, "
                       "last_try=?, last_status=?, last_error=?, next_try=?, delivered_at=? "
                       "WHERE seq=? AND state=?",
                       (state, now, status, error, next_try if next_try is not None else now,
                        now if delivered else None, seq, PENDING))

    def recent(self, hook: str, limit: int = 20) -> list[Delivery]:
        with self.db.read() as db:
            rows = db.execute("SELECT * FROM webhook_deliveries WHERE hook=? "
                              "ORDER BY seq DESC LIMIT ?", (hook, limit)).fetchall()
        return [Delivery.from_row(r) for r in rows]

    def counts(self, hook: str) -> dict[str, int]:
        with self.db.read() as db:
            rows = db.execute("SELECT state, count(*) FROM webhook_deliveries WHERE hook=? "
                              "GROUP BY state", (hook,)).fetchall()
        return {PENDING: 0, DELIVERED: 0, FAILED: 0, **{r[0]: r[1] for r in rows}}

    def prune(self, before: float) -> int:
        """Forget finished deliveries older than ``before``."""
        with self.db.write() as db:
            cur = db.execute("DELETE FROM webhook_deliveries WHERE state!=? AND created_at<?",
                             (PENDING, before))
            return cur.rowcount

    # -- leases --------------------------------------------------------------------------------

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold lease ``name`` for ``seconds`` more if it is free, expired or already
        ``owner``'s; whether ``owner`` holds it now."""
        now = time.time()
        with self.db.write() as db:
            db.execute("INSERT INTO leases(name, owner, expires) VALUES (?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, "
                       "expires=excluded.expires WHERE leases.owner=excluded.owner OR "
                       "leases.expires<?", (name, owner, now + seconds, now))
            row = db.execute("SELECT owner FROM leases WHERE name=?", (name,)).fetchone()
        return bool(row and row[0] == owner)

    def release_lease(self, name: str, owner: str) -> None:
        with self.db.write() as db:
            db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))
