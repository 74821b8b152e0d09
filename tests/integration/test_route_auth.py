"""Who may call what, on a live master: every route, anonymous and with too small a role.

The routes come from the Flask app's own url_map, so a route added later is walked too, and
one added without protection fails the walk unless it is named in PUBLIC_RULES below. The
calls go to a master started under gunicorn, as clients reach it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
import requests

from common.config import settings_from_dict
from common.messages import PROTOCOL_VERSION
from master.app import create_app
from tests.integration.farm import (
    PASSWORD,
    make_deb,
    standalone_master,
    wait_for,
)

#: The rules anybody may call without credentials. Every other rule must answer 401.
PUBLIC_RULES = {
    "/api/v1/health",
    "/api/v1/openapi.json",
    "/repo/",
    "/repo/<path:path>",
    # the dashboard's log-in form, log-out, and its stylesheet and script
    "/login",
    "/logout",
    "/static/<path:filename>",
}


def is_page(rule: str) -> bool:
    """A dashboard page or action (neither the API nor the repository): strangers are sent to
    the log-in form instead of getting 401."""
    return (not rule.startswith(("/api/", "/repo/")) and rule not in PUBLIC_RULES
            and rule not in API_OUTSIDE_PREFIX)


#: API routes served outside /api/ (Prometheus expects /metrics at the root).
API_OUTSIDE_PREFIX = {"/metrics"}

#: A plausible value for every path variable a rule may have, by name.
PATH_VALUES = {
    "build_id": "1",
    "job_id": "1",
    "name": "hello-farm",
    "path": "dists/stable/Release",
    "token_id": "1",
    # Flask's static route, which serves <cwd>/static unless the app turns it off
    "filename": "index.html",
}

VARIABLE = re.compile(r"<(?:(?P<converter>[^:<>()]+)(?:\([^)]*\))?:)?(?P<name>[^:<>]+)>")


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """A master with its own redis-server and no workers."""
    with standalone_master(tmp_path_factory.mktemp("routeauth")) as m:
        yield m


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    """Every rule of the master's Flask app, with every method it allows (rules that share a
    path, such as GET and POST /api/v1/builds, as one)."""
    data_dir = tmp_path_factory.mktemp("routeauth-app") / "data"
    app = create_app(settings_from_dict({"master": {"data_dir": str(data_dir)}}))
    methods: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        methods.setdefault(rule.rule, set()).update(rule.methods or ())
    return sorted(methods.items())


def fill(rule: str) -> str:
    """The rule as a URL path, each variable replaced by a plausible value."""
    def value(match: re.Match[str]) -> str:
        name = match["name"]
        assert name in PATH_VALUES, f"{rule}: no test value for <{name}>; add one to PATH_VALUES"
        if match["converter"] == "int":
            assert PATH_VALUES[name].isdigit(), name
        return PATH_VALUES[name]
    return VARIABLE.sub(value, rule)


def test_public_rules_exist(rules):
    assert {rule for rule, _ in rules} >= PUBLIC_RULES, "PUBLIC_RULES names a rule that is gone"


def test_every_route_refuses_anonymous_callers(master, rules):
    checked = []
    for rule, methods in rules:
        url = master.url + fill(rule)
        public = rule in PUBLIC_RULES
        for method in sorted(methods):
            # A JSON body, where a method takes one: the refusal must not depend on it.
            resp = requests.request(method, url, json={} if method in ("POST", "PUT") else None,
                                    timeout=30, allow_redirects=False)
            where = f"anonymous {method} {rule} -> {resp.status_code} {resp.text[:200]!r}"
            checked.append(where)
            if method == "OPTIONS":
                # Flask answers OPTIONS itself, before any view or role check (CORS
                # preflights carry no credentials): the methods, and nothing else.
                assert resp.status_code == 200, where
                assert set(resp.headers["Allow"].split(", ")) == methods, where
                assert resp.content == b"", where
            elif public:
                assert resp.status_code != 401, where
                assert "WWW-Authenticate" not in resp.headers, where
            elif is_page(rule):
                assert resp.status_code == (303 if method == "POST" else 302), where
                assert resp.headers["Location"].startswith("/login?next="), where
            else:
                assert resp.status_code == 401, where
                assert resp.headers.get("WWW-Authenticate", "").startswith("Basic "), where
                assert resp.headers["Content-Type"].startswith("application/json"), where
                if method != "HEAD":
                    assert resp.json() == {"error": "authentication required"}, where
    # The walk reached every kind of route: the API and the repository, read and write.
    assert any(" POST /api/v1/builds " in c for c in checked)
    assert any(" GET /repo/<path:path> " in c for c in checked)
    assert any(" GET /builds/<id:build_id> " in c for c in checked)
    assert any(" POST /builds/<id:build_id>/restart " in c for c in checked)


def test_public_routes_answer(master):
    assert requests.get(master.url + "/api/v1/health", timeout=10).status_code == 200
    assert requests.get(master.url + "/api/v1/openapi.json", timeout=10).status_code == 200
    assert requests.get(master.url + "/repo/dists/stable/Release", timeout=10).status_code == 200
    assert requests.get(master.url + "/repo/", timeout=10).status_code == 404


def test_wrong_password_is_refused_like_none(master):
    resp = requests.get(master.url + "/api/v1/builds", auth=("reader", "not-the-password"),
                        timeout=10)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    assert resp.json() == {"error": "authentication required"}


@pytest.mark.parametrize(("user", "method", "path", "status"), [
    # read is not enough to change anything
    ("reader", "POST", "/api/v1/builds", 403),
    ("reader", "POST", "/api/v1/builds/1/restart", 403),
    ("reader", "POST", "/api/v1/builds/1/cancel", 403),
    ("reader", "PUT", "/api/v1/upload", 403),
    ("reader", "POST", "/api/v1/upload", 403),
    ("reader", "POST", "/api/v1/jobs", 403),
    ("reader", "POST", "/api/v1/jobs/1/claim", 403),
    ("reader", "POST", "/api/v1/jobs/1/lease", 403),
    ("reader", "POST", "/api/v1/jobs/1/log?attempt=1", 403),
    ("reader", "POST", "/api/v1/jobs/1/report", 403),
    ("reader", "POST", "/api/v1/workers/heartbeat", 403),
    ("reader", "DELETE", "/api/v1/packages/hello-farm", 403),
    # build does not upload, upload does not build, and only admins remove packages
    ("builder", "PUT", "/api/v1/upload", 403),
    ("builder", "POST", "/api/v1/jobs/1/claim", 403),
    ("worker2", "POST", "/api/v1/builds", 403),
    ("worker", "DELETE", "/api/v1/packages/hello-farm", 403),
    # only admins see webhooks (their URLs and what was sent); metrics take the read role
    ("reader", "GET", "/api/v1/webhooks", 403),
    ("builder", "GET", "/metrics", 403),
    # and read is what reading takes
    ("reader", "GET", "/api/v1/builds", 200),
    ("reader", "GET", "/api/v1/workers", 200),
    ("reader", "GET", "/api/v1/packages", 200),
])
def test_roles(master, user, method, path, status):
    resp = master.api(method, path, user=user, json={})
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    if status == 403:
        assert resp.json() == {"error": "permission denied"}


def test_logs_hold_no_password_or_token(master, tmp_path):
    """After a worker's calls, the master's log and gunicorn's access log (one file here)
    contain neither the password nor an attempt's token."""
    resp = master.api("POST", "/api/v1/jobs", user="worker", json={
        "package": "ra-secret", "version": "1.0-1", "arch": "all", "worker": "ra-box",
        "protocol": PROTOCOL_VERSION})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    job_id, attempt, token = job["job_id"], job["attempt"], job["token"]

    lease = master.api("POST", f"/api/v1/jobs/{job_id}/lease", user="worker",
                       json={"attempt": attempt, "token": token})
    assert lease.status_code == 200, lease.text
    log = master.api("POST", f"/api/v1/jobs/{job_id}/log", user="worker",
                     params={"attempt": attempt}, data=b"building\n",
                     headers={"X-Pkgfarm-Token": token})
    assert log.status_code == 200, log.text
    deb = make_deb(tmp_path, "ra-secret", "1.0-1")
    sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
    staged = master.api("PUT", "/api/v1/upload", user="worker", data=deb.read_bytes(),
                        params={"filename": deb.name, "sha256": sha256, "job": job_id,
                                "attempt": attempt},
                        headers={"X-Pkgfarm-Token": token})
    assert staged.status_code == 201, staged.text
    # Refusals and errors are logged too; they must not carry the token either.
    stale = master.api("POST", f"/api/v1/jobs/{job_id}/lease", user="worker",
                       json={"attempt": attempt + 1, "token": token})
    assert stale.status_code == 409, stale.text
    master.api("POST", "/api/v1/jobs/9223372036854775808/lease", user="worker",
               json={"attempt": attempt, "token": token})
    report = master.api("POST", f"/api/v1/jobs/{job_id}/report", user="worker", json={
        "attempt": attempt, "token": token, "status": "success", "files": [deb.name],
        "sha256": {deb.name: sha256}})
    assert report.status_code == 200, report.text

    log_file = Path(master.log)
    # The access log is written as requests end: wait for the last call's line.
    wait_for(lambda: f"/api/v1/jobs/{job_id}/report" in log_file.read_text(errors="replace"),
             10, "the report in the access log")
    text = log_file.read_text(errors="replace")
    assert f"/api/v1/jobs/{job_id}/lease" in text  # the right file, with the access log in it
    basic = base64.b64encode(f"worker:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, token, basic):
        assert secret not in text, f"the master's log shows a secret ({secret[:4]}…)"
