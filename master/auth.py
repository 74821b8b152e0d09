"""HTTP basic authentication against the users of the config, and role checks.

Passwords are stored only as werkzeug hashes. Checking a scrypt hash costs tens of
milliseconds, and a worker calls the master many times a minute, so a successful check is
remembered for a short while (keyed by a keyed hash of the password, never the password).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from flask_httpauth import HTTPBasicAuth
from werkzeug.security import check_password_hash

from common.config import UserSettings

ADMIN = "admin"
_CACHE_SECONDS = 300.0


class Authenticator:
    def __init__(self, users: dict[str, UserSettings]) -> None:
        self.users = users
        self.http = HTTPBasicAuth(realm="pkgfarm")
        self._key = secrets.token_bytes(32)
        self._ok: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()
        self.http.verify_password(self.verify)
        self.http.get_user_roles(self.roles)

    def verify(self, username: str, password: str) -> str | None:
        user = self.users.get(username)
        if not username or user is None:
            return None
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            if self._ok.get((username, digest), 0.0) > now:
                return username
        if not check_password_hash(user.password_hash, password):
            return None
        with self._lock:
            self._ok[(username, digest)] = now + _CACHE_SECONDS
        return username

    def roles(self, username: str) -> list[str]:
        user = self.users.get(username)
        return list(user.roles) if user else []

    def require(self, role: str) -> Callable[[Any], Any]:
        """A view decorator: the caller must hold ``role`` (or admin)."""
        decorator: Callable[[Any], Any] = self.http.login_required(role=[role, ADMIN])
        return decorator

    def current_user(self) -> str | None:
        user: Any = self.http.current_user()
        return user if isinstance(user, str) else None
