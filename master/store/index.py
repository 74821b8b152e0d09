"""Pieces a package format keeps to rewrite its index fast: one aggregate of the store.

The store does not know what a piece is: each format keys and serialises its own (APT keeps
each index group's text, gzip member and xz block).
"""

from __future__ import annotations

from collections.abc import Mapping

from master.store.db import Database


class IndexCache:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, fmt: str, pieces: Mapping[str, bytes]) -> None:
        with self.db.write() as db:
            db.executemany("INSERT OR REPLACE INTO index_cache(format, key, data) "
                           "VALUES (?,?,?)", [(fmt, k, v) for k, v in pieces.items()])

    def get_prefix(self, fmt: str, prefix: str) -> list[tuple[str, bytes]]:
        """Every piece of ``fmt`` whose key starts with ``prefix``, by key."""
        with self.db.read() as db:
            rows = db.execute("SELECT key, data FROM index_cache WHERE format=? AND key>=? "
                              "AND key<? ORDER BY key", (fmt, prefix, prefix + "\uffff"))
            return [(r["key"], bytes(r["data"])) for r in rows]
