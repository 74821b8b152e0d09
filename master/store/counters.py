"""Monotonic counters and histograms kept in the store, for ``GET /metrics``: one aggregate.

Every gunicorn process, the housekeeping and the CLI change jobs; a counter kept in one
process's memory would count only that process's share and vanish with it. So the facts that
the metrics count (a job finished, a build finished, a lease ran out, a message was sent
again) are counted here, by the store method that makes the change, IN ITS TRANSACTION: the
count is exact and survives restarts. A histogram is kept as cumulative bucket counts, a
count and a sum, as Prometheus exposes it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass

from common.states import FINAL_STATES, JobState, build_state
from master.store.db import Database

#: Bucket bounds (seconds) of the job duration histogram: builds take seconds to hours.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    21600.0)
#: Bucket bounds (seconds) of the queue wait histogram.
WAIT_BUCKETS = (0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

JOBS_FINISHED = "jobs_finished"
BUILDS_FINISHED = "builds_finished"
LEASE_EXPIRIES = "lease_expiries"
BROKER_RESENDS = "broker_resends"
JOB_DURATION = "job_duration_seconds"
QUEUE_WAIT = "queue_wait_seconds"


def _key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def bump(db: sqlite3.Connection, name: str, labels: dict[str, str], by: float = 1.0) -> None:
    """Add ``by`` to a counter, inside the caller's write transaction."""
    db.execute("INSERT INTO counters(name, labels, value) VALUES (?,?,?) "
               "ON CONFLICT(name, labels) DO UPDATE SET value=value+excluded.value",
               (name, _key(labels), by))


def observe(db: sqlite3.Connection, name: str, labels: dict[str, str], value: float,
            buckets: tuple[float, ...]) -> None:
    """Record one observation of a histogram, inside the caller's write transaction."""
    value = max(0.0, value)
    for bound in buckets:
        if value <= bound:
            bump(db, f"{name}_bucket", {**labels, "le": _bound(bound)})
    bump(db, f"{name}_count", labels)
    bump(db, f"{name}_sum", labels, value)


def _bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def job_moved(db: sqlite3.Connection, build_id: int, arch: str, fmt: str, old: JobState,
              new: JobState, queued_at: float | None, started_at: float | None) -> None:
    """Count what one job's change of state means for the metrics (called by the job store
    inside the transaction that makes the change, after it). Jobs finished are counted per
    format too; durations and waits per architecture only (few series: a histogram is a dozen
    of them per label set)."""
    now = time.time()
    if new == JobState.BUILDING and queued_at is not None:
        observe(db, QUEUE_WAIT, {"arch": arch}, now - queued_at, WAIT_BUCKETS)
    if new in FINAL_STATES and old not in FINAL_STATES:
        bump(db, JOBS_FINISHED, {"arch": arch, "format": fmt, "outcome": new.value})
        if old == JobState.BUILDING and started_at is not None:
            observe(db, JOB_DURATION, {"arch": arch, "outcome": new.value}, now - started_at,
                    DURATION_BUCKETS)
        states = [JobState(r[0]) for r in
                  db.execute("SELECT state FROM jobs WHERE build_id=?", (build_id,))]
        if all(s in FINAL_STATES for s in states):
            bump(db, BUILDS_FINISHED, {"outcome": build_state(states).value})


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class CounterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def all(self) -> list[Sample]:
        with self.db.read() as db:
            rows = db.execute("SELECT name, labels, value FROM counters "
                              "ORDER BY name, labels").fetchall()
        return [Sample(r["name"], json.loads(r["labels"]), r["value"]) for r in rows]

    def job_states(self) -> dict[str, int]:
        """How many jobs are in each state now."""
        with self.db.read() as db:
            rows = db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        return {r[0]: int(r[1]) for r in rows}
