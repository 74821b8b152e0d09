"""Users and API tokens at run time, and the browser session, against a master under gunicorn
(two processes) with its own redis-server: made and changed through the API and through the
``master`` command as an admin runs it, effective at once in every process, kept across a
restart; the session cookie and its CSRF rule seen from a plain HTTP client."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.farm import BIN, PASSWORD, Master, standalone_master


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Master]:
    with standalone_master(tmp_path_factory.mktemp("accounts")) as m:
        yield m


def cli(master: Master, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "master"), *args, "--config", str(master.config)],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_user(master: Master, user: str, password: str, path: str = "/api/v1/builds",
            method: str = "GET", **kwargs: object) -> requests.Response:
    return requests.request(method, master.url + path, auth=(user, password), timeout=30,
                            **kwargs)  # type: ignore[arg-type]


def every_process(call: object, times: int = 12) -> list[int]:
    """The statuses of several calls (two gunicorn processes share them)."""
    return [call().status_code for _ in range(times)]  # type: ignore[operator]


def test_users_made_changed_and_removed_through_the_api(master: Master) -> None:
    made = master.api("POST", "/api/v1/users", json={
        "name": "alice", "password": "alice-password", "roles": ["read", "build"],
        "packages": ["itest-*"]})
    assert made.status_code == 201, made.text
    assert made.json()["source"] == "store" and "password" not in made.text
    assert set(every_process(lambda: as_user(master, "alice", "alice-password"))) == {200}
    assert as_user(master, "alice", "wrong-password").status_code == 401
    listed = {u["name"]: u for u in master.api("GET", "/api/v1/users").json()["users"]}
    assert listed["alice"]["roles"] == ["read", "build"]
    assert listed["admin"]["source"] == "config"

    # Package patterns hold: alice may not build what they do not admit.
    refused = as_user(master, "alice", "alice-password", method="POST",
                      json={"packages": ["hello-farm"]})
    assert refused.status_code == 403 and "package patterns" in refused.json()["error"]

    # Roles change at once, in every process.
    changed = master.api("PATCH", "/api/v1/users/alice", json={"roles": ["build"]})
    assert changed.status_code == 200 and changed.json()["roles"] == ["build"]
    assert set(every_process(lambda: as_user(master, "alice", "alice-password"))) == {403}

    # Disabled: refused like a wrong password; enabled again: admitted.
    master.api("PATCH", "/api/v1/users/alice", json={"disabled": True, "roles": ["read"]})
    assert set(every_process(lambda: as_user(master, "alice", "alice-password"), 3)) == {401}
    master.api("PATCH", "/api/v1/users/alice", json={"disabled": False})
    assert set(every_process(lambda: as_user(master, "alice", "alice-password"))) == {200}

    # A new password replaces the old one at once (the cache of good passwords included).
    master.api("PATCH", "/api/v1/users/alice", json={"password": "alice-password-2"})
    assert set(every_process(lambda: as_user(master, "alice", "alice-password"), 3)) == {401}
    assert as_user(master, "alice", "alice-password-2").status_code == 200

    removed = master.api("DELETE", "/api/v1/users/alice")
    assert removed.status_code == 200
    assert set(every_process(lambda: as_user(master, "alice", "alice-password-2"), 3)) == {401}
    assert master.api("DELETE", "/api/v1/users/alice").status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "bad name", "password": "long-enough", "roles": ["read"]}, "name"),
    ({"name": "bob", "password": "short", "roles": ["read"]}, "password"),
    ({"name": "bob", "password": "long-enough", "roles": ["root"]}, "roles"),
    ({"name": "bob", "password": "long-enough", "roles": []}, "roles"),
    ({"name": "bob", "password": "long-enough", "roles": ["read"], "packages": "x"}, "packages"),
    ({"name": "bob", "password": "long-enough", "roles": ["read"], "extra": 1}, "extra"),
])
def test_bad_users_are_refused_clearly(master: Master, body: dict[str, object],
                                       field: str) -> None:
    resp = master.api("POST", "/api/v1/users", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["field"] == field


def test_config_users_win_and_are_changed_only_in_the_config(master: Master) -> None:
    taken = master.api("POST", "/api/v1/users", json={
        "name": "reader", "password": "another-password", "roles": ["admin"]})
    assert taken.status_code == 409 and "config file" in taken.json()["error"]
    for method, body in (("PATCH", {"roles": ["admin"]}), ("DELETE", None)):
        resp = master.api(method, "/api/v1/users/reader", json=body)
        assert resp.status_code == 409, resp.text
    assert as_user(master, "reader", PASSWORD).status_code == 200
    # Only admins manage users.
    assert master.api("GET", "/api/v1/users", user="reader").status_code == 403
    assert master.api("POST", "/api/v1/tokens", user="builder",
                      json={"name": "x", "roles": ["read"]}).status_code == 403


def test_tokens(master: Master) -> None:
    made = master.api("POST", "/api/v1/tokens", json={"name": "ci", "roles": ["read"]})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    token_id = made.json()["id"]
    bearer = {"Authorization": f"Bearer {token}"}

    def read() -> requests.Response:
        return requests.get(master.url + "/api/v1/builds", headers=bearer, timeout=30)

    assert set(every_process(read)) == {200}
    # The secret is shown once: the list holds no secret, and the store only its sha256.
    listed = master.api("GET", "/api/v1/tokens").text
    assert token not in listed and '"ci"' in listed
    db = (Path(master.data_dir) / "state.db").read_bytes()
    assert token.encode() not in db
    # Its roles bound it: read is not build.
    build = requests.post(master.url + "/api/v1/builds", headers=bearer, timeout=30,
                          json={"packages": ["hello-farm"]})
    assert build.status_code == 403
    wrong = requests.get(master.url + "/api/v1/builds", timeout=30,
                         headers={"Authorization": f"Bearer {token}x"})
    assert wrong.status_code == 401
    assert master.api("DELETE", f"/api/v1/tokens/{token_id}").status_code == 200
    assert set(every_process(read)) == {401}

    # A token that acts for a user has at most that user's roles, and goes with the user.
    assert master.api("POST", "/api/v1/users", json={
        "name": "carol", "password": "carol-password", "roles": ["read"]}).status_code == 201
    refused = master.api("POST", "/api/v1/tokens",
                         json={"name": "too-much", "roles": ["build"], "user": "carol"})
    assert refused.status_code == 400 and refused.json()["field"] == "roles"
    made_for = master.api("POST", "/api/v1/tokens",
                          json={"name": "carols", "roles": ["read"], "user": "carol"})
    assert made_for.status_code == 201, made_for.text
    carols = {"Authorization": f"Bearer {made_for.json()['token']}"}
    assert requests.get(master.url + "/api/v1/builds", headers=carols,
                        timeout=30).status_code == 200
    assert master.api("PATCH", "/api/v1/users/carol", json={"disabled": True}).status_code == 200
    assert requests.get(master.url + "/api/v1/builds", headers=carols,
                        timeout=30).status_code == 401
    assert master.api("DELETE", "/api/v1/users/carol").status_code == 200
    assert all(t["user"] != "carol" for t in master.api("GET", "/api/v1/tokens").json()["tokens"])


def test_the_cli_manages_users_and_tokens(master: Master) -> None:
    made = cli(master, "user-create", "dave", "--role", "read,build", "--package", "itest-*",
               stdin="dave-password\n")
    lines = ok(made).splitlines()
    assert lines[0].split() == ["NAME", "ROLES", "PACKAGES", "STATE", "SOURCE"]
    assert lines[1].split() == ["dave", "read,build", "itest-*", "enabled", "store"]
    assert as_user(master, "dave", "dave-password").status_code == 200

    listed = ok(cli(master, "users"))
    assert re.search(r"^dave\s+read,build\s+itest-\*\s+enabled\s+store$", listed, re.M), listed
    assert re.search(r"^admin\s+admin\s+any\s+enabled\s+config$", listed, re.M), listed

    ok(cli(master, "user-update", "dave", "--disable"))
    assert as_user(master, "dave", "dave-password").status_code == 401
    ok(cli(master, "user-update", "dave", "--enable", "--password", stdin="dave-password-2\n"))
    assert as_user(master, "dave", "dave-password-2").status_code == 200

    created = cli(master, "token-create", "dave-ci", "--role", "read", "--user", "dave")
    secret = ok(created).strip()
    assert secret.startswith("pkf_") and "not shown again" in created.stderr
    assert requests.get(master.url + "/api/v1/builds", timeout=30,
                        headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    tokens = ok(cli(master, "tokens", "--json"))
    token_id = next(t["id"] for t in json.loads(tokens)["tokens"]
                    if t["name"] == "dave-ci")
    assert secret not in tokens
    assert ok(cli(master, "token-delete", str(token_id))).strip() == f"token {token_id} removed"
    assert requests.get(master.url + "/api/v1/builds", timeout=30,
                        headers={"Authorization": f"Bearer {secret}"}).status_code == 401

    assert ok(cli(master, "user-delete", "dave")).strip() == "user dave removed"
    gone = cli(master, "user-delete", "dave")
    assert gone.returncode != 0 and "no user dave" in gone.stderr
    bad = cli(master, "user-create", "erin", "--role", "root", stdin="erin-password\n")
    assert bad.returncode != 0 and "unknown role 'root'" in bad.stderr


def _login(master: Master, user: str = "admin", password: str = PASSWORD) -> requests.Session:
    browser = requests.Session()
    form = browser.get(master.url + "/login", timeout=30)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text
    done = browser.post(master.url + "/login", timeout=30, allow_redirects=False, data={
        "username": user, "password": password, "csrf_token": token[1], "next": "/builds"})
    assert done.status_code == 303 and done.headers["Location"] == "/builds", done.text
    cookie = done.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    return browser


def _csrf(browser: requests.Session, master: Master) -> str:
    page = browser.get(master.url + "/builds", timeout=30).text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found[1]


def test_the_session_and_its_csrf_rule(master: Master) -> None:
    browser = _login(master)
    # The session authenticates API calls too, in every process.
    assert set(every_process(lambda: browser.get(master.url + "/api/v1/builds",
                                                 timeout=30))) == {200}
    # A state-changing call riding on the session needs the token...
    refused = browser.post(master.url + "/api/v1/builds", json={"packages": ["hello-farm"]},
                           timeout=30)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    wrong = browser.post(master.url + "/api/v1/builds", json={"packages": ["hello-farm"]},
                         headers={"X-CSRF-Token": "not-it"}, timeout=30)
    assert wrong.status_code == 403
    # ... and with it, it is done (hello-farm is unknown here: the master's own 404).
    token = _csrf(browser, master)
    done = browser.post(master.url + "/api/v1/users", timeout=30,
                        headers={"X-CSRF-Token": token},
                        json={"name": "frank", "password": "frank-password",
                              "roles": ["read"]})
    assert done.status_code == 201, done.text
    # Basic-auth calls need no token; but a browser adds basic-auth credentials a person typed
    # into its prompt to another site's forms too, so what a browser sends from a page of
    # another origin is refused however it is authenticated.
    for headers in ({"Sec-Fetch-Site": "cross-site", "Origin": "http://elsewhere.example"},
                    {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://elsewhere.example"},
                    {"Origin": "null"}):
        refused = master.api("DELETE", "/api/v1/users/frank", headers=headers)
        assert refused.status_code == 403, (headers, refused.text)
        assert "another site" in refused.json()["error"]
    host = master.url.split("//", 1)[1]
    same = master.api("POST", "/api/v1/builds", json={"packages": ["no-such-package"]},
                      headers={"Sec-Fetch-Site": "same-origin", "Origin": f"http://{host}"})
    assert same.status_code == 404, same.text  # refused by the view, not the origin rule
    assert master.api("DELETE", "/api/v1/users/frank").status_code == 200
    # Never by GET: the actions answer only POST.
    assert browser.get(master.url + "/builds/1/cancel", timeout=30).status_code == 405

    # Log out: the session is over, and the old cookie does not bring it back.
    old = browser.cookies.get("pkgfarm_session")
    out = browser.post(master.url + "/logout", data={"csrf_token": token}, timeout=30,
                       allow_redirects=False)
    assert out.status_code == 303
    assert browser.get(master.url + "/api/v1/builds", timeout=30).status_code == 401
    page = browser.get(master.url + "/builds", timeout=30, allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    assert old is not None
    stale = requests.get(master.url + "/api/v1/builds", cookies={"pkgfarm_session": old},
                         timeout=30)
    assert stale.status_code == 401


def test_a_session_outlives_a_restart_and_dies_with_its_user(master: Master) -> None:
    master.api("POST", "/api/v1/users", json={"name": "gina", "password": "gina-password",
                                              "roles": ["read"]})
    browser = _login(master, "gina", "gina-password")
    assert browser.get(master.url + "/builds", timeout=30).status_code == 200
    master.stop()
    master.start()
    # The signing key is the store's: the same cookie is good after the restart.
    assert set(every_process(lambda: browser.get(master.url + "/builds", timeout=30,
                                                 allow_redirects=False))) == {200}
    master.api("PATCH", "/api/v1/users/gina", json={"disabled": True})
    page = browser.get(master.url + "/builds", timeout=30, allow_redirects=False)
    assert page.status_code == 302
    master.api("DELETE", "/api/v1/users/gina")


def test_login_form_refusals(master: Master) -> None:
    browser = requests.Session()
    # No form token (the post did not come from the form): refused.
    browser.get(master.url + "/login", timeout=30)
    forged = browser.post(master.url + "/login", timeout=30, allow_redirects=False,
                          data={"username": "admin", "password": PASSWORD})
    assert forged.status_code == 303
    assert browser.get(master.url + "/api/v1/builds", timeout=30).status_code == 401
    form = browser.get(master.url + "/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]  # type: ignore[index]
    wrong = browser.post(master.url + "/login", timeout=30, data={
        "username": "admin", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    # Where to go after it: this site only.
    done = browser.post(master.url + "/login", timeout=30, allow_redirects=False, data={
        "username": "admin", "password": PASSWORD, "csrf_token": token,
        "next": "//evil.example/"})
    assert done.headers["Location"] == "/"
