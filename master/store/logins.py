"""Failed logins by user name and client address, shared by every master process: one
aggregate of the store."""

from __future__ import annotations

from master.store.db import Database


class LoginStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def failed(self, user: str, address: str, at: float) -> None:
        with self.db.write() as db:
            db.execute("INSERT INTO login_failures(user, address, at) VALUES (?,?,?)",
                       (user, address, at))

    def failures_since(self, user: str, address: str, since: float) -> list[float]:
        """The times of the pair's failures after ``since``, oldest first."""
        with self.db.read() as db:
            rows = db.execute("SELECT at FROM login_failures WHERE user=? AND address=? AND "
                              "at>? ORDER BY at", (user, address, since)).fetchall()
        return [r[0] for r in rows]

    def clear(self, user: str, address: str) -> None:
        with self.db.write() as db:
            db.execute("DELETE FROM login_failures WHERE user=? AND address=?", (user, address))

    def prune(self, before: float) -> None:
        with self.db.write() as db:
            db.execute("DELETE FROM login_failures WHERE at<?", (before,))
