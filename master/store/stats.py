"""What the dashboard reads: counts, histories and filtered pages of builds, and the samples
of queue lengths the master's housekeeping takes. Read-only but for the samples; one aggregate
of the store."""

from __future__ import annotations

import time
from collections import defaultdict

from common.states import JobState
from master.store.db import Database
from master.store.records import Build, Job

_JOB_COLUMNS = ", ".join(f"j.{c.strip()}" for c in Job.COLUMNS.split(","))

#: A build's state from its jobs' states, in SQL (as common.states.build_state says it).
_BUILD_STATE = """
    CASE WHEN n = 0 THEN 'queued'
         WHEN ok = n THEN 'success'
         WHEN building > 0 THEN 'building'
         WHEN queued > 0 THEN CASE WHEN queued < n THEN 'building' ELSE 'queued' END
         WHEN failed > 0 THEN 'failed'
         WHEN depfailed > 0 THEN 'dep-failed'
         WHEN cancelled > 0 THEN 'cancelled'
         ELSE 'success' END
"""
_BUILD_COUNTS = """
    SELECT b.id AS id, COUNT(j.id) AS n,
           SUM(j.state = 'success') AS ok, SUM(j.state = 'building') AS building,
           SUM(j.state = 'queued') AS queued, SUM(j.state = 'failed') AS failed,
           SUM(j.state = 'dep-failed') AS depfailed, SUM(j.state = 'cancelled') AS cancelled
    FROM builds b LEFT JOIN jobs j ON j.build_id = b.id GROUP BY b.id
"""

#: Queue samples are kept this long.
SAMPLES_KEPT = 2 * 86400.0


class StatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def job_counts(self) -> dict[str, int]:
        """Jobs by state (every state, zero included)."""
        counts = {s.value: 0 for s in JobState}
        with self.db.read() as db:
            for state, n in db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                counts[state] = n
        return counts

    def finished_per_hour(self, hours: int = 24, now: float | None = None
                          ) -> tuple[float, list[dict[str, int]]]:
        """Jobs finished in each of the last ``hours`` hours, by final state: the start of the
        first hour, and one mapping per hour, oldest first."""
        now = time.time() if now is None else now
        start = (now // 3600 - hours + 1) * 3600
        buckets: list[dict[str, int]] = [defaultdict(int) for _ in range(hours)]
        with self.db.read() as db:
            rows = db.execute("SELECT CAST((finished_at - ?) / 3600 AS INTEGER), state, COUNT(*) "
                              "FROM jobs WHERE finished_at >= ? GROUP BY 1, 2", (start, start))
            for hour, state, n in rows:
                if 0 <= hour < hours:
                    buckets[hour][state] += n
        return start, [dict(b) for b in buckets]

    def failures(self, limit: int = 10) -> list[Job]:
        """The newest jobs that failed (their build's failures, newest first)."""
        with self.db.read() as db:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.state=? "
                              "ORDER BY j.finished_at DESC, j.id DESC LIMIT ?",
                              (JobState.FAILED.value, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def builds(self, *, state: str | None = None, package: str | None = None,
               requester: str | None = None, arch: str | None = None, limit: int = 50,
               offset: int = 0) -> tuple[int, list[tuple[Build, list[Job]]]]:
        """A page of builds, newest first, that match every filter given (``state``: the
        build's state; ``package`` and ``arch``: one of its jobs'); and how many match."""
        where, args = [], []
        if state:
            where.append(f"({_BUILD_STATE}) = ?")
            args.append(state)
        if requester:
            where.append("b.requested_by = ?")
            args.append(requester)
        if package:
            where.append("EXISTS (SELECT 1 FROM jobs x WHERE x.build_id = b.id AND "
                         "instr(x.package, ?) > 0)")
            args.append(package)
        if arch:
            where.append("EXISTS (SELECT 1 FROM jobs x WHERE x.build_id = b.id AND "
                         "x.arch = ?)")
            args.append(arch)
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        query = (f"FROM builds b JOIN ({_BUILD_COUNTS}) c ON c.id = b.id {clause}")
        with self.db.read() as db:
            total = db.execute(f"SELECT COUNT(*) {query}", args).fetchone()[0]
            rows = db.execute(f"SELECT b.* {query} ORDER BY b.id DESC LIMIT ? OFFSET ?",
                              (*args, limit, offset)).fetchall()
            ids = [r["id"] for r in rows]
            jobs: dict[int, list[Job]] = {i: [] for i in ids}
            if ids:
                marks = ",".join("?" * len(ids))
                for j in db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.build_id IN "
                                    f"({marks}) ORDER BY j.id", ids):
                    jobs[j["build_id"]].append(Job.from_row(j))
        return total, [(Build.from_row(r), jobs[r["id"]]) for r in rows]

    def requesters(self) -> list[str]:
        with self.db.read() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT requested_by FROM builds WHERE "
                                             "requested_by IS NOT NULL ORDER BY 1")]

    def package_jobs(self, name: str, limit: int = 50) -> list[Job]:
        """The newest jobs that built ``name``, newest first."""
        with self.db.read() as db:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.package=? "
                              "ORDER BY j.id DESC LIMIT ?", (name, limit)).fetchall()
        return [Job.from_row(r) for r in rows]

    def worker_counts(self, since: float) -> dict[str, dict[str, int]]:
        """Per worker: jobs it finished since ``since``, as {"done": n, "failed": n}."""
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {"done": 0, "failed": 0})
        with self.db.read() as db:
            for worker, state, n in db.execute(
                    "SELECT worker, state, COUNT(*) FROM jobs WHERE finished_at >= ? AND "
                    "worker IS NOT NULL AND state IN (?, ?) GROUP BY 1, 2",
                    (since, JobState.SUCCESS.value, JobState.FAILED.value)):
                counts[worker]["done" if state == JobState.SUCCESS.value else "failed"] += n
        return dict(counts)

    def package_counts(self) -> dict[str, int]:
        """Distinct package names per suite."""
        with self.db.read() as db:
            return dict(db.execute("SELECT suite, COUNT(DISTINCT name) FROM packages "
                                   "GROUP BY suite").fetchall())

    def last_upload(self) -> float | None:
        with self.db.read() as db:
            value = db.execute("SELECT MAX(uploaded_at) FROM packages").fetchone()[0]
        return float(value) if value is not None else None

    # -- queue samples -------------------------------------------------------------------------

    def add_samples(self, lengths: dict[str, int], at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self.db.write() as db:
            db.executemany("INSERT INTO queue_samples(at, queue, length) VALUES (?,?,?)",
                           [(at, q, n) for q, n in lengths.items()])
            db.execute("DELETE FROM queue_samples WHERE at < ?", (at - SAMPLES_KEPT,))

    def samples(self, since: float) -> dict[str, list[tuple[float, int]]]:
        found: dict[str, list[tuple[float, int]]] = defaultdict(list)
        with self.db.read() as db:
            for at, queue, n in db.execute("SELECT at, queue, length FROM queue_samples "
                                           "WHERE at >= ? ORDER BY at", (since,)):
                found[queue].append((at, n))
        return dict(found)

    def last_sample(self) -> float | None:
        with self.db.read() as db:
            value = db.execute("SELECT MAX(at) FROM queue_samples").fetchone()[0]
        return float(value) if value is not None else None
