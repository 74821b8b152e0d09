"""Who is calling, and role checks: HTTP basic auth (users of the config, then users made at
run time), API tokens (``Authorization: Bearer ...``) and the dashboard's session cookie.

A request authenticated by the session (a browser) that changes anything (any method but GET,
HEAD and OPTIONS) must carry the session's CSRF token, in the ``X-CSRF-Token`` header or the
``csrf_token`` form field; without it the request is refused with 403 before its view runs.
Basic-auth and token requests need no CSRF token, but a browser does add basic-auth
credentials by itself once a person typed them into its prompt (and sends them with another
site's forms too). So every state-changing request a browser sends from a page of another
origin is refused with 403, however it is authenticated: browsers say so in ``Sec-Fetch-Site``
(or, older ones, in ``Origin``); scripts and workers send neither header and are not affected.

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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, g, jsonify, request, session
from flask_httpauth import HTTPBasicAuth
from werkzeug.security import check_password_hash, generate_password_hash

from common.config import ADMIN, UserSettings
from common.errors import ConfigError, Forbidden, TooManyRequests
from master.store.accounts import AccountStore
from master.store.logins import LoginStore

_CACHE_SECONDS = 300.0
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
#: Methods that change nothing: no CSRF token needed.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What an API token starts with (so that a leaked one is easy to recognise).
TOKEN_PREFIX = "pkf_"  # noqa: S105 (a prefix, not a secret)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Identity:
    """Who a request is, once authenticated."""

    name: str
    roles: tuple[str, ...]
    #: package name patterns the caller may build (empty: every package)
    packages: tuple[str, ...]
    #: how: "basic", "token" or "session"
    via: str
    token_id: int | None = None

    def has(self, role: str) -> bool:
        return role in self.roles or ADMIN in self.roles


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    """A fresh API token's secret (its sha256 is what the store keeps)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


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
    """Users of the config (``users``) and, when ``accounts`` is given, users and tokens of the
    store. A config user wins over a store user of the same name (the API never makes one)."""

    def __init__(self, users: dict[str, UserSettings], logins: LoginStore,
                 accounts: AccountStore | None = None) -> None:
        self.users = users
        self.hashes = password_hashes(users)
        self.logins = logins
        self.accounts = accounts
        self._key = secrets.token_bytes(32)
        self._ok: dict[tuple[str, bytes, str], float] = {}
        self._lock = threading.Lock()

    def _password_hash(self, username: str) -> str | None:
        """The hash to check ``username``'s password against: a config user's, else an
        enabled store user's; None for nobody."""
        if username in self.users:
            return self.hashes[username]
        if self.accounts is not None and username:
            record = self.accounts.user(username)
            if record is not None and not record.disabled:
                return record.password_hash
        return None

    def verify(self, username: str, password: str) -> str | None:
        if not username and not password:
            return None  # no credentials at all: 401, not a failed login
        address = request.remote_addr or ""
        now = time.time()
        self._check_throttle(username, address, now)
        stored = self._password_hash(username)
        digest = hmac.new(self._key, password.encode(), hashlib.sha256).digest()
        # The cache is keyed by the stored hash too: a changed password, a disabled or removed
        # store user is refused at once (the hash is looked up on every request).
        with self._lock:
            if stored is not None and self._ok.get((username, digest, stored), 0.0) > now:
                return username
        if stored is None or not check_password_hash(stored, password):
            self.logins.failed(username[:200], address, now)
            return None
        with self._lock:
            self._ok[(username, digest, stored)] = now + _CACHE_SECONDS
        self.logins.clear(username, address)
        return username

    def lookup(self, username: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(roles, package patterns) of a config user or an enabled store user."""
        user = self.users.get(username)
        if user is not None:
            return tuple(user.roles), tuple(user.packages)
        if self.accounts is not None and username:
            record = self.accounts.user(username)
            if record is not None and not record.disabled:
                return record.roles, record.packages
        return None

    def identity(self, username: str, via: str) -> Identity | None:
        found = self.lookup(username)
        if found is None:
            return None
        return Identity(username, found[0], found[1], via)

    def verify_token(self, secret: str) -> Identity | None:
        """The identity an API token stands for: its roles, at most its user's when it acts
        for one (a disabled or removed user's tokens stop working)."""
        if self.accounts is None or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        token = self.accounts.token_by_hash(hash_token(secret))
        if token is None:
            return None
        if token.user is None:
            return Identity(f"token:{token.name}", token.roles, (), "token", token.id)
        found = self.lookup(token.user)
        if found is None:
            return None
        user_roles, packages = found
        roles = tuple(r for r in token.roles if r in user_roles or ADMIN in user_roles)
        return Identity(token.user, roles, packages, "token", token.id)

    def _check_throttle(self, username: str, address: str, now: float) -> None:
        recent = self.logins.failures_since(username[:200], address, now - FAILURE_WINDOW)
        if len(recent) >= MAX_FAILURES:
            wait = int(recent[0] + FAILURE_WINDOW - now) + 1
            raise TooManyRequests(f"too many failed logins for {username!r} from this address; "
                                  f"try again in {wait} s", retry_after=wait)

    def may_build(self, username: str | None, package: str) -> bool:
        """Whether the user's package patterns (none: every package) admit ``package``."""
        found = _request_identity(username)
        if found is None:
            looked = self.lookup(username or "")
            if looked is None:
                return False
            found = Identity(username or "", looked[0], looked[1], "basic")
        if ADMIN in found.roles or not found.packages:
            return True
        return any(fnmatch.fnmatchcase(package, pattern) for pattern in found.packages)

    def roles(self, username: str) -> list[str]:
        found = _request_identity(username)
        if found is not None:
            return list(found.roles)
        looked = self.lookup(username)
        return list(looked[0]) if looked else []

    def has_role(self, username: str | None, role: str) -> bool:
        roles = self.roles(username or "")
        return role in roles or ADMIN in roles


#: The one HTTP basic authentication of the master's blueprints; it asks the running app's
#: `Authenticator` (``app.extensions["pkgfarm"].auth``).
http = HTTPBasicAuth(realm="pkgfarm")


def _authenticator() -> Authenticator:
    auth: Authenticator = current_app.extensions["pkgfarm"].auth
    return auth


def _request_identity(username: str | None) -> Identity | None:
    """The identity this request was authenticated as, if it is ``username``'s."""
    try:
        found: Identity | None = g.get("pkgfarm_identity")
    except RuntimeError:  # outside a request
        return None
    return found if found is not None and found.name == username else None


def csrf_token() -> str:
    """The session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """403 unless the request carries the session's CSRF token."""
    expected = session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    if not isinstance(expected, str) or not hmac.compare_digest(given.encode(),
                                                                  expected.encode()):
        raise Forbidden("the request has no valid CSRF token (a browser's session may only "
                        "change things from the master's own pages)")


def session_identity() -> Identity | None:
    """The user logged in by the session cookie: while its log-in is open (not logged out nor
    expired) and the user exists and is enabled."""
    name, sid = session.get("user"), session.get("sid")
    if not isinstance(name, str) or not isinstance(sid, str):
        return None
    auth = _authenticator()
    if auth.accounts is None or auth.accounts.session_user(hash_token(sid)) != name:
        return None
    return auth.identity(name, "session")


def check_origin() -> None:
    """403 for a state-changing request a browser sent from a page of another origin."""
    if request.method in SAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None:
        foreign = site not in ("same-origin", "none")  # none: the person's own navigation
    elif origin is not None:
        foreign = origin == "null" or urlsplit(origin).netloc != request.host
    else:
        return
    if foreign:
        raise Forbidden("refused as a cross-site request (CSRF): a browser may change things "
                        "only from the master's own pages, and this request came from another "
                        f"site (Sec-Fetch-Site {site or '-'}, Origin {origin or '-'})")


def identify(username: str, password: str) -> Identity | None:
    """Authenticate the current request: basic auth, else a bearer token, else the session
    (whose state-changing requests must carry the CSRF token). Remembered for the request."""
    check_origin()
    auth = _authenticator()
    found: Identity | None = None
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.strip().partition(" ")
    # The scheme decides, not what flask-httpauth decoded: it reads the credentials of any
    # scheme as base64 "user:password", and a token's bytes may well hold a colon.
    if scheme.lower() == "basic":
        if username or password:
            name = auth.verify(username, password)
            found = auth.identity(name, "basic") if name else None
    elif scheme.lower() == "bearer":
        found = auth.verify_token(credentials.strip())
    elif not header:
        found = session_identity()
        if found is not None and request.method not in SAFE_METHODS:
            check_csrf()
    g.pkgfarm_identity = found
    return found


@http.verify_password
def _verify(username: str, password: str) -> str | None:
    found = identify(username, password)
    return found.name if found else None


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
    if isinstance(user, str):
        return user
    found: Identity | None = g.get("pkgfarm_identity")  # a dashboard view's session user
    return found.name if found else None


def current_identity() -> Identity | None:
    found: Identity | None = g.get("pkgfarm_identity")
    return found


def caller_has(role: str) -> bool:
    return _authenticator().has_role(current_user(), role)


def check_may_build(packages: list[str]) -> None:
    """403 unless the caller's package patterns admit every name in ``packages``."""
    user = current_user()
    for package in packages:
        if not _authenticator().may_build(user, package):
            raise Forbidden(f"{user} may not build {package!r} (their package patterns do "
                            "not admit it)", package=package)
