"""The master's SQLite database: connections, transactions, the schema and its migrations.

SQLite in WAL mode under ``data_dir``: every gunicorn process and the master's CLI open it
themselves, writes are serialised by SQLite (``BEGIN IMMEDIATE``), and ``synchronous=FULL``
keeps a committed build across a crash of the master or the machine. Each process keeps a few
idle connections for its next transactions (opening one, and reading the schema into it, cost
a third of the master's time on the busiest paths); a process made by fork() never uses its
parent's, as SQLite requires.

The schema's version is SQLite's ``user_version``. A database written by an older pkgfarm is
migrated in place when the store opens it, one step per version, each step in one transaction
(after a copy of the old file is kept beside it); a database newer than this code is refused
with a message that says so. The first released schema (pkgfarm as of commit 426347d) had no
version: it is recognised by its tables and counted as version 1. Every later change to the
schema adds a step to `MIGRATIONS` and raises `SCHEMA_VERSION`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 8

#: index groups per suite, component and architecture (how the index cache is cut)
GROUPS = 256

SCHEMA = """
CREATE TABLE builds (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at   REAL NOT NULL,
    requested_by TEXT,
    packages     TEXT NOT NULL,           -- JSON list of the names asked for
    arch         TEXT                     -- the arch asked for, if any
);
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id    INTEGER NOT NULL REFERENCES builds(id),
    package     TEXT NOT NULL,
    version     TEXT NOT NULL,
    arch        TEXT NOT NULL,
    format      TEXT NOT NULL DEFAULT 'deb',          -- the package format it makes
    source_kind TEXT NOT NULL DEFAULT 'definition',   -- what its snapshot holds
    local       INTEGER NOT NULL DEFAULT 0,           -- built by `worker package-add --now`
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,
    enqueued    INTEGER NOT NULL DEFAULT 0, -- the current attempt's message reached the broker
    enqueued_at REAL,                     -- when it did
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
CREATE INDEX jobs_build ON jobs(build_id);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX jobs_finished ON jobs(finished_at);
CREATE INDEX jobs_worker ON jobs(worker);
CREATE TABLE staged (
    job_id    INTEGER NOT NULL REFERENCES jobs(id),
    attempt   INTEGER NOT NULL,
    filename  TEXT NOT NULL,
    kind      TEXT NOT NULL,              -- archive (for the pool) or auxiliary (kept with it)
    path      TEXT NOT NULL,
    size      INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    md5       TEXT NOT NULL,
    sha1      TEXT NOT NULL,
    entry     TEXT,                       -- the archive's index entry, in its format
    name      TEXT,
    version   TEXT,
    arch      TEXT,
    pool_path TEXT,
    PRIMARY KEY (job_id, attempt, filename)
);
CREATE TABLE packages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    format      TEXT NOT NULL,
    suite       TEXT NOT NULL,
    component   TEXT NOT NULL,
    grp         INTEGER NOT NULL,          -- the index group (master.store.group_of(name))
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    arch        TEXT NOT NULL,
    filename    TEXT NOT NULL,
    pool_path   TEXT NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    entry       TEXT NOT NULL,             -- the format's index entry, computed once at upload
    uploaded_at REAL NOT NULL,
    uploaded_by TEXT,
    job_id      INTEGER,
    UNIQUE (format, suite, component, filename)
);
CREATE INDEX packages_name ON packages(name);
CREATE INDEX packages_group ON packages(format, suite, component, grp);
CREATE INDEX packages_filename ON packages(filename);
CREATE INDEX packages_pool_path ON packages(pool_path);
CREATE TABLE index_dirty (
    format TEXT NOT NULL, suite TEXT NOT NULL, component TEXT NOT NULL, grp INTEGER NOT NULL,
    PRIMARY KEY (format, suite, component, grp)
);
CREATE TABLE index_cache (                -- pieces a format keeps to rewrite its index fast
    format TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (format, key)
);
CREATE TABLE workers (
    name      TEXT PRIMARY KEY,
    info      TEXT NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE login_failures (            -- failed logins, shared by every master process
    user    TEXT NOT NULL,
    address TEXT NOT NULL,
    at      REAL NOT NULL
);
CREATE INDEX login_failures_pair ON login_failures(user, address, at);
CREATE TABLE events (                   -- what happened, in commit order (master.store.events)
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       REAL NOT NULL,
    kind     TEXT NOT NULL,
    build_id INTEGER,
    job_id   INTEGER,
    data     TEXT NOT NULL                -- JSON object: the kind's own fields
);
CREATE INDEX events_build ON events(build_id);
CREATE INDEX events_at ON events(at);
CREATE TABLE worker_flags (             -- what the master knows of a worker besides heartbeats
    name    TEXT PRIMARY KEY,
    online  INTEGER NOT NULL DEFAULT 0,   -- its worker.online was the last of its events
    drained INTEGER NOT NULL DEFAULT 0    -- finishes what it builds, claims nothing new
);
CREATE TABLE queue_flags (
    queue  TEXT PRIMARY KEY,              -- a build.* queue
    paused INTEGER NOT NULL DEFAULT 0     -- its jobs stay queued until it is resumed
);
CREATE TABLE users (                     -- users made at run time (config users are not here)
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,          -- a werkzeug hash
    roles         TEXT NOT NULL,          -- JSON list
    packages      TEXT NOT NULL DEFAULT '[]', -- JSON list of package name patterns
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    created_by    TEXT
);
CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,      -- sha256 of the secret, which is shown once
    user       TEXT,                      -- the user it acts for, if any
    roles      TEXT NOT NULL,             -- JSON list
    created_at REAL NOT NULL,
    created_by TEXT
);
CREATE TABLE secrets (                   -- made once, shared by every master process
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE web_sessions (              -- the dashboard's open log-ins
    id_hash    TEXT PRIMARY KEY,          -- sha256 of the id the session cookie carries
    user       TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires    REAL NOT NULL
);
CREATE TABLE queue_samples (             -- queue lengths over time, for the dashboard
    at     REAL NOT NULL,
    queue  TEXT NOT NULL,
    length INTEGER NOT NULL
);
CREATE INDEX queue_samples_at ON queue_samples(at);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta(key, value) VALUES ('packages_generation', 0), ('index_generation', 0);
CREATE TABLE counters (                 -- monotonic counters for /metrics (master.store.counters)
    name   TEXT NOT NULL,
    labels TEXT NOT NULL,                 -- JSON object of the label values
    value  REAL NOT NULL,
    PRIMARY KEY (name, labels)
);
CREATE TABLE webhook_deliveries (         -- one notification to one hook (master.webhooks)
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery     TEXT NOT NULL UNIQUE,    -- the id sent as X-Pkgfarm-Delivery
    hook         TEXT NOT NULL,
    event_id     INTEGER,
    kind         TEXT NOT NULL,
    build_id     INTEGER,
    body         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    state        TEXT NOT NULL,           -- pending, delivered or failed (given up)
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try     REAL NOT NULL,
    last_try     REAL,
    last_status  INTEGER,
    last_error   TEXT,
    delivered_at REAL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_try);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(hook, build_id, seq);
CREATE TABLE leases (                     -- who does a one-process-at-a-time task, until when
    name    TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires REAL NOT NULL
);
INSERT INTO meta(key, value) VALUES ('webhooks_cursor', 0);
"""


def group_of(name: str) -> int:
    """The index group of a package name."""
    return zlib.crc32(name.encode()) % GROUPS


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Run SQL statements one by one inside the caller's transaction (``executescript`` would
    commit it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]}")


def _is_debian_source_snapshot(data: bytes | None) -> int:
    """SQL function for the first migration: 1 if a snapshot holds a Debian source."""
    if not data:
        return 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            return int(any(m.name.lstrip("./") == "debian-source.json" for m in tar))
    except (tarfile.TarError, OSError, EOFError):
        return 0


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """426347d's schema to the format seam: jobs know their format, source kind and whether
    they are local; packages and staged files carry a format-neutral index entry; the APT
    index cache becomes a cache per format (rebuilt: every group is marked to render)."""
    db.create_function("is_debian_source", 1, _is_debian_source_snapshot)
    run_script(db, """
        ALTER TABLE jobs ADD COLUMN format TEXT NOT NULL DEFAULT 'deb';
        ALTER TABLE jobs ADD COLUMN source_kind TEXT NOT NULL DEFAULT 'definition';
        ALTER TABLE jobs ADD COLUMN local INTEGER NOT NULL DEFAULT 0;
        UPDATE jobs SET local = 1 WHERE length(snapshot) = 0;
        UPDATE jobs SET source_kind = 'debian-source' WHERE is_debian_source(snapshot) = 1;

        ALTER TABLE staged RENAME COLUMN stanza TO entry;
        UPDATE staged SET kind = CASE kind WHEN 'deb' THEN 'archive' ELSE 'auxiliary' END;

        CREATE TABLE packages_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT, format TEXT NOT NULL, suite TEXT NOT NULL,
            component TEXT NOT NULL, grp INTEGER NOT NULL, name TEXT NOT NULL,
            version TEXT NOT NULL, arch TEXT NOT NULL, filename TEXT NOT NULL,
            pool_path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
            entry TEXT NOT NULL, uploaded_at REAL NOT NULL, uploaded_by TEXT, job_id INTEGER,
            UNIQUE (format, suite, component, filename));
        INSERT INTO packages_v2(id, format, suite, component, grp, name, version, arch,
                                filename, pool_path, size, sha256, entry, uploaded_at,
                                uploaded_by, job_id)
            SELECT id, 'deb', suite, component, grp, name, version, arch, filename, pool_path,
                   size, sha256, stanza, uploaded_at, uploaded_by, job_id FROM packages;
        DROP TABLE packages;
        ALTER TABLE packages_v2 RENAME TO packages;
        CREATE INDEX packages_name ON packages(name);
        CREATE INDEX packages_group ON packages(format, suite, component, grp);

        DROP TABLE index_dirty;
        CREATE TABLE index_dirty (
            format TEXT NOT NULL, suite TEXT NOT NULL, component TEXT NOT NULL,
            grp INTEGER NOT NULL, PRIMARY KEY (format, suite, component, grp));
        INSERT INTO index_dirty(format, suite, component, grp)
            SELECT DISTINCT format, suite, component, grp FROM packages;
        DROP TABLE index_groups;
        CREATE TABLE index_cache (
            format TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (format, key));
    """)


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Failed logins shared by all master processes; when a job's message was sent (to find
    messages the broker lost or a worker consumed without claiming)."""
    run_script(db, """
        ALTER TABLE jobs ADD COLUMN enqueued_at REAL;
        CREATE TABLE login_failures (
            user TEXT NOT NULL, address TEXT NOT NULL, at REAL NOT NULL);
        CREATE INDEX login_failures_pair ON login_failures(user, address, at);
    """)


def _migrate_3_to_4(db: sqlite3.Connection) -> None:
    """Uploads look packages up by file name and pool path: without these indexes each
    accepted upload scanned the whole table (58 ms instead of 22 ms at 20,000 packages)."""
    run_script(db, """
        CREATE INDEX packages_filename ON packages(filename);
        CREATE INDEX packages_pool_path ON packages(pool_path);
    """)


_OBSERVABILITY = """
CREATE TABLE counters (                 -- monotonic counters for /metrics (master.store.counters)
    name   TEXT NOT NULL,
    labels TEXT NOT NULL,                 -- JSON object of the label values
    value  REAL NOT NULL,
    PRIMARY KEY (name, labels)
);
CREATE TABLE webhook_deliveries (         -- one notification to one hook (master.webhooks)
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery     TEXT NOT NULL UNIQUE,    -- the id sent as X-Pkgfarm-Delivery
    hook         TEXT NOT NULL,
    event_id     INTEGER,
    kind         TEXT NOT NULL,
    build_id     INTEGER,
    body         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    state        TEXT NOT NULL,           -- pending, delivered or failed (given up)
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try     REAL NOT NULL,
    last_try     REAL,
    last_status  INTEGER,
    last_error   TEXT,
    delivered_at REAL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_try);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(hook, build_id, seq);
CREATE TABLE leases (                     -- who does a one-process-at-a-time task, until when
    name    TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    expires REAL NOT NULL
);
INSERT INTO meta(key, value) VALUES ('webhooks_cursor', 0);
"""


def _add_counters_and_webhooks(db: sqlite3.Connection) -> None:
    """Counters for /metrics kept by the store, queued webhook deliveries with the
    dispatcher's cursor, and leases for one-process-at-a-time tasks. Jobs and builds that
    finished before have no counts (the counters start at zero)."""
    run_script(db, _OBSERVABILITY)
def _add_events(db: sqlite3.Connection) -> None:
    """The event stream (kept for master.events_window), drained workers and paused queues."""
    run_script(db, """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
            build_id INTEGER, job_id INTEGER, data TEXT NOT NULL);
        CREATE INDEX events_build ON events(build_id);
        CREATE INDEX events_at ON events(at);
        CREATE TABLE worker_flags (
            name TEXT PRIMARY KEY, online INTEGER NOT NULL DEFAULT 0,
            drained INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE queue_flags (
            queue TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0);
    """)


def _add_dashboard(db: sqlite3.Connection) -> None:
    """The dashboard's tables: users and API tokens managed at run time, open log-ins, the
    secrets every master process shares (the session cookie's signing key), and samples of
    queue lengths."""
    run_script(db, """
        CREATE TABLE users (
            name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, roles TEXT NOT NULL,
            packages TEXT NOT NULL DEFAULT '[]', disabled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, created_by TEXT);
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE, user TEXT, roles TEXT NOT NULL,
            created_at REAL NOT NULL, created_by TEXT);
        CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
        CREATE TABLE web_sessions (id_hash TEXT PRIMARY KEY, user TEXT NOT NULL,
                                   created_at REAL NOT NULL, expires REAL NOT NULL);
        CREATE TABLE queue_samples (at REAL NOT NULL, queue TEXT NOT NULL,
                                    length INTEGER NOT NULL);
        CREATE INDEX queue_samples_at ON queue_samples(at);
    """)


def _index_finished_and_worker(db: sqlite3.Connection) -> None:
    """Indexes for what the workers page reads on each request (the jobs each worker finished
    in the last day) and for who built under a worker name."""
    run_script(db, """
        CREATE INDEX jobs_finished ON jobs(finished_at);
        CREATE INDEX jobs_worker ON jobs(worker);
    """)


#: version N -> the step that takes a database from N to N + 1
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2,
                                                                2: _migrate_2_to_3,
                                                                3: _migrate_3_to_4,
                                                                4: _add_events,
                                                                5: _add_counters_and_webhooks,
                                                                6: _add_dashboard,
                                                                7: _index_finished_and_worker}


#: Connections a parent process had open when it forked: its child never uses them, nor lets
#: them be closed (closing one may touch the database's locks and its WAL on the parent's
#: behalf).
_INHERITED: list[sqlite3.Connection] = []


class Database:
    #: idle connections a process keeps for its next transactions
    IDLE = 8

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
        self._upgrade()

    def _connect(self) -> sqlite3.Connection:
        # A connection may serve one transaction in one thread, then another in another.
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                             check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _take(self) -> sqlite3.Connection:
        with self._lock:
            if self._pid != os.getpid():
                _INHERITED.extend(self._idle)
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give(self, db: sqlite3.Connection) -> None:
        """Keep a connection whose transaction ended cleanly for the next one."""
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self.IDLE:
                self._idle.append(db)
                return
        db.close()

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        db = self._take()
        try:
            db.execute(begin)
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # (an I/O error may have ended it already)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except BaseException:
            db.close()  # whatever went wrong, the next transaction gets a fresh connection
            raise
        self._give(db)

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One read transaction: a consistent view of the database as it was at its start."""
        return self._transaction("BEGIN")

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One transaction that holds SQLite's write lock from its start."""
        return self._transaction("BEGIN IMMEDIATE")

    # -- schema --------------------------------------------------------------------------------

    @staticmethod
    def _version(db: sqlite3.Connection) -> int:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 and db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone():
            return 1  # the first schema, which had no version
        return version

    def schema_version(self) -> int:
        with self.read() as db:
            return self._version(db)

    def _upgrade(self) -> None:
        with self.read() as db:
            version = self._version(db)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} was written by a newer pkgfarm (schema version {version}; this "
                f"one knows versions up to {SCHEMA_VERSION}): upgrade pkgfarm, or point "
                "master.data_dir at another folder", key="master.data_dir")
        if version > 0:
            self._keep_copy(version)
        db = self._connect()
        try:
            # DDL is transactional in SQLite: each step commits whole or not at all, and the
            # write lock keeps another process from migrating at the same time.
            db.execute("BEGIN IMMEDIATE")
            try:
                version = self._version(db)  # another process may have done it meanwhile
                if version == 0:
                    run_script(db, SCHEMA)
                    version = SCHEMA_VERSION
                while version < SCHEMA_VERSION:
                    log.warning("migrating %s from schema version %d to %d", self.path,
                                version, version + 1)
                    MIGRATIONS[version](db)
                    version += 1
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _keep_copy(self, version: int) -> None:
        """A consistent copy of the database as it was, beside it, before a migration."""
        copy = self.path.with_name(f"{self.path.name}.schema-{version}.bak")
        if copy.exists():
            return
        source, dest = self._connect(), sqlite3.connect(copy)
        try:
            source.backup(dest)
        finally:
            dest.close()
            source.close()
