"""Users and API tokens made at run time, the dashboard's open sessions, and the secrets every
master process shares: one aggregate of the store.

Passwords are kept as werkzeug hashes and tokens as the sha256 of their secret (the secret is
shown once, when the token is made). Users of the config file are not here; they win over
these (a store user may not take a config user's name: the API refuses it).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from dataclasses import dataclass

from master.store.db import Database


@dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str
    roles: tuple[str, ...]
    packages: tuple[str, ...]
    disabled: bool
    created_at: float
    created_by: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> UserRecord:
        return cls(name=row["name"], password_hash=row["password_hash"],
                   roles=tuple(json.loads(row["roles"])),
                   packages=tuple(json.loads(row["packages"])), disabled=bool(row["disabled"]),
                   created_at=row["created_at"], created_by=row["created_by"])


@dataclass(frozen=True)
class TokenRecord:
    id: int
    name: str
    #: the user the token acts for (its roles are then at most that user's), or None
    user: str | None
    roles: tuple[str, ...]
    created_at: float
    created_by: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TokenRecord:
        return cls(id=row["id"], name=row["name"], user=row["user"],
                   roles=tuple(json.loads(row["roles"])), created_at=row["created_at"],
                   created_by=row["created_by"])


_USER_COLUMNS = "name, password_hash, roles, packages, disabled, created_at, created_by"
_TOKEN_COLUMNS = "id, name, user, roles, created_at, created_by"  # noqa: S105


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users ---------------------------------------------------------------------------------

    def users(self) -> list[UserRecord]:
        with self.db.read() as db:
            rows = db.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()
        return [UserRecord.from_row(r) for r in rows]

    def user(self, name: str) -> UserRecord | None:
        with self.db.read() as db:
            row = db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name=?",
                             (name,)).fetchone()
        return UserRecord.from_row(row) if row else None

    def create_user(self, name: str, password_hash: str, roles: list[str],
                    packages: list[str], created_by: str | None) -> UserRecord | None:
        """A new user; None when the name is taken."""
        with self.db.write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO users(name, password_hash, roles, packages, disabled, "
                "created_at, created_by) VALUES (?,?,?,?,0,?,?)",
                (name, password_hash, json.dumps(roles), json.dumps(packages), time.time(),
                 created_by))
            if cur.rowcount != 1:
                return None
            row = db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name=?",
                             (name,)).fetchone()
        return UserRecord.from_row(row)

    def update_user(self, name: str, *, password_hash: str | None = None,
                    roles: list[str] | None = None, packages: list[str] | None = None,
                    disabled: bool | None = None) -> UserRecord | None:
        """Change what is given; None when there is no such user."""
        changes: dict[str, object] = {}
        if password_hash is not None:
            changes["password_hash"] = password_hash
        if roles is not None:
            changes["roles"] = json.dumps(roles)
        if packages is not None:
            changes["packages"] = json.dumps(packages)
        if disabled is not None:
            changes["disabled"] = int(disabled)
        with self.db.write() as db:
            if disabled or password_hash is not None:
                # Logged out everywhere: disabled, or its password changed.
                db.execute("DELETE FROM web_sessions WHERE user=?", (name,))
            if changes:
                assignments = ", ".join(f"{k}=?" for k in changes)
                db.execute(f"UPDATE users SET {assignments} WHERE name=?",
                           (*changes.values(), name))
            row = db.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name=?",
                             (name,)).fetchone()
        return UserRecord.from_row(row) if row else None

    def delete_user(self, name: str) -> bool:
        """Remove a user and the tokens that act for it."""
        with self.db.write() as db:
            db.execute("DELETE FROM api_tokens WHERE user=?", (name,))
            db.execute("DELETE FROM web_sessions WHERE user=?", (name,))
            return db.execute("DELETE FROM users WHERE name=?", (name,)).rowcount == 1

    # -- tokens --------------------------------------------------------------------------------

    def tokens(self) -> list[TokenRecord]:
        with self.db.read() as db:
            rows = db.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY id").fetchall()
        return [TokenRecord.from_row(r) for r in rows]

    def create_token(self, name: str, token_hash: str, user: str | None, roles: list[str],
                     created_by: str | None) -> TokenRecord:
        with self.db.write() as db:
            cur = db.execute(
                "INSERT INTO api_tokens(name, token_hash, user, roles, created_at, created_by) "
                "VALUES (?,?,?,?,?,?)",
                (name, token_hash, user, json.dumps(roles), time.time(), created_by))
            row = db.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id=?",
                             (cur.lastrowid,)).fetchone()
        return TokenRecord.from_row(row)

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        with self.db.read() as db:
            row = db.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash=?",
                             (token_hash,)).fetchone()
        return TokenRecord.from_row(row) if row else None

    def delete_token(self, token_id: int) -> bool:
        with self.db.write() as db:
            return db.execute("DELETE FROM api_tokens WHERE id=?", (token_id,)).rowcount == 1

    # -- browser sessions ----------------------------------------------------------------------

    def open_session(self, session_hash: str, user: str, expires: float) -> None:
        now = time.time()
        with self.db.write() as db:
            db.execute("DELETE FROM web_sessions WHERE expires < ?", (now,))
            db.execute("INSERT INTO web_sessions(id_hash, user, created_at, expires) "
                       "VALUES (?,?,?,?)", (session_hash, user, now, expires))

    def session_user(self, session_hash: str) -> str | None:
        """The user of a session that is open and has not expired."""
        with self.db.read() as db:
            row = db.execute("SELECT user FROM web_sessions WHERE id_hash=? AND expires>=?",
                             (session_hash, time.time())).fetchone()
        return str(row["user"]) if row else None

    def close_session(self, session_hash: str) -> None:
        with self.db.write() as db:
            db.execute("DELETE FROM web_sessions WHERE id_hash=?", (session_hash,))

    # -- shared secrets ------------------------------------------------------------------------

    def secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret made once, the same for every master process and kept across
        restarts (the first process to ask makes it)."""
        with self.db.write() as db:
            db.execute("INSERT OR IGNORE INTO secrets(name, value) VALUES (?,?)",
                       (name, secrets.token_bytes(nbytes)))
            row = db.execute("SELECT value FROM secrets WHERE name=?", (name,)).fetchone()
        return bytes(row["value"])
