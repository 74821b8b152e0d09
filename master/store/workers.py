"""Workers as their heartbeats describe them: one aggregate of the store."""

from __future__ import annotations

import time

from master.store.db import Database
from master.store.records import WorkerInfo, WorkerRecord


class WorkerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def heartbeat(self, name: str, info: WorkerInfo) -> None:
        with self.db.write() as db:
            db.execute(
                "INSERT INTO workers(name, info, last_seen) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen",
                (name, info.to_json(), time.time()))

    def get(self, name: str) -> WorkerRecord | None:
        with self.db.read() as db:
            row = db.execute("SELECT name, info, last_seen FROM workers WHERE name=?",
                             (name,)).fetchone()
        return WorkerRecord(row["name"], WorkerInfo.from_json(row["info"]),
                            row["last_seen"]) if row else None

    def forget(self, name: str) -> None:
        """The worker left: out of the live list now (its name stays its user's)."""
        with self.db.write() as db:
            db.execute("UPDATE workers SET last_seen=0 WHERE name=?", (name,))

    def live(self, ttl: float) -> list[WorkerRecord]:
        with self.db.read() as db:
            rows = db.execute("SELECT name, info, last_seen FROM workers WHERE last_seen>=? "
                              "ORDER BY name", (time.time() - ttl,)).fetchall()
        return [WorkerRecord(r["name"], WorkerInfo.from_json(r["info"]), r["last_seen"])
                for r in rows]
