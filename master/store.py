"""The master's durable store: builds, jobs, published packages and worker heartbeats.

SQLite in WAL mode under ``data_dir``: every gunicorn process and the master's CLI open it
themselves, writes are serialised by SQLite (``BEGIN IMMEDIATE``), and ``synchronous=FULL``
keeps a committed build across a crash of the master or the machine. Redis is only the queue:
whatever is here is the truth.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.states import JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at   REAL NOT NULL,
    requested_by TEXT,
    packages     TEXT NOT NULL,          -- JSON list of the names asked for
    arch         TEXT                     -- the arch asked for, if any
);
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id    INTEGER NOT NULL REFERENCES builds(id),
    package     TEXT NOT NULL,
    version     TEXT NOT NULL,
    arch        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    enqueued    INTEGER NOT NULL DEFAULT 0, -- the current attempt's message reached the broker
    worker      TEXT,
    claimed_by  TEXT,                     -- the user the worker authenticated as
    token_hash  TEXT,
    lease_expires REAL,                   -- a building attempt is re-queued after this
    queued_at   REAL,
    started_at  REAL,
    finished_at REAL,
    error       TEXT,
    files       TEXT NOT NULL DEFAULT '[]',
    depends_on  TEXT NOT NULL DEFAULT '[]', -- ids of jobs of the same build that must succeed
    snapshot    BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS staged (
    job_id    INTEGER NOT NULL REFERENCES jobs(id),
    attempt   INTEGER NOT NULL,
    filename  TEXT NOT NULL,
    kind      TEXT NOT NULL,              -- deb (for the pool) or buildinfo (kept with the build)
    path      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    md5       TEXT NOT NULL,
    sha1      TEXT NOT NULL,
    stanza    TEXT,
    name      TEXT,
    version   TEXT,
    arch      TEXT,
    pool_path TEXT,
    PRIMARY KEY (job_id, attempt, filename)
);
CREATE INDEX IF NOT EXISTS jobs_build ON jobs(build_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS packages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    suite       TEXT NOT NULL,
    component   TEXT NOT NULL,
    grp         INTEGER NOT NULL,          -- the index group (master.index.group_of(name))
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    arch        TEXT NOT NULL,
    filename    TEXT NOT NULL,
    pool_path   TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    stanza      TEXT NOT NULL,             -- the Packages entry, computed once at upload
    uploaded_at REAL NOT NULL,
    uploaded_by TEXT,
    job_id      INTEGER,
    UNIQUE (suite, component, filename)
);
CREATE INDEX IF NOT EXISTS packages_name ON packages(name);
CREATE INDEX IF NOT EXISTS packages_group ON packages(suite, component, grp);
CREATE TABLE IF NOT EXISTS index_dirty (
    suite TEXT NOT NULL, component TEXT NOT NULL, grp INTEGER NOT NULL,
    PRIMARY KEY (suite, component, grp)
);
CREATE TABLE IF NOT EXISTS index_groups (
    suite TEXT NOT NULL, component TEXT NOT NULL, arch TEXT NOT NULL, grp INTEGER NOT NULL,
    plain BLOB NOT NULL, gz BLOB NOT NULL, xz BLOB NOT NULL,
    xz_unpadded INTEGER NOT NULL, xz_size INTEGER NOT NULL,
    PRIMARY KEY (suite, component, arch, grp)
);
CREATE TABLE IF NOT EXISTS workers (
    name      TEXT PRIMARY KEY,
    info      TEXT NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta(key, value) VALUES ('packages_generation', 0), ('index_generation', 0);
"""


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"], build_id=row["build_id"], package=row["package"],
            version=row["version"], arch=row["arch"], state=JobState(row["state"]),
            attempt=row["attempt"], enqueued=bool(row["enqueued"]), worker=row["worker"],
            claimed_by=row["claimed_by"], token_hash=row["token_hash"],
            lease_expires=row["lease_expires"], queued_at=row["queued_at"],
            started_at=row["started_at"], finished_at=row["finished_at"], error=row["error"],
            files=tuple(json.loads(row["files"])),
            depends_on=tuple(json.loads(row["depends_on"])),
        )


@dataclass(frozen=True)
class Build:
    id: int
    created_at: float
    requested_by: str | None
    packages: tuple[str, ...]
    arch: str | None


@dataclass(frozen=True)
class PackageRecord:
    id: int
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
    stanza: str
    uploaded_at: float
    uploaded_by: str | None
    job_id: int | None


_JOB_COLUMNS = ("id, build_id, package, version, arch, state, attempt, enqueued, worker, "
                "claimed_by, token_hash, lease_expires, queued_at, started_at, finished_at, "
                "error, files, depends_on")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        finally:
            db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction that holds SQLite's write lock from its start."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # -- builds and jobs -----------------------------------------------------------------------

    def create_build(
        self, packages: list[str], arch: str | None, requested_by: str | None,
        jobs: list[PlannedJob],
    ) -> tuple[int, list[int]]:
        """Record a build and its jobs in one transaction; returns the build and job ids.

        A job's ``depends_on`` holds indexes into ``jobs``; they are stored as job ids.
        """
        now = time.time()
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO builds(created_at, requested_by, packages, arch) VALUES (?,?,?,?)",
                (now, requested_by, json.dumps(packages), arch),
            )
            build_id = cur.lastrowid
            assert build_id is not None
            job_ids: list[int] = []
            for job in jobs:
                deps = [job_ids[i] for i in job.depends_on]
                cur = db.execute(
                    "INSERT INTO jobs(build_id, package, version, arch, state, queued_at, "
                    "snapshot, depends_on) VALUES (?,?,?,?,?,?,?,?)",
                    (build_id, job.package, job.version, job.arch, JobState.QUEUED.value, now,
                     job.snapshot, json.dumps(deps)),
                )
                assert cur.lastrowid is not None
                job_ids.append(cur.lastrowid)
        return build_id, job_ids

    def get_build(self, build_id: int) -> tuple[Build, list[Job]] | None:
        with self.read() as db:
            row = db.execute("SELECT * FROM builds WHERE id=?", (build_id,)).fetchone()
            if row is None:
                return None
            jobs = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE build_id=? ORDER BY id", (build_id,)
            ).fetchall()
        return _build_from_row(row), [Job.from_row(j) for j in jobs]

    def list_builds(self, limit: int = 50, offset: int = 0) -> list[tuple[Build, list[Job]]]:
        with self.read() as db:
            rows = db.execute(
                "SELECT * FROM builds ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            ids = [r["id"] for r in rows]
            jobs: dict[int, list[Job]] = {i: [] for i in ids}
            if ids:
                marks = ",".join("?" * len(ids))
                for j in db.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE build_id IN ({marks}) ORDER BY id",
                    ids,
                ):
                    jobs[j["build_id"]].append(Job.from_row(j))
        return [(_build_from_row(r), jobs[r["id"]]) for r in rows]

    def get_job(self, job_id: int) -> Job | None:
        with self.read() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_row(row) if row else None

    def job_snapshot(self, job_id: int) -> bytes:
        with self.read() as db:
            row = db.execute("SELECT snapshot FROM jobs WHERE id=?", (job_id,)).fetchone()
        return bytes(row["snapshot"]) if row else b""

    def mark_enqueued(self, job_id: int, attempt: int) -> None:
        with self.write() as db:
            db.execute("UPDATE jobs SET enqueued=1 WHERE id=? AND attempt=?", (job_id, attempt))

    def jobs_to_enqueue(self) -> list[Job]:
        """Queued jobs whose current attempt never reached the broker and may run now.

        A job waits until every job it depends on has succeeded.
        """
        with self.read() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state=? AND enqueued=0 ORDER BY id",
                (JobState.QUEUED.value,),
            ).fetchall()
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
        """Hand attempt ``attempt`` of a queued job to ``worker``; False if that is stale."""
        now = time.time()
        with self.write() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, worker=?, claimed_by=?, token_hash=?, started_at=?, "
                "lease_expires=?, error=NULL WHERE id=? AND attempt=? AND state=?",
                (JobState.BUILDING.value, worker, user, token_hash, now, now + lease_seconds,
                 job_id, attempt, JobState.QUEUED.value),
            )
            return cur.rowcount == 1

    def create_local_job(self, package: str, version: str, arch: str, worker: str,
                         user: str | None, token_hash: str, lease_seconds: float) -> Job:
        """Record a build that a worker runs on its own (``worker package-add --now``)."""
        now = time.time()
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO builds(created_at, requested_by, packages, arch) VALUES (?,?,?,?)",
                (now, user, json.dumps([package]), arch),
            )
            cur = db.execute(
                "INSERT INTO jobs(build_id, package, version, arch, state, enqueued, worker, "
                "claimed_by, token_hash, lease_expires, queued_at, started_at, snapshot) "
                "VALUES (?,?,?,?,?,1,?,?,?,?,?,?,?)",
                (cur.lastrowid, package, version, arch, JobState.BUILDING.value, worker, user,
                 token_hash, now + lease_seconds, now, now, b""),
            )
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?",
                             (cur.lastrowid,)).fetchone()
        return Job.from_row(row)

    def renew_lease(self, job_id: int, attempt: int, lease_seconds: float) -> bool:
        with self.write() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_expires=? WHERE id=? AND attempt=? AND state=?",
                (time.time() + lease_seconds, job_id, attempt, JobState.BUILDING.value),
            )
            return cur.rowcount == 1

    def extend_all_leases(self, seconds: float) -> None:
        """Give every running attempt a fresh lease (the master was away; nobody could renew)."""
        with self.write() as db:
            db.execute("UPDATE jobs SET lease_expires=? WHERE state=?",
                       (time.time() + seconds, JobState.BUILDING.value))

    def requeue_expired(self) -> list[Job]:
        """Send every attempt whose lease ran out back to the queue as a new attempt."""
        with self.write() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state=? AND lease_expires<?",
                (JobState.BUILDING.value, time.time()),
            ).fetchall()
            for row in rows:
                db.execute(
                    "UPDATE jobs SET state=?, attempt=attempt+1, enqueued=0, worker=NULL, "
                    "claimed_by=NULL, token_hash=NULL, lease_expires=NULL, started_at=NULL, "
                    "error=? WHERE id=?",
                    (JobState.QUEUED.value,
                     f"attempt {row['attempt']} lost its lease on {row['worker']}; queued again",
                     row["id"]),
                )
        return [Job.from_row(r) for r in rows]

    def requeue_all_queued(self) -> int:
        """Make every queued job's message stale and mark it for sending again.

        Used when the broker lost its data: whatever was in it is gone, and any message that
        survives somewhere will be refused at its claim.
        """
        with self.write() as db:
            cur = db.execute("UPDATE jobs SET attempt=attempt+1, enqueued=0 WHERE state=?",
                             (JobState.QUEUED.value,))
            return cur.rowcount

    def finish(self, job_id: int, attempt: int, state: JobState, error: str | None,
               files: list[str]) -> bool:
        with self.write() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, finished_at=?, error=?, files=?, lease_expires=NULL "
                "WHERE id=? AND attempt=? AND state=?",
                (state.value, time.time(), error, json.dumps(files), job_id, attempt,
                 JobState.BUILDING.value),
            )
            if cur.rowcount != 1:
                return False
            if state != JobState.SUCCESS:
                _fail_dependents(db, job_id)
            return True

    def cancel_build(self, build_id: int) -> list[Job]:
        """Cancel every job of a build that has not ended; returns the jobs cancelled."""
        with self.write() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE build_id=? AND state IN (?,?)",
                (build_id, JobState.QUEUED.value, JobState.BUILDING.value),
            ).fetchall()
            # The token stays: a stopped attempt may still send the rest of its log.
            db.execute(
                "UPDATE jobs SET state=?, finished_at=?, error=?, lease_expires=NULL "
                "WHERE build_id=? AND state IN (?,?)",
                (JobState.CANCELLED.value, time.time(), "cancelled", build_id,
                 JobState.QUEUED.value, JobState.BUILDING.value),
            )
        return [Job.from_row(r) for r in rows]

    def restart_jobs(self, build_id: int, snapshots: dict[str, tuple[str, bytes]]) -> list[int]:
        """Queue again every failed, dep-failed or cancelled job of a build as a new attempt.

        ``snapshots`` maps a package to its (version, snapshot) as it is now, so a fixed
        definition is what the new attempt builds.
        """
        restartable = (JobState.FAILED.value, JobState.DEP_FAILED.value,
                       JobState.CANCELLED.value)
        with self.write() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE build_id=? AND state IN (?,?,?)",
                (build_id, *restartable),
            ).fetchall()
            for row in rows:
                version, snap = snapshots.get(row["package"], (row["version"], None))
                db.execute(
                    "UPDATE jobs SET state=?, attempt=attempt+1, enqueued=0, worker=NULL, "
                    "claimed_by=NULL, token_hash=NULL, lease_expires=NULL, started_at=NULL, "
                    "finished_at=NULL, error=NULL, files='[]', version=?, "
                    "snapshot=COALESCE(?, snapshot), queued_at=? WHERE id=?",
                    (JobState.QUEUED.value, version, snap, time.time(), row["id"]),
                )
        return [r["id"] for r in rows]

    # -- staged uploads ----------------------------------------------------------------------

    def stage(self, rec: dict[str, Any]) -> None:
        with self.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO staged(job_id, attempt, filename, kind, path, size, "
                "sha256, md5, sha1, stanza, name, version, arch, pool_path) VALUES "
                "(:job_id, :attempt, :filename, :kind, :path, :size, :sha256, :md5, :sha1, "
                ":stanza, :name, :version, :arch, :pool_path)", rec)

    def staged(self, job_id: int, attempt: int) -> list[dict[str, Any]]:
        with self.read() as db:
            rows = db.execute("SELECT * FROM staged WHERE job_id=? AND attempt=?",
                              (job_id, attempt)).fetchall()
        return [dict(r) for r in rows]

    def drop_staged(self, job_id: int) -> list[str]:
        """Forget every staged file of a job; returns their paths for removal."""
        with self.write() as db:
            paths = [r[0] for r in db.execute("SELECT path FROM staged WHERE job_id=?",
                                               (job_id,))]
            db.execute("DELETE FROM staged WHERE job_id=?", (job_id,))
        return paths

    def building_jobs(self) -> list[Job]:
        with self.read() as db:
            rows = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state=?",
                              (JobState.BUILDING.value,)).fetchall()
        return [Job.from_row(r) for r in rows]

    # -- packages ------------------------------------------------------------------------------

    def add_packages(self, recs: list[dict[str, Any]]) -> int:
        """Record archives in one transaction (an index shows all of them or none); returns
        the packages generation they belong to."""
        with self.write() as db:
            for rec in recs:
                db.execute(
                    "INSERT OR REPLACE INTO packages(suite, component, grp, name, version, "
                    "arch, filename, pool_path, size, sha256, stanza, uploaded_at, "
                    "uploaded_by, job_id) VALUES (:suite, :component, :grp, :name, :version, "
                    ":arch, :filename, :pool_path, :size, :sha256, :stanza, :uploaded_at, "
                    ":uploaded_by, :job_id)",
                    rec,
                )
                _mark_dirty(db, rec["suite"], rec["component"], rec["grp"])
            return _bump_generation(db)

    def remove_packages(self, name: str, version: str | None, arch: str | None
                        ) -> tuple[int, list[PackageRecord]]:
        """Forget published archives of ``name``; returns the new generation and what went."""
        query, args = "SELECT * FROM packages WHERE name=?", [name]
        if version is not None:
            query, args = query + " AND version=?", [*args, version]
        if arch is not None:
            query, args = query + " AND arch=?", [*args, arch]
        with self.write() as db:
            rows = [PackageRecord(**dict(r)) for r in db.execute(query, args)]
            for rec in rows:
                db.execute("DELETE FROM packages WHERE id=?", (rec.id,))
                _mark_dirty(db, rec.suite, rec.component, rec.grp)
            gen = _bump_generation(db)
        return gen, rows

    def delete_records(self, ids: list[int]) -> int:
        """Forget the given package rows (retention); returns the new generation."""
        with self.write() as db:
            for rec_id in ids:
                row = db.execute("SELECT suite, component, grp FROM packages WHERE id=?",
                                 (rec_id,)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM packages WHERE id=?", (rec_id,))
                    _mark_dirty(db, row["suite"], row["component"], row["grp"])
            return _bump_generation(db)

    def pool_path_in_use(self, pool_path: str) -> bool:
        with self.read() as db:
            return db.execute("SELECT 1 FROM packages WHERE pool_path=? LIMIT 1",
                              (pool_path,)).fetchone() is not None

    # -- the incremental index ---------------------------------------------------------------

    def dirty_groups(self) -> set[tuple[str, str, int]]:
        with self.read() as db:
            return {(r[0], r[1], r[2]) for r in
                    db.execute("SELECT suite, component, grp FROM index_dirty")}

    def clear_dirty(self, groups: set[tuple[str, str, int]]) -> None:
        with self.write() as db:
            db.executemany("DELETE FROM index_dirty WHERE suite=? AND component=? AND grp=?",
                           list(groups))

    def mark_all_dirty(self, suites: tuple[str, ...], components: tuple[str, ...],
                       groups: int) -> None:
        with self.write() as db:
            for suite in suites:
                for comp in components:
                    for grp in range(groups):
                        _mark_dirty(db, suite, comp, grp)

    def records_in_groups(self, groups: set[tuple[str, str, int]]) -> list[PackageRecord]:
        wanted = set(groups)
        with self.read() as db:
            rows = db.execute("SELECT * FROM packages").fetchall() if len(wanted) > 64 else [
                r for key in wanted for r in db.execute(
                    "SELECT * FROM packages WHERE suite=? AND component=? AND grp=?", key)]
        return [PackageRecord(**dict(r)) for r in rows
                if (r["suite"], r["component"], r["grp"]) in wanted]

    def save_groups(self, pieces: dict[tuple[str, str, int, str], Any]) -> None:
        with self.write() as db:
            for (suite, comp, grp, arch), p in pieces.items():
                db.execute(
                    "INSERT OR REPLACE INTO index_groups(suite, component, arch, grp, plain, "
                    "gz, xz, xz_unpadded, xz_size) VALUES (?,?,?,?,?,?,?,?,?)",
                    (suite, comp, arch, grp, p.plain, p.gz, p.xz, p.xz_unpadded, p.xz_size))

    def groups(self, suite: str, component: str, arch: str) -> list[IndexGroup]:
        """The cached pieces of one Packages file, in group order (empty groups left out)."""
        with self.read() as db:
            rows = db.execute(
                "SELECT plain, gz, xz, xz_unpadded, xz_size FROM index_groups "
                "WHERE suite=? AND component=? AND arch=? AND length(plain)>0 ORDER BY grp",
                (suite, component, arch)).fetchall()
        return [IndexGroup(bytes(r["plain"]), bytes(r["gz"]), bytes(r["xz"]),
                           r["xz_unpadded"], r["xz_size"]) for r in rows]

    def package_by_filename(self, filename: str) -> PackageRecord | None:
        with self.read() as db:
            row = db.execute("SELECT * FROM packages WHERE filename=?", (filename,)).fetchone()
        return PackageRecord(**dict(row)) if row else None

    def package_in(self, suite: str, component: str, filename: str) -> PackageRecord | None:
        with self.read() as db:
            row = db.execute("SELECT * FROM packages WHERE suite=? AND component=? AND "
                             "filename=?", (suite, component, filename)).fetchone()
        return PackageRecord(**dict(row)) if row else None

    def packages(self, name: str | None = None) -> list[PackageRecord]:
        with self.read() as db:
            if name is None:
                rows = db.execute("SELECT * FROM packages ORDER BY name, id").fetchall()
            else:
                rows = db.execute("SELECT * FROM packages WHERE name=? ORDER BY id",
                                  (name,)).fetchall()
        return [PackageRecord(**dict(r)) for r in rows]

    def packages_generation(self) -> int:
        with self.read() as db:
            return int(db.execute(
                "SELECT value FROM meta WHERE key='packages_generation'").fetchone()[0])

    def index_generation(self) -> int:
        with self.read() as db:
            return int(db.execute(
                "SELECT value FROM meta WHERE key='index_generation'").fetchone()[0])

    def set_index_generation(self, gen: int) -> None:
        with self.write() as db:
            db.execute("UPDATE meta SET value=? WHERE key='index_generation'", (gen,))

    # -- workers -------------------------------------------------------------------------------

    def heartbeat(self, name: str, info: dict[str, Any]) -> None:
        with self.write() as db:
            db.execute(
                "INSERT INTO workers(name, info, last_seen) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET info=excluded.info, last_seen=excluded.last_seen",
                (name, json.dumps(info), time.time()),
            )

    def forget_worker(self, name: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM workers WHERE name=?", (name,))

    def live_workers(self, ttl: float) -> list[tuple[str, dict[str, Any], float]]:
        with self.read() as db:
            rows = db.execute(
                "SELECT name, info, last_seen FROM workers WHERE last_seen>=? ORDER BY name",
                (time.time() - ttl,),
            ).fetchall()
        return [(r["name"], json.loads(r["info"]), r["last_seen"]) for r in rows]


@dataclass(frozen=True)
class IndexGroup:
    """One group's share of a Packages file: its text, gzip member and xz block."""

    plain: bytes
    gz: bytes
    xz: bytes
    xz_unpadded: int
    xz_size: int


@dataclass(frozen=True)
class PlannedJob:
    package: str
    version: str
    arch: str
    snapshot: bytes
    #: indexes of the jobs (in the same plan) that must succeed first
    depends_on: tuple[int, ...] = ()


def _fail_dependents(db: sqlite3.Connection, failed_id: int) -> None:
    """Mark every queued job that needs ``failed_id`` (directly or not) dep-failed."""
    failed = db.execute("SELECT build_id, package, arch FROM jobs WHERE id=?",
                        (failed_id,)).fetchone()
    todo = [(failed_id, f"{failed['package']} ({failed['arch']})")]
    while todo:
        job_id, what = todo.pop()
        for row in db.execute("SELECT id, depends_on, package, arch FROM jobs "
                              "WHERE build_id=? AND state=?",
                              (failed["build_id"], JobState.QUEUED.value)).fetchall():
            if job_id in json.loads(row["depends_on"]):
                db.execute("UPDATE jobs SET state=?, finished_at=?, error=? WHERE id=?",
                           (JobState.DEP_FAILED.value, time.time(),
                            f"needs {what}, which did not build", row["id"]))
                todo.append((row["id"], what))


def _mark_dirty(db: sqlite3.Connection, suite: str, component: str, grp: int) -> None:
    db.execute("INSERT OR IGNORE INTO index_dirty(suite, component, grp) VALUES (?,?,?)",
               (suite, component, grp))


def _bump_generation(db: sqlite3.Connection) -> int:
    db.execute("UPDATE meta SET value=value+1 WHERE key='packages_generation'")
    return int(db.execute(
        "SELECT value FROM meta WHERE key='packages_generation'").fetchone()[0])


def _build_from_row(row: sqlite3.Row) -> Build:
    return Build(
        id=row["id"], created_at=row["created_at"], requested_by=row["requested_by"],
        packages=tuple(json.loads(row["packages"])), arch=row["arch"],
    )
