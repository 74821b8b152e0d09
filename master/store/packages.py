"""Published archives and the index groups their changes mark: one aggregate of the store.

Every change bumps the packages generation and marks the changed index groups dirty in the
same transaction, so an index writer that renders the dirty groups and records the generation
it saw never misses a change (master.repository).
"""

from __future__ import annotations

import sqlite3
import time

from master.store.db import Database, group_of
from master.store.events import record
from master.store.records import IndexKey, NewPackage, PackageRecord


class PackageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, packages: list[NewPackage], *, uploaded: bool = False) -> int:
        """Record archives in one transaction (an index shows all of them or none); the
        packages generation they belong to. ``uploaded``: they were uploaded straight into
        the repository (not by a job's report), which an ``upload.accepted`` event records."""
        now = time.time()
        with self.db.write() as db:
            if uploaded:
                jobs = {p.job_id for p in packages}
                job_id = jobs.pop() if len(jobs) == 1 else None
                row = (db.execute("SELECT build_id FROM jobs WHERE id=?", (job_id,)).fetchone()
                       if job_id is not None else None)
                record(db, "upload.accepted", job_id=job_id,
                       build_id=row[0] if row else None, files=[p.filename for p in packages])
            for p in packages:
                grp = group_of(p.name)
                db.execute(
                    "INSERT OR REPLACE INTO packages(format, suite, component, grp, name, "
                    "version, arch, filename, pool_path, size, sha256, entry, uploaded_at, "
                    "uploaded_by, job_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (p.format, p.suite, p.component, grp, p.name, p.version, p.arch,
                     p.filename, p.pool_path, p.size, p.sha256, p.entry,
                     p.uploaded_at if p.uploaded_at is not None else now, p.uploaded_by,
                     p.job_id))
                _mark_dirty(db, IndexKey(p.format, p.suite, p.component, grp))
            return _bump_generation(db)

    def remove(self, name: str, version: str | None, arch: str | None,
               fmt: str | None = None) -> tuple[int, list[PackageRecord]]:
        """Forget published archives of ``name``; the new generation and what went."""
        query, args = "SELECT * FROM packages WHERE name=?", [name]
        for column, value in (("version", version), ("arch", arch), ("format", fmt)):
            if value is not None:
                query, args = f"{query} AND {column}=?", [*args, value]
        with self.db.write() as db:
            rows = [PackageRecord.from_row(r) for r in db.execute(query, args)]
            _delete(db, rows)
            return _bump_generation(db), rows

    def delete(self, records: list[PackageRecord]) -> int:
        """Forget the given records (retention); the new generation."""
        with self.db.write() as db:
            _delete(db, records)
            return _bump_generation(db)

    def pool_path_in_use(self, pool_path: str) -> bool:
        with self.db.read() as db:
            return db.execute("SELECT 1 FROM packages WHERE pool_path=? LIMIT 1",
                              (pool_path,)).fetchone() is not None

    def by_filename(self, fmt: str, filename: str, suite: str | None = None
                    ) -> PackageRecord | None:
        """A record of archive ``filename`` of format ``fmt`` (in ``suite``, if given)."""
        with self.db.read() as db:
            if suite is None:
                row = db.execute("SELECT * FROM packages WHERE format=? AND filename=?",
                                 (fmt, filename)).fetchone()
            else:
                row = db.execute("SELECT * FROM packages WHERE format=? AND filename=? AND "
                                 "suite=?", (fmt, filename, suite)).fetchone()
        return PackageRecord.from_row(row) if row else None

    def all(self, name: str | None = None) -> list[PackageRecord]:
        with self.db.read() as db:
            if name is None:
                rows = db.execute("SELECT * FROM packages ORDER BY name, id").fetchall()
            else:
                rows = db.execute("SELECT * FROM packages WHERE name=? ORDER BY id",
                                  (name,)).fetchall()
        return [PackageRecord.from_row(r) for r in rows]

    def in_groups(self, keys: set[IndexKey]) -> list[PackageRecord]:
        """Every record of the given index groups."""
        with self.db.read() as db:
            if len(keys) > 64:
                rows = db.execute("SELECT * FROM packages").fetchall()
            else:
                rows = [r for k in keys for r in db.execute(
                    "SELECT * FROM packages WHERE format=? AND suite=? AND component=? AND "
                    "grp=?", (k.format, k.suite, k.component, k.grp))]
        records = [PackageRecord.from_row(r) for r in rows]
        return [r for r in records if IndexKey(r.format, r.suite, r.component, r.grp) in keys]

    # -- generations and dirty groups ----------------------------------------------------------

    def generation(self) -> int:
        return self._meta("packages_generation")

    def index_generation(self) -> int:
        return self._meta("index_generation")

    def set_index_generation(self, gen: int, formats: tuple[str, ...] = (),
                             suites: tuple[str, ...] = (), at: float | None = None) -> None:
        """Record that the index of ``formats`` was written (at ``at``, default now) and shows
        generation ``gen`` (with an ``index.updated`` event per format)."""
        with self.db.write() as db:
            db.execute("UPDATE meta SET value=? WHERE key='index_generation'", (gen,))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('index_written_at', ?)",
                       (time.time() if at is None else at,))
            for fmt in formats:
                record(db, "index.updated", generation=gen, format=fmt, suites=list(suites))

    def index_written_at(self) -> float | None:
        """When an index, of whatever format, was last written; None before the first time
        (a store that an older pkgfarm wrote has no such record until its next index)."""
        with self.db.read() as db:
            row = db.execute("SELECT value FROM meta WHERE key='index_written_at'").fetchone()
        return None if row is None else float(row[0])

    def _meta(self, key: str) -> int:
        with self.db.read() as db:
            return int(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def dirty(self) -> set[IndexKey]:
        with self.db.read() as db:
            return {IndexKey(*r) for r in
                    db.execute("SELECT format, suite, component, grp FROM index_dirty")}

    def clear_dirty(self, keys: set[IndexKey]) -> None:
        with self.db.write() as db:
            db.executemany("DELETE FROM index_dirty WHERE format=? AND suite=? AND "
                           "component=? AND grp=?",
                           [(k.format, k.suite, k.component, k.grp) for k in keys])


def _mark_dirty(db: sqlite3.Connection, key: IndexKey) -> None:
    db.execute("INSERT OR IGNORE INTO index_dirty(format, suite, component, grp) "
               "VALUES (?,?,?,?)", (key.format, key.suite, key.component, key.grp))


def _delete(db: sqlite3.Connection, records: list[PackageRecord]) -> None:
    for rec in records:
        if db.execute("DELETE FROM packages WHERE id=?", (rec.id,)).rowcount:
            _mark_dirty(db, IndexKey(rec.format, rec.suite, rec.component, rec.grp))


def _bump_generation(db: sqlite3.Connection) -> int:
    db.execute("UPDATE meta SET value=value+1 WHERE key='packages_generation'")
    return int(db.execute(
        "SELECT value FROM meta WHERE key='packages_generation'").fetchone()[0])
