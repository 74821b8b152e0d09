"""Which build queues are paused: one aggregate of the store.

A paused queue's jobs stay queued in the store: the master sends none of their messages, and
refuses the claim of one sent before the pause (the job's message is sent again after the
resume). Pausing and resuming record ``queue.paused`` / ``queue.resumed``.
"""

from __future__ import annotations

from master.store.db import Database
from master.store.events import record


class QueueStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def set_paused(self, queue: str, paused: bool) -> bool:
        """Pause a queue or resume it; False if it already was so."""
        with self.db.write() as db:
            row = db.execute("SELECT paused FROM queue_flags WHERE queue=?", (queue,)).fetchone()
            if bool(row and row["paused"]) == paused:
                return False
            db.execute("INSERT INTO queue_flags(queue, paused) VALUES (?,?) "
                       "ON CONFLICT(queue) DO UPDATE SET paused=excluded.paused",
                       (queue, int(paused)))
            record(db, "queue.paused" if paused else "queue.resumed", queue=queue)
            return True

    def paused(self) -> set[str]:
        with self.db.read() as db:
            return {r[0] for r in db.execute("SELECT queue FROM queue_flags WHERE paused=1")}

    def is_paused(self, queue: str) -> bool:
        return queue in self.paused()
