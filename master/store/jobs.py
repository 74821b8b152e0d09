"""Builds, their jobs and the files an attempt staged: one aggregate of the store.

Every change of a job's state goes through `_move`, which checks it against
``common.states.TRANSITIONS`` inside the transaction that makes it; a move that is not written
there raises `IllegalTransition` and changes nothing. Methods that a race can make stale (a
claim for an attempt already given out, a report of an attempt re-queued meanwhile) check their
preconditions first and return False instead.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from common.states import RESTARTABLE, JobState, SourceKind, build_state, check_move
from master.store import counters
from master.store.db import Database
from master.store.events import record
from master.store.records import Build, Job, PlannedJob, StagedFile

_SELECT = f"SELECT {Job.COLUMNS} FROM jobs"


def _job(db: sqlite3.Connection, job_id: int) -> Job | None:
    row = db.execute(f"{_SELECT} WHERE id=?", (job_id,)).fetchone()
    return Job.from_row(row) if row else None


def _move(db: sqlite3.Connection, job: Job, new: JobState, **changes: Any) -> None:
    """Change ``job``'s state to ``new`` (and the given columns), as TRANSITIONS allows."""
    check_move(job.state, new, job.id)
    columns = {"state": new.value, **changes}
    assignments = ", ".join(f"{name}=?" for name in columns)
    cur = db.execute(f"UPDATE jobs SET {assignments} WHERE id=? AND state=? AND attempt=?",
                     (*columns.values(), job.id, job.state.value, job.attempt))
    if cur.rowcount != 1:  # cannot happen inside one write transaction; never silently
        raise RuntimeError(f"job {job.id} changed under a write transaction")
    counters.job_moved(db, job.build_id, job.arch, job.format, job.state, new, job.queued_at,
                       job.started_at)
    _job_event(db, job.id)


def _job_event(db: sqlite3.Connection, job_id: int) -> None:
    """The event of the move just made (in its transaction); and the build's end, when this
    move ended its last open job."""
    job = _job(db, job_id)
    assert job is not None
    common: dict[str, Any] = {"package": job.package, "version": job.version,
                              "arch": job.arch, "format": job.format, "attempt": job.attempt}
    ids = {"job_id": job.id, "build_id": job.build_id}
    if job.state == JobState.QUEUED:
        record(db, "job.queued", **ids, **common)
    elif job.state == JobState.BUILDING:
        record(db, "job.started", worker=job.worker, **ids, **common)
    else:
        duration = (round(job.finished_at - job.started_at, 3)
                    if job.finished_at is not None and job.started_at is not None else None)
        record(db, "job.finished", state=job.state.value, error=job.error, worker=job.worker,
               duration=duration, **ids, **common)
        _build_event(db, job.build_id)


def _build_event(db: sqlite3.Connection, build_id: int) -> None:
    """``build.finished`` if every job of the build has now reached a final state."""
    counts: dict[str, int] = {}
    for (state,) in db.execute("SELECT state FROM jobs WHERE build_id=?", (build_id,)):
        counts[state] = counts.get(state, 0) + 1
    states = [JobState(s) for s in counts]
    if not states or not all(s.is_final for s in states):
        return
    summary = build_state(states)
    outcome = {JobState.SUCCESS: "success", JobState.CANCELLED: "cancelled"}.get(summary,
                                                                                 "failed")
    record(db, "build.finished", build_id=build_id, state=outcome, jobs=counts)


def _new_attempt(db: sqlite3.Connection, job: Job, error: str | None = None,
                 **changes: Any) -> None:
    """Back to the queue as the next attempt, its message not sent yet."""
    _move(db, job, JobState.QUEUED, attempt=job.attempt + 1, enqueued=0, worker=None,
          claimed_by=None, token_hash=None, lease_expires=None, started_at=None, error=error,
          **changes)


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- builds --------------------------------------------------------------------------------

    def create_build(self, packages: list[str], arch: str | None, requested_by: str | None,
                     jobs: list[PlannedJob]) -> tuple[int, list[int]]:
        """Record a build and its queued jobs in one transaction; the build and job ids.

        A job's ``depends_on`` holds indexes into ``jobs``; they are stored as job ids.
        """
        now = time.time()
        with self.db.write() as db:
            build_id = _insert_build(db, packages, arch, requested_by, now)
            job_ids: list[int] = []
            for job in jobs:
                deps = [job_ids[i] for i in job.depends_on]
                cur = db.execute(
                    "INSERT INTO jobs(build_id, package, version, arch, format, source_kind, "
                    "state, queued_at, snapshot, depends_on) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (build_id, job.package, job.version, job.arch, job.format,
                     job.source_kind.value, JobState.QUEUED.value, now, job.snapshot,
                     json.dumps(deps)))
                assert cur.lastrowid is not None
                job_ids.append(cur.lastrowid)
            record(db, "build.created", build_id=build_id, packages=list(packages),
                   requested_by=requested_by,
                   jobs=[{"id": i, "package": j.package, "version": j.version, "arch": j.arch,
                          "format": j.format}
                         for i, j in zip(job_ids, jobs, strict=True)])
            for job_id, job in zip(job_ids, jobs, strict=True):
                record(db, "job.queued", job_id=job_id, build_id=build_id,
                       package=job.package, version=job.version, arch=job.arch,
                       format=job.format, attempt=1)
        return build_id, job_ids

    def create_local_job(self, package: str, version: str, arch: str, fmt: str,
                         source_kind: SourceKind, worker: str, user: str | None,
                         token_hash: str, lease_seconds: float) -> Job:
        """Record a build that a worker runs on its own (``worker package-add --now``): queued,
        then at once given to that worker."""
        now = time.time()
        with self.db.write() as db:
            build_id = _insert_build(db, [package], arch, user, now)
            cur = db.execute(
                "INSERT INTO jobs(build_id, package, version, arch, format, source_kind, local, "
                "state, enqueued, queued_at, snapshot) VALUES (?,?,?,?,?,?,1,?,1,?,?)",
                (build_id, package, version, arch, fmt, source_kind.value,
                 JobState.QUEUED.value, now, b""))
            assert cur.lastrowid is not None
            job = _job(db, cur.lastrowid)
            assert job is not None
            record(db, "build.created", build_id=build_id, packages=[package],
                   requested_by=user,
                   jobs=[{"id": job.id, "package": package, "version": version, "arch": arch,
                          "format": fmt}])
            record(db, "job.queued", job_id=job.id, build_id=build_id, package=package,
                   version=version, arch=arch, format=fmt, attempt=1)
            _move(db, job, JobState.BUILDING, worker=worker, claimed_by=user,
                  token_hash=token_hash, started_at=now, lease_expires=now + lease_seconds)
            started = _job(db, job.id)
        assert started is not None
        return started

    def get_build(self, build_id: int) -> tuple[Build, list[Job]] | None:
        with self.db.read() as db:
            row = db.execute("SELECT * FROM builds WHERE id=?", (build_id,)).fetchone()
            if row is None:
                return None
            jobs = db.execute(f"{_SELECT} WHERE build_id=? ORDER BY id", (build_id,)).fetchall()
        return Build.from_row(row), [Job.from_row(j) for j in jobs]

    def list_builds(self, limit: int = 50, offset: int = 0) -> list[tuple[Build, list[Job]]]:
        with self.db.read() as db:
            rows = db.execute("SELECT * FROM builds ORDER BY id DESC LIMIT ? OFFSET ?",
                              (limit, offset)).fetchall()
            ids = [r["id"] for r in rows]
            jobs: dict[int, list[Job]] = {i: [] for i in ids}
            if ids:
                marks = ",".join("?" * len(ids))
                for j in db.execute(f"{_SELECT} WHERE build_id IN ({marks}) ORDER BY id", ids):
                    jobs[j["build_id"]].append(Job.from_row(j))
        return [(Build.from_row(r), jobs[r["id"]]) for r in rows]

    def find_builds(self, *, state: str | None = None, package: str | None = None,
                    requester: str | None = None, arch: str | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[int, list[tuple[Build, list[Job]]]]:
        """Builds, newest first, that match every filter given: their state (as
        common.states.build_state sums up its jobs), a package one of its jobs builds, who
        asked for it, an architecture one of its jobs builds for. The number of matches, and
        the page ``offset``, ``limit``."""
        where, args = [], []
        if state is not None:
            where.append(f"({_BUILD_STATE}) = ?")
            args.append(state)
        if package is not None:
            where.append("EXISTS (SELECT 1 FROM jobs j WHERE j.build_id=b.id AND j.package=?)")
            args.append(package)
        if arch is not None:
            where.append("EXISTS (SELECT 1 FROM jobs j WHERE j.build_id=b.id AND j.arch=?)")
            args.append(arch)
        if requester is not None:
            where.append("b.requested_by = ?")
            args.append(requester)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self.db.read() as db:
            total = int(db.execute(f"SELECT count(*) FROM builds b{clause}", args).fetchone()[0])
            ids = [r[0] for r in db.execute(
                f"SELECT b.id FROM builds b{clause} ORDER BY b.id DESC LIMIT ? OFFSET ?",
                [*args, limit, offset])]
            builds = _builds_with_jobs(db, ids)
        return total, builds

    # -- jobs ----------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self.db.read() as db:
            return _job(db, job_id)

    def build_ids(self, job_ids: Iterable[int]) -> dict[int, int]:
        """The build of each of ``job_ids`` that exists (job id -> build id), in one read."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        with self.db.read() as db:
            rows = db.execute(f"SELECT id, build_id FROM jobs WHERE id IN "
                              f"({','.join('?' * len(ids))})", ids).fetchall()
        return {r["id"]: r["build_id"] for r in rows}

    def snapshot(self, job_id: int) -> bytes:
        with self.db.read() as db:
            row = db.execute("SELECT snapshot FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bytes(row["snapshot"]) if row else b""

    def building(self) -> list[Job]:
        with self.db.read() as db:
            rows = db.execute(f"{_SELECT} WHERE state=?", (JobState.BUILDING.value,)).fetchall()
        return [Job.from_row(r) for r in rows]

    def mark_enqueued(self, job_id: int, attempt: int) -> None:
        with self.db.write() as db:
            db.execute("UPDATE jobs SET enqueued=1, enqueued_at=? WHERE id=? AND attempt=?",
                       (time.time(), job_id, attempt))

    def waiting_in_broker(self, older_than: float) -> list[Job]:
        """Queued farm jobs whose message reached the broker before ``older_than`` and that
        no worker has claimed."""
        with self.db.read() as db:
            rows = db.execute(f"{_SELECT} WHERE state=? AND enqueued=1 AND local=0 AND "
                              "enqueued_at<? ORDER BY id",
                              (JobState.QUEUED.value, older_than)).fetchall()
        return [Job.from_row(r) for r in rows]

    def to_enqueue(self) -> list[Job]:
        """Queued jobs whose current attempt never reached the broker and may run now: every
        job they depend on has succeeded."""
        with self.db.read() as db:
            rows = db.execute(f"{_SELECT} WHERE state=? AND enqueued=0 AND local=0 ORDER BY id",
                              (JobState.QUEUED.value,)).fetchall()
            jobs = [Job.from_row(r) for r in rows]
            needed = {d for j in jobs for d in j.depends_on}
            states: dict[int, str] = {}
            if needed:
                marks = ",".join("?" * len(needed))
                states = dict(db.execute(f"SELECT id, state FROM jobs WHERE id IN ({marks})",
                                         list(needed)).fetchall())
        return [j for j in jobs
                if all(states.get(d) == JobState.SUCCESS.value for d in j.depends_on)]

    def claim(self, job_id: int, attempt: int, worker: str, user: str | None,
              token_hash: str, lease_seconds: float) -> bool:
        """Give attempt ``attempt`` of a queued job to ``worker``; False if that is stale."""
        now = time.time()
        with self.db.write() as db:
            job = _job(db, job_id)
            if job is None or job.local or job.attempt != attempt or \
                    job.state != JobState.QUEUED:
                return False
            _move(db, job, JobState.BUILDING, worker=worker, claimed_by=user,
                  token_hash=token_hash, started_at=now, lease_expires=now + lease_seconds,
                  error=None)
            return True

    def renew_lease(self, job_id: int, attempt: int, lease_seconds: float) -> bool:
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_expires=? WHERE id=? AND attempt=? AND state=?",
                (time.time() + lease_seconds, job_id, attempt, JobState.BUILDING.value))
            return cur.rowcount == 1

    def extend_all_leases(self, seconds: float) -> None:
        """Give every running attempt a fresh lease (the master was away; nobody could renew)."""
        with self.db.write() as db:
            db.execute("UPDATE jobs SET lease_expires=? WHERE state=?",
                       (time.time() + seconds, JobState.BUILDING.value))

    def requeue_expired(self) -> list[Job]:
        """Every attempt whose lease ran out: a farm job goes back to the queue as a new
        attempt; a local one (its snapshot never left its worker) fails. Returns them as they
        were."""
        with self.db.write() as db:
            rows = db.execute(f"{_SELECT} WHERE state=? AND lease_expires<?",
                              (JobState.BUILDING.value, time.time())).fetchall()
            expired = [Job.from_row(r) for r in rows]
            for job in expired:
                counters.bump(db, counters.LEASE_EXPIRIES, {"arch": job.arch})
                if job.local:
                    _move(db, job, JobState.FAILED, finished_at=time.time(), lease_expires=None,
                          error=f"the local build on {job.worker} stopped renewing its lease "
                                "(its worker stopped or lost the master)")
                else:
                    _new_attempt(db, job, f"attempt {job.attempt} lost its lease on "
                                          f"{job.worker}; queued again")
        return expired

    def requeue_all_queued(self) -> int:
        """Make every queued job's message stale and mark it for sending again (the broker
        lost its data: whatever was in it is gone, and a message that survives somewhere will
        be refused at its claim). Not a change of state."""
        with self.db.write() as db:
            cur = db.execute("UPDATE jobs SET attempt=attempt+1, enqueued=0 "
                             "WHERE state=? AND local=0", (JobState.QUEUED.value,))
            if cur.rowcount:
                counters.bump(db, counters.BROKER_RESENDS, {"reason": "broker-emptied"},
                              cur.rowcount)
            return cur.rowcount

    def resend(self, job_id: int, attempt: int, reason: str = "message-lost") -> bool:
        """Mark a queued job's message, gone from the broker without a claim (``reason``
        ``message-lost``) or refused at its claim (``held``), for sending again under a new
        attempt number. Whether the job is marked sent does not matter: a worker may take the
        message before its sender marks it, and the sender's late mark names the old attempt,
        so it leaves the new one to be sent."""
        with self.db.write() as db:
            cur = db.execute("UPDATE jobs SET attempt=attempt+1, enqueued=0 WHERE id=? AND "
                             "attempt=? AND state=?", (job_id, attempt, JobState.QUEUED.value))
            if cur.rowcount == 1:
                counters.bump(db, counters.BROKER_RESENDS, {"reason": reason})
            return cur.rowcount == 1

    def finish(self, job_id: int, attempt: int, state: JobState, error: str | None,
               files: list[str]) -> bool:
        """End a running attempt as ``state``; False if it is not running any more. A job
        that did not succeed takes the queued jobs that need it down with it (dep-failed)."""
        with self.db.write() as db:
            job = _job(db, job_id)
            if job is None or job.attempt != attempt or job.state != JobState.BUILDING:
                return False
            if state == JobState.SUCCESS and files:
                record(db, "upload.accepted", job_id=job.id, build_id=job.build_id,
                       files=list(files))
            _move(db, job, state, finished_at=time.time(), error=error, files=json.dumps(files),
                  lease_expires=None)
            if state != JobState.SUCCESS:
                _fail_dependents(db, job)
            return True

    def cancel_build(self, build_id: int) -> list[Job]:
        """Cancel every job of a build that has not ended; the jobs cancelled, as they were."""
        with self.db.write() as db:
            rows = db.execute(f"{_SELECT} WHERE build_id=? AND state IN (?,?)",
                              (build_id, JobState.QUEUED.value, JobState.BUILDING.value))
            jobs = [Job.from_row(r) for r in rows.fetchall()]
            for job in jobs:
                # The token stays: a stopped attempt may still send the rest of its log.
                _move(db, job, JobState.CANCELLED, finished_at=time.time(), error="cancelled",
                      lease_expires=None)
        return jobs

    def restart(self, build_id: int,
                snapshots: Mapping[tuple[str, str], tuple[str, bytes]]) -> list[int]:
        """Queue again every failed, dep-failed or cancelled job of a build as a new attempt.

        ``snapshots`` maps a package and format to its (version, snapshot) as it is now, so a
        fixed definition is what the new attempt builds.
        """
        with self.db.write() as db:
            marks = ",".join("?" * len(RESTARTABLE))
            rows = db.execute(f"{_SELECT} WHERE build_id=? AND local=0 AND state IN ({marks})",
                              (build_id, *(s.value for s in RESTARTABLE))).fetchall()
            jobs = [Job.from_row(r) for r in rows]
            for job in jobs:
                version, snap = snapshots.get((job.package, job.format), (job.version, None))
                _new_attempt(db, job, finished_at=None, files="[]", version=version,
                             queued_at=time.time())
                if snap is not None:
                    db.execute("UPDATE jobs SET snapshot=? WHERE id=?", (snap, job.id))
        return [j.id for j in jobs]

    # -- staged uploads ------------------------------------------------------------------------

    def stage(self, staged: StagedFile) -> None:
        with self.db.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO staged(job_id, attempt, filename, kind, path, size, "
                "sha256, md5, sha1, entry, name, version, arch, pool_path) VALUES "
                "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (staged.job_id, staged.attempt, staged.filename, staged.kind, staged.path,
                 staged.size, staged.sha256, staged.md5, staged.sha1, staged.entry,
                 staged.name, staged.version, staged.arch, staged.pool_path))

    def staged(self, job_id: int, attempt: int) -> list[StagedFile]:
        with self.db.read() as db:
            rows = db.execute("SELECT * FROM staged WHERE job_id=? AND attempt=?",
                              (job_id, attempt)).fetchall()
        return [StagedFile.from_row(r) for r in rows]

    def drop_staged(self, job_id: int) -> list[str]:
        """Forget every staged file of a job; their paths, for removal."""
        with self.db.write() as db:
            paths = [r[0] for r in db.execute("SELECT path FROM staged WHERE job_id=?",
                                               (job_id,))]
            db.execute("DELETE FROM staged WHERE job_id=?", (job_id,))
        return paths


#: A build's state in SQL, as common.states.build_state sums it up from its jobs' states.
_BUILD_STATE = """SELECT CASE
    WHEN count(*) = 0 THEN 'queued'
    WHEN sum(j.state = 'success') = count(*) THEN 'success'
    WHEN sum(j.state = 'building') > 0 THEN 'building'
    WHEN sum(j.state = 'queued') > 0 THEN
        CASE WHEN sum(j.state = 'queued') < count(*) THEN 'building' ELSE 'queued' END
    WHEN sum(j.state = 'failed') > 0 THEN 'failed'
    WHEN sum(j.state = 'dep-failed') > 0 THEN 'dep-failed'
    WHEN sum(j.state = 'cancelled') > 0 THEN 'cancelled'
    ELSE 'success' END FROM jobs j WHERE j.build_id = b.id"""


def _builds_with_jobs(db: sqlite3.Connection, ids: list[int]) -> list[tuple[Build, list[Job]]]:
    """The builds of ``ids``, in that order, each with its jobs."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = {r["id"]: r for r in db.execute(f"SELECT * FROM builds WHERE id IN ({marks})", ids)}
    jobs: dict[int, list[Job]] = {i: [] for i in ids}
    for j in db.execute(f"{_SELECT} WHERE build_id IN ({marks}) ORDER BY id", ids):
        jobs[j["build_id"]].append(Job.from_row(j))
    return [(Build.from_row(rows[i]), jobs[i]) for i in ids]


def _insert_build(db: sqlite3.Connection, packages: list[str], arch: str | None,
                  requested_by: str | None, now: float) -> int:
    cur = db.execute("INSERT INTO builds(created_at, requested_by, packages, arch) "
                     "VALUES (?,?,?,?)", (now, requested_by, json.dumps(packages), arch))
    assert cur.lastrowid is not None
    return cur.lastrowid


def _fail_dependents(db: sqlite3.Connection, failed: Job) -> None:
    """Mark every queued job of the build that needs ``failed`` (directly or not) dep-failed."""
    todo = [(failed.id, f"{failed.package} ({failed.arch})")]
    while todo:
        job_id, what = todo.pop()
        rows = db.execute(f"{_SELECT} WHERE build_id=? AND state=?",
                          (failed.build_id, JobState.QUEUED.value)).fetchall()
        for job in (Job.from_row(r) for r in rows):
            if job_id in job.depends_on:
                _move(db, job, JobState.DEP_FAILED, finished_at=time.time(),
                      error=f"needs {what}, which did not build")
                todo.append((job.id, what))
