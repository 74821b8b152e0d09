"""HTTP basic authentication against the users of the config, and role checks.

Passwords are stored only as werkzeug hashes. Checking a scrypt hash costs tens of
milliseconds, and a worker calls the master many times a minute, so a successful check is
remembered for a short while (keyed by a keyed hash of the password, never the password).

Repeated failed logins are slowed down: after `MAX_FAILURES` failures for one user name from
one client address within `FAILURE_WINDOW` seconds, that pair gets 429 with Retry-After until
the oldest failure ages out. The failures are kept in the store, so every master process
counts the same ones, and per address, so a stranger guessing a worker's password never turns
the worker away at its own address.
"""

from __future__ import annotations

import fnmatch
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
from common.errors import ConfigError, Forbidden, TooManyRequests
from master.store.logins import LoginStore

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
    def __init__(self, users: dict[str, UserSettings], logins: LoginStore) -> None:
        self.users = users
        self.hashes = password_hashes(users)
        self.logins = logins
        self._key = secrets.token_bytes(32)
        self._ok: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()

    def verify(self, username: str, password: str) -> str | None:
        if not username and not password:
            return None  # no credentials at all: 401, not a failed login
        address = request.remote_addr or ""
        now = time.time()
        self._check_throttle(username, address, now)
        user = self.users.get(username)
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        with self._lock:
            if user is not None and self._ok.get((username, digest), 0.0) > now:
                return username
        if user is None or not check_password_hash(self.hashes[username], password):
            self.logins.failed(username[:200], address, now)
            return None
        with self._lock:
            self._ok[(username, digest)] = now + _CACHE_SECONDS
        self.logins.clear(username, address)
        return username

    def _check_throttle(self, username: str, address: str, now: float) -> None:
        recent = self.logins.failures_since(username[:200], address, now - FAILURE_WINDOW)
        if len(recent) >= MAX_FAILURES:
            wait = int(recent[0] + FAILURE_WINDOW - now) + 1
            raise TooManyRequests(f"too many failed logins for {username!r} from this address; "
                                  f"try again in {wait} s", retry_after=wait)

    def may_build(self, username: str | None, package: str) -> bool:
        """Whether the user's package patterns (none: every package) admit ``package``."""
        user = self.users.get(username or "")
        if user is None:
            return False
        if ADMIN in user.roles or not user.packages:
            return True
        return any(fnmatch.fnmatchcase(package, pattern) for pattern in user.packages)

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


def check_may_build(packages: list[str]) -> None:
    """403 unless the caller's package patterns admit every name in ``packages``."""
    user = current_user()
    for package in packages:
        if not _authenticator().may_build(user, package):
            raise Forbidden(f"{user} may not build {package!r} (their package patterns do "
                            "not admit it)", package=package)
