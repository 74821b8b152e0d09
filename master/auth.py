"""HTTP basic authentication against the users of the config, and role checks.

Passwords are stored only as werkzeug hashes. Checking a scrypt hash costs tens of
milliseconds, and a worker calls the master many times a minute, so a successful check is
remembered for a short while (keyed by a keyed hash of the password, never the password).

Repeated failed logins are slowed down: after `MAX_FAILURES` failures for one user name from
one client address within `FAILURE_WINDOW` seconds, that pair gets 429 with Retry-After until
the oldest failure ages out. The count is kept per master process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import current_app, jsonify, request
from flask_httpauth import HTTPBasicAuth
from werkzeug.security import check_password_hash, generate_password_hash

from common.config import UserSettings
from common.errors import ConfigError, TooManyRequests

ADMIN = "admin"
_CACHE_SECONDS = 300.0
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0


def password_hashes(users: dict[str, UserSettings],
                    env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each user's password hash: as configured, or made now from the environment variable
    that ``password_env`` names (ConfigError, naming the key, when it is unset or empty)."""
    env = os.environ if env is None else env
    hashes = {}
    for name, user in users.items():
        if user.password_hash is not None:
            hashes[name] = user.password_hash
            continue
        assert user.password_env is not None
        secret = env.get(user.password_env, "")
        if not secret:
            raise ConfigError(f"master.users.{name}.password_env: the environment variable "
                              f"{user.password_env} is not set (set it, e.g. in a .env file "
                              "beside the compose file)",
                              key=f"master.users.{name}.password_env")
        hashes[name] = generate_password_hash(secret)
    return hashes


class Authenticator:
    def __init__(self, users: dict[str, UserSettings]) -> None:
        self.users = users
        self.hashes = password_hashes(users)
        self._key = secrets.token_bytes(32)
        self._ok: dict[tuple[str, bytes], float] = {}
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def verify(self, username: str, password: str) -> str | None:
        if not username and not password:
            return None  # no credentials at all: 401, not a failed login
        now = time.monotonic()
        client = (request.remote_addr or "", username)
        self._check_throttle(client, now)
        user = self.users.get(username)
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        with self._lock:
            if user is not None and self._ok.get((username, digest), 0.0) > now:
                return username
        if user is None or not check_password_hash(self.hashes[username], password):
            with self._lock:
                self._failures.setdefault(client, []).append(now)
            return None
        with self._lock:
            self._ok[(username, digest)] = now + _CACHE_SECONDS
            self._failures.pop(client, None)
        return username

    def _check_throttle(self, client: tuple[str, str], now: float) -> None:
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if t > now - FAILURE_WINDOW]
            if recent:
                self._failures[client] = recent
            else:
                self._failures.pop(client, None)
        if len(recent) >= MAX_FAILURES:
            wait = int(recent[0] + FAILURE_WINDOW - now) + 1
            raise TooManyRequests(f"too many failed logins for {client[1]!r}; try again in "
                                  f"{wait} s", retry_after=wait)

    def roles(self, username: str) -> list[str]:
        user = self.users.get(username)
        return list(user.roles) if user else []

    def has_role(self, username: str | None, role: str) -> bool:
        roles = self.roles(username or "")
        return role in roles or ADMIN in roles


#: The one HTTP basic authentication of the master's blueprints; it asks the running app's
#: `Authenticator` (``app.extensions["pkgfarm"].auth``).
http = HTTPBasicAuth(realm="pkgfarm")


def _authenticator() -> Authenticator:
    auth: Authenticator = current_app.extensions["pkgfarm"].auth
    return auth


@http.verify_password
def _verify(username: str, password: str) -> str | None:
    return _authenticator().verify(username, password)


@http.get_user_roles
def _roles(username: str) -> list[str]:
    return _authenticator().roles(username)


@http.error_handler
def _refused(status: int) -> Any:
    message = "authentication required" if status == 401 else "permission denied"
    return jsonify(error=message), status


def require(role: str) -> Callable[[Any], Any]:
    """A view decorator: the caller must hold ``role`` (or admin)."""
    decorator: Callable[[Any], Any] = http.login_required(role=[role, ADMIN])
    return decorator


def current_user() -> str | None:
    user: Any = http.current_user()
    return user if isinstance(user, str) else None


def caller_has(role: str) -> bool:
    return _authenticator().has_role(current_user(), role)
