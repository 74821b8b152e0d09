"""Workers as their heartbeats describe them, and what the master decided about them (drained
or not): one aggregate of the store.

A worker's first heartbeat (or its first after it went away) records ``worker.online``; its
leaving, or `expire` noticing its heartbeats stopped, records ``worker.offline``: each in the
transaction that changes what the store knows of it.

A worker's name belongs to the user whose heartbeat first recorded it (`use_name`): another
user's heartbeat under it, leaving or not, is refused. A user has at most a given number of
live names at once, and holds at most `HELD_PER_LIVE` times as many in all (live, or heard
from within `NAME_KEEP`); a name is forgotten, and free again, `NAME_KEEP` after its last
heartbeat (`forget_silent`, from the master's housekeeping). So an ``upload`` credential can
neither evict another user's workers nor fill the list with names of its own making, while
workers that come and go under new names (containers named after their host) go on. A record
written before names had owners (no user in it) belongs to the user that claimed the newest
job built under that name; one that never built is taken by nobody while it is live, and is
free once its heartbeats have stopped for the worker TTL (its own worker, refused meanwhile,
takes it back then).
"""

from __future__ import annotations

import sqlite3
import time

from master.store.db import Database
from master.store.events import record
from master.store.records import WorkerInfo, WorkerRecord

#: how long a name is kept (its owner's) after its last heartbeat, in seconds
NAME_KEEP = 24 * 3600
#: the names a user may hold in all, as a multiple of the live names it may have
HELD_PER_LIVE = 4


def _set_online(db: sqlite3.Connection, name: str, info: WorkerInfo, online: bool) -> None:
    """Record the worker's coming or going, if it is news."""
    row = db.execute("SELECT online FROM worker_flags WHERE name=?", (name,)).fetchone()
    if row is not None and bool(row["online"]) == online:
        return
    db.execute("INSERT INTO worker_flags(name, online) VALUES (?,?) "
               "ON CONFLICT(name) DO UPDATE SET online=excluded.online", (name, int(online)))
    record(db, "worker.online" if online else "worker.offline", worker=name,
           arches=list(info.architectures))


class WorkerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def heartbeat(self, name: str, info: WorkerInfo) -> None:
        """A heartbeat recorded whatever the name's owner (as an admin's is)."""
        self.use_name(name, info, leaving=False, ttl=0, max_live=None)

    def use_name(self, name: str, info: WorkerInfo, *, leaving: bool, ttl: float,
                 max_live: int | None) -> str | None:
        """A heartbeat of ``info.user`` under ``name`` (the worker leaves when ``leaving``),
        recorded only if the name is that user's to use (see the module's text; ``max_live``
        None: an admin, who may use any name, without a limit); else why not, and nothing
        changed. One transaction, so that two users naming a new name at once cannot both
        have it."""
        user = info.user
        now = time.time()
        with self.db.write() as db:
            row = db.execute("SELECT info, last_seen FROM workers WHERE name=?",
                             (name,)).fetchone()
            live = row is not None and row["last_seen"] >= now - ttl
            if row is not None and max_live is not None:
                owner = WorkerInfo.from_json(row["info"]).user
                if owner is None:
                    claimed = db.execute(
                        "SELECT claimed_by FROM jobs WHERE worker=? AND claimed_by IS NOT NULL "
                        "ORDER BY started_at DESC, id DESC LIMIT 1", (name,)).fetchone()
                    owner = claimed["claimed_by"] if claimed else None
                    if owner is None and live:
                        return (f"the worker name {name!r} was recorded without a user and "
                                "is live; it is free once its heartbeats have stopped for "
                                f"{ttl:g} s")
                if owner is not None and owner != user:
                    return f"the worker name {name!r} belongs to another user"
            if leaving:
                if row is not None:
                    # Out of the live list at once; the name stays its owner's, and is kept
                    # as heard from now (NAME_KEEP).
                    db.execute("UPDATE workers SET last_seen=? WHERE name=?",
                               (min(row["last_seen"], now - ttl - 1), name))
                    _set_online(db, name, WorkerInfo.from_json(row["info"]), False)
                return None
            if not live and max_live is not None:
                rows = db.execute("SELECT info, last_seen FROM workers WHERE name!=?",
                                  (name,)).fetchall()
                mine = [r["last_seen"] for r in rows
                        if WorkerInfo.from_json(r["info"]).user == user]
                live_now = sum(seen >= now - ttl for seen in mine)
                if live_now >= max_live:
                    return (f"{user} already has {live_now} live worker names, the most a user "
                            "may have at once: a new one is accepted when one of them leaves "
                            "or stops sending heartbeats")
                if row is None and len(mine) >= max_live * HELD_PER_LIVE:
                    return (f"{user} holds {len(mine)} worker names, the most a user may: a "
                            f"name is forgotten {NAME_KEEP // 3600:g} h after its last "
                            "heartbeat, and a new one is accepted then")
            db.execute(
                "INSERT INTO workers(name, info, last_seen) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen",
                (name, info.to_json(), now))
            _set_online(db, name, info, True)
            return None

    def get(self, name: str) -> WorkerRecord | None:
        with self.db.read() as db:
            row = db.execute("SELECT name, info, last_seen FROM workers WHERE name=?",
                             (name,)).fetchone()
        return WorkerRecord(row["name"], WorkerInfo.from_json(row["info"]),
                            row["last_seen"]) if row else None

    def forget_silent(self, keep: float = NAME_KEEP) -> int:
        """Forget the workers not heard from for ``keep`` seconds (their names are free
        again); how many."""
        with self.db.write() as db:
            names = [r[0] for r in db.execute("SELECT name FROM workers WHERE last_seen<?",
                                              (time.time() - keep,))]
            for name in names:
                db.execute("DELETE FROM workers WHERE name=?", (name,))
                db.execute("DELETE FROM worker_flags WHERE name=? AND online=0", (name,))
        return len(names)

    def expire(self, ttl: float) -> list[str]:
        """Record ``worker.offline`` for every worker whose heartbeats stopped ``ttl`` seconds
        ago without a word; their names."""
        with self.db.write() as db:
            rows = db.execute(
                "SELECT w.name, w.info FROM workers w JOIN worker_flags f ON f.name=w.name "
                "WHERE f.online=1 AND w.last_seen<?", (time.time() - ttl,)).fetchall()
            for row in rows:
                _set_online(db, row["name"], WorkerInfo.from_json(row["info"]), False)
        return [r["name"] for r in rows]

    def live(self, ttl: float) -> list[WorkerRecord]:
        with self.db.read() as db:
            rows = db.execute("SELECT name, info, last_seen FROM workers WHERE last_seen>=? "
                              "ORDER BY name", (time.time() - ttl,)).fetchall()
        return [WorkerRecord(r["name"], WorkerInfo.from_json(r["info"]), r["last_seen"])
                for r in rows]

    # -- drain ---------------------------------------------------------------------------------

    def set_drained(self, name: str, drained: bool) -> bool:
        """Drain a worker (it finishes what it builds and is given nothing new) or take it back;
        False if that is what it already was."""
        with self.db.write() as db:
            row = db.execute("SELECT drained FROM worker_flags WHERE name=?", (name,)).fetchone()
            if row is not None and bool(row["drained"]) == drained:
                return False
            db.execute("INSERT INTO worker_flags(name, drained) VALUES (?,?) "
                       "ON CONFLICT(name) DO UPDATE SET drained=excluded.drained",
                       (name, int(drained)))
            record(db, "worker.drained" if drained else "worker.resumed", worker=name)
            return True

    def is_drained(self, name: str) -> bool:
        with self.db.read() as db:
            row = db.execute("SELECT drained FROM worker_flags WHERE name=?", (name,)).fetchone()
        return bool(row and row["drained"])

    def drained(self) -> set[str]:
        with self.db.read() as db:
            return {r[0] for r in db.execute("SELECT name FROM worker_flags WHERE drained=1")}
