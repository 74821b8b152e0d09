"""master/auth.py: password checks, roles, and the view decorator on a tiny Flask app."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from common.config import UserSettings
from common.errors import TooManyRequests
from master.auth import (
    FAILURE_WINDOW,
    MAX_FAILURES,
    TOKEN_PREFIX,
    Authenticator,
    current_user,
    hash_token,
    require,
)
from master.store import Store

FAST = "pbkdf2:sha256:1000"

PASSWORDS = {"reader": "read-pw", "uploader": "up-pw", "admin": "admin-pw", "both": "both-pw"}
ROLES = {"reader": ("read",), "uploader": ("upload",), "admin": ("admin",),
         "both": ("read", "build")}


@pytest.fixture(scope="module")
def users() -> dict[str, UserSettings]:
    return {name: UserSettings(password_hash=generate_password_hash(PASSWORDS[name],
                                                                    method=FAST),
                               roles=ROLES[name])
            for name in PASSWORDS}


@pytest.fixture
def auth(users: dict[str, UserSettings], tmp_path: Path) -> Iterator[Authenticator]:
    # verify() reads the client address of the current request; failures go to a real store.
    with Flask("auth-unit").test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.1"}):
        yield Authenticator(users, Store(tmp_path / "state.db").logins)


def test_verify_right_password(auth: Authenticator) -> None:
    for name, password in PASSWORDS.items():
        assert auth.verify(name, password) == name


def test_verify_wrong_password(auth: Authenticator) -> None:
    assert auth.verify("reader", "wrong") is None
    assert auth.verify("reader", "") is None
    assert auth.verify("reader", PASSWORDS["uploader"]) is None


def test_verify_unknown_user(auth: Authenticator) -> None:
    assert auth.verify("mallory", "read-pw") is None
    assert auth.verify("", "") is None


def test_cached_success_does_not_admit_other_passwords(auth: Authenticator) -> None:
    assert auth.verify("reader", "read-pw") == "reader"
    assert auth.verify("reader", "read-pw") == "reader"  # served from the cache
    assert auth.verify("reader", "read-pw2") is None
    assert auth.verify("uploader", "read-pw") is None


def test_roles(auth: Authenticator) -> None:
    assert auth.roles("reader") == ["read"]
    assert auth.roles("both") == ["read", "build"]
    assert auth.roles("admin") == ["admin"]
    assert auth.roles("mallory") == []


# -- on a Flask app --------------------------------------------------------------------------


class _Services:
    """What master.auth asks the app for: its authenticator."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth


@pytest.fixture
def client(auth: Authenticator) -> FlaskClient:
    app = Flask("auth-test")
    app.extensions["pkgfarm"] = _Services(auth)

    @app.get("/upload")
    @require("upload")
    def upload() -> str:
        return f"upload ok for {current_user()}"

    @app.get("/read")
    @require("read")
    def read() -> str:
        return f"read ok for {current_user()}"

    return app.test_client()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("path", ["/upload", "/read"])
def test_no_credentials_is_401_with_a_challenge(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    challenge = response.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Basic")
    assert 'realm="pkgfarm"' in challenge


def test_wrong_password_is_401(client: FlaskClient) -> None:
    response = client.get("/read", headers=basic("reader", "nope"))
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


def test_unknown_user_is_401(client: FlaskClient) -> None:
    assert client.get("/read", headers=basic("mallory", "read-pw")).status_code == 401


def test_wrong_role_is_403(client: FlaskClient) -> None:
    assert client.get("/upload", headers=basic("reader", "read-pw")).status_code == 403
    assert client.get("/read", headers=basic("uploader", "up-pw")).status_code == 403
    assert client.get("/upload", headers=basic("both", "both-pw")).status_code == 403


def test_right_role_is_200(client: FlaskClient) -> None:
    response = client.get("/upload", headers=basic("uploader", "up-pw"))
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "upload ok for uploader"
    response = client.get("/read", headers=basic("reader", "read-pw"))
    assert response.status_code == 200
    assert response.get_data(as_text=True) == "read ok for reader"
    assert client.get("/read", headers=basic("both", "both-pw")).status_code == 200


@pytest.mark.parametrize("path", ["/upload", "/read"])
def test_admin_passes_every_role(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers=basic("admin", "admin-pw"))
    assert response.status_code == 200
    assert response.get_data(as_text=True).endswith("for admin")


def test_admin_with_wrong_password_is_401(client: FlaskClient) -> None:
    assert client.get("/upload", headers=basic("admin", "read-pw")).status_code == 401


def test_repeated_failures_are_throttled(auth: Authenticator) -> None:
    for _ in range(MAX_FAILURES):
        assert auth.verify("reader", "guess") is None
    with pytest.raises(TooManyRequests) as exc:
        auth.verify("reader", "read-pw")
    assert exc.value.status == 429
    assert 0 < exc.value.details["retry_after"] <= FAILURE_WINDOW + 1
    # Another user name from the same address is not affected.
    assert auth.verify("uploader", "up-pw") == "uploader"


def test_throttle_is_shared_by_every_authenticator_of_one_store(users, tmp_path: Path) -> None:
    """Two master processes, each with its own Authenticator, count the same failures."""
    store = Store(tmp_path / "shared.db")
    with Flask("p").test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.7"}):
        first, second = Authenticator(users, store.logins), Authenticator(users, Store(
            tmp_path / "shared.db").logins)
        for i in range(MAX_FAILURES):
            (first if i % 2 else second).verify("reader", "guess")
        for one in (first, second):
            with pytest.raises(TooManyRequests):
                one.verify("reader", "read-pw")


def test_package_patterns(tmp_path: Path) -> None:
    users = {"lim": UserSettings(password_hash="pbkdf2:x", roles=("build",),
                                 packages=("hello-*", "farm-?")),
             "any": UserSettings(password_hash="pbkdf2:x", roles=("build",)),
             "boss": UserSettings(password_hash="pbkdf2:x", roles=("admin",),
                                  packages=("none",))}
    auth = Authenticator(users, Store(tmp_path / "s.db").logins)
    assert auth.may_build("lim", "hello-farm") and auth.may_build("lim", "farm-1")
    assert not auth.may_build("lim", "farm-10") and not auth.may_build("lim", "bash")
    assert auth.may_build("any", "bash") and auth.may_build("boss", "bash")
    assert not auth.may_build("nobody", "bash") and not auth.may_build(None, "bash")


def test_throttle_is_per_client_address(auth: Authenticator, users) -> None:
    for _ in range(MAX_FAILURES):
        auth.verify("reader", "guess")
    with Flask("other").test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.99"}):
        assert auth.verify("reader", "read-pw") == "reader"


# -- bearer tokens -----------------------------------------------------------------------------


def _colon_token() -> str:
    """A token secret whose characters, read loosely as base64 (as flask-httpauth reads the
    credentials of any scheme), decode to bytes holding a colon: "user:password" lookalikes."""
    for i in range(10_000):
        secret = TOKEN_PREFIX + base64.urlsafe_b64encode(
            hashlib.sha256(str(i).encode()).digest()).decode().rstrip("=")
        try:
            if b":" in base64.b64decode(secret):
                return secret
        except ValueError:
            continue
    raise AssertionError("no such token among 10,000")


@pytest.fixture
def token_client(users: dict[str, UserSettings], tmp_path: Path) -> Iterator[
        tuple[FlaskClient, Store]]:
    store = Store(tmp_path / "state.db")
    app = Flask("token-test")
    app.extensions["pkgfarm"] = _Services(Authenticator(users, store.logins, store.accounts))

    @app.get("/read")
    @require("read")
    def read() -> str:
        return f"read ok for {current_user()}"

    yield app.test_client(), store


def test_a_token_is_a_token_whatever_its_bytes_decode_to(
        token_client: tuple[FlaskClient, Store]) -> None:
    client, store = token_client
    secret = _colon_token()
    store.accounts.create_token("ci", hash_token(secret), None, ["read"], "admin")
    # Never read as a failed log-in of a made-up user: still 200 after more than the
    # throttle's count of requests.
    for _ in range(MAX_FAILURES + 3):
        resp = client.get("/read", headers={"Authorization": f"Bearer {secret}"})
        assert resp.status_code == 200, resp.text
        assert resp.text == "read ok for token:ci"
    assert client.get("/read", headers={"Authorization": f"Bearer {secret}x"}).status_code == 401


def test_basic_credentials_under_another_scheme_are_refused(
        token_client: tuple[FlaskClient, Store]) -> None:
    client, _ = token_client
    credentials = base64.b64encode(b"reader:read-pw").decode()
    for scheme in ("Bearer", "Token", "Digest"):
        resp = client.get("/read", headers={"Authorization": f"{scheme} {credentials}"})
        assert resp.status_code == 401, scheme
    assert client.get("/read", headers={"Authorization": f"Basic {credentials}"}
                      ).status_code == 200
