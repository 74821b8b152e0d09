"""The dashboard on a Flask test client (no gunicorn, no broker): log-in and sessions, CSRF,
roles, public pages, store users and API tokens in the authenticator, the dashboard's
counts and its SVG charts. The browser tests are tests/integration/test_dashboard.py."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from common.config import settings_from_dict
from common.states import JobState
from master.app import create_app
from master.auth import Authenticator, hash_token, new_token
from master.store import PlannedJob, Store
from master.web import charts
from tests.integration.farm import RedisServer

FAST = "pbkdf2:sha256:1000"
PASSWORD = "web-password"
HASH = generate_password_hash(PASSWORD, method=FAST)
PACKAGES = Path(__file__).resolve().parents[1] / "integration" / "packages"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server: submissions queue at once, and the queue lengths are read."""
    redis = RedisServer(tmp_path_factory.mktemp("web-redis"))
    redis.start()
    try:
        yield redis.url
    finally:
        redis.stop()


@pytest.fixture(autouse=True)
def _broker_url(broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKGFARM_BROKER_URL", broker)


def make_app(tmp_path: Path, **master: Any) -> Any:
    users = {"admin": {"password_hash": HASH, "roles": ["admin"]},
             "reader": {"password_hash": HASH, "roles": ["read"]},
             "builder": {"password_hash": HASH, "roles": ["read", "build"]}}
    return create_app(settings_from_dict({
        "master": {"data_dir": str(tmp_path / "data"), "users": users, **master},
        "broker_url": os.environ["PKGFARM_BROKER_URL"], "package_paths": [str(PACKAGES)]}))


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return make_app(tmp_path)


def form_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page[:500]
    return found[1]


def login(client: FlaskClient, user: str, password: str = PASSWORD) -> str:
    """Log in through the form; the session's CSRF token."""
    token = form_token(client.get("/login").text)
    resp = client.post("/login", data={"username": user, "password": password,
                                       "csrf_token": token, "next": "/builds"})
    assert resp.status_code == 303, resp.text
    return form_token(client.get("/builds").text)


def test_strangers_go_to_the_login_form(app: Any) -> None:
    client = app.test_client()
    for path in ("/", "/builds", "/workers", "/repository", "/packages", "/users"):
        resp = client.get(path)
        assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")
    with client.get("/static/style.css") as css:
        assert css.status_code == 200
    assert client.post("/builds/new", data={}).status_code == 303


def test_login_sets_a_safe_cookie_and_logout_ends_it(app: Any) -> None:
    client = app.test_client()
    token = form_token(client.get("/login").text)
    resp = client.post("/login", data={"username": "reader", "password": PASSWORD,
                                       "csrf_token": token, "next": "/workers"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/workers"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/workers").status_code == 200
    token = form_token(client.get("/workers").text)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/workers").status_code == 302


def test_secure_cookie_under_tls(tmp_path: Path) -> None:
    app = make_app(tmp_path, tls_cert="/dev/null", tls_key="/dev/null")
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_wrong_password_and_forged_login(app: Any) -> None:
    client = app.test_client()
    token = form_token(client.get("/login").text)
    wrong = client.post("/login", data={"username": "reader", "password": "nope",
                                        "csrf_token": token})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    forged = client.post("/login", data={"username": "reader", "password": PASSWORD,
                                         "csrf_token": "not-the-token"})
    assert forged.status_code == 403
    assert client.get("/builds").status_code == 302


def test_state_changes_need_the_csrf_token(app: Any) -> None:
    client = app.test_client()
    token = login(client, "builder")
    refused = client.post("/builds/new", data={"packages": "itest-fail"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    api = client.post("/api/v1/builds", json={"packages": ["itest-fail"]})
    assert api.status_code == 403 and "CSRF" in api.json["error"]
    done = client.post("/builds/new", data={"packages": "itest-fail", "csrf_token": token})
    assert done.status_code == 303 and done.headers["Location"] == "/builds/1"
    page = client.get("/builds/1").text
    assert "itest-fail" in page and 'id="restart"' in page
    api = client.post("/api/v1/builds", json={"packages": ["itest-fail"]},
                      headers={"X-CSRF-Token": token})
    assert api.status_code == 202


def test_roles_decide_the_buttons(app: Any) -> None:
    admin = app.test_client()
    token = login(admin, "admin")
    admin.post("/builds/new", data={"packages": "itest-fail", "csrf_token": token})
    reader = app.test_client()
    login(reader, "reader")
    page = reader.get("/builds/1").text
    assert 'id="restart"' not in page and 'id="cancel"' not in page
    assert 'id="submit-form"' not in reader.get("/builds").text
    assert reader.get("/users").status_code == 403
    token = form_token(reader.get("/builds").text)
    assert reader.post("/builds/1/cancel", data={"csrf_token": token}).status_code == 403


def test_public_pages(tmp_path: Path) -> None:
    app = make_app(tmp_path, public_pages=True)
    client = app.test_client()
    for path in ("/", "/builds", "/workers", "/repository", "/packages"):
        assert client.get(path).status_code == 200, path
    assert client.get("/users").status_code == 302  # not a read-only page
    assert client.post("/builds/new", data={"packages": "x"}).status_code == 303
    assert client.get("/api/v1/builds").status_code == 401  # the API still needs a log-in


def test_builds_page_filters_and_pages(app: Any) -> None:
    client = app.test_client()
    token = login(client, "builder")
    for _ in range(3):
        client.post("/builds/new", data={"packages": "itest-fail", "csrf_token": token})
    client.post("/builds/new", data={"packages": "itest-slow", "csrf_token": token})
    page = client.get("/builds?package=slow").text
    assert "1 build(s)" in page and "itest-slow" in page
    assert "0 build(s)" in client.get("/builds?state=success").text
    assert "4 build(s)" in client.get("/builds?state=queued&requester=builder").text
    assert client.get("/builds?state=nonsense").status_code == 400
    assert client.get("/builds?page=x").status_code == 400
    assert client.get(f"/builds?page={10**30}").status_code == 400
    assert client.get("/builds?page=2").status_code == 200


def test_users_and_tokens_from_the_dashboard(app: Any) -> None:
    client = app.test_client()
    token = login(client, "admin")
    resp = client.post("/users/new", data={"name": "zoe", "password": "zoe-password",
                                           "roles": ["read", "build"], "csrf_token": token})
    assert resp.status_code == 303
    assert "User zoe made" in client.get("/users").text
    other = app.test_client()
    login(other, "zoe", "zoe-password")
    assert other.get("/builds").status_code == 200
    # Disabled: the open session is over at once.
    client.post("/users/zoe/update", data={"roles": ["read"], "disabled": "1",
                                           "csrf_token": token})
    assert other.get("/builds").status_code == 302
    client.post("/tokens/new", data={"name": "ci", "roles": ["read"], "csrf_token": token})
    secret = re.search(r'id="new-token">([^<]+)<', client.get("/users").text)
    assert secret and secret[1].startswith("pkf_")
    bare = app.test_client()
    assert bare.get("/api/v1/builds",
                    headers={"Authorization": f"Bearer {secret[1]}"}).status_code == 200
    # A config user cannot be changed here.
    refused = client.post("/users/reader/delete", data={"csrf_token": token})
    assert refused.status_code == 303
    assert "defined in the config file" in client.get("/users").text


def test_authenticator_store_users_and_tokens(tmp_path: Path) -> None:
    from flask import Flask

    store = Store(tmp_path / "state.db")
    auth = Authenticator({}, store.logins, store.accounts)
    store.accounts.create_user("sam", generate_password_hash("sam-password", method=FAST),
                               ["read"], ["hello-*"], "admin")
    secret = new_token()
    store.accounts.create_token("sams", hash_token(secret), "sam", ["read", "build"], "admin")
    with Flask("t").test_request_context(environ_base={"REMOTE_ADDR": "192.0.2.7"}):
        assert auth.verify("sam", "sam-password") == "sam"
        assert auth.verify("sam", "other") is None
        found = auth.verify_token(secret)
        assert found is not None and found.name == "sam"
        assert found.roles == ("read",)  # at most the user's
        assert found.packages == ("hello-*",)
        assert auth.verify_token(secret + "x") is None
        assert auth.verify_token("no-prefix") is None
        store.accounts.update_user("sam", disabled=True)
        assert auth.verify("sam", "sam-password") is None  # the cache does not hide it
        assert auth.verify_token(secret) is None


def test_sessions_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    accounts = store.accounts
    accounts.open_session("h1", "amy", time.time() + 60)
    accounts.open_session("h2", "amy", time.time() - 1)
    assert accounts.session_user("h1") == "amy"
    assert accounts.session_user("h2") is None  # expired
    accounts.close_session("h1")
    assert accounts.session_user("h1") is None
    assert accounts.secret("session") == Store(tmp_path / "state.db").accounts.secret("session")
    assert len(accounts.secret("session")) == 32


def test_stats(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    job = PlannedJob("pkg", "1.0", "all", b"")
    build_id, (job_id,) = store.jobs.create_build(["pkg"], None, "ann", [job])
    store.jobs.claim(job_id, 1, "w1", "worker", "hash", 60)
    store.jobs.finish(job_id, 1, JobState.FAILED, "boom", [])
    store.jobs.create_build(["other"], "amd64", "ben", [PlannedJob("other", "2", "amd64",
                                                                    b"")])
    counts = store.stats.job_counts()
    assert counts["failed"] == 1 and counts["queued"] == 1 and counts["success"] == 0
    total, found = store.stats.builds(state="failed")
    assert total == 1 and found[0][0].id == build_id
    assert store.stats.builds(requester="ben")[0] == 1
    assert store.stats.builds(arch="amd64")[0] == 1
    assert store.stats.builds(package="oth")[0] == 1
    assert store.stats.builds(limit=1, offset=1)[1][0][0].id == build_id
    _start, hours = store.stats.finished_per_hour(24)
    assert len(hours) == 24 and hours[-1] == {"failed": 1}
    assert store.stats.worker_counts(0) == {"w1": {"done": 0, "failed": 1}}
    assert [j.id for j in store.stats.failures()] == [job_id]
    store.stats.add_samples({"build.all": 3}, at=100.0)
    store.stats.add_samples({"build.all": 1})  # prunes samples older than two days
    assert list(store.stats.samples(0)) == ["build.all"]
    assert len(store.stats.samples(0)["build.all"]) == 1


def test_charts_escape_and_scale() -> None:
    svg = charts.stacked_bars("Jobs <per> hour", [{"success": 2, "failed": 1}, {}],
                              ("success", "failed"), ["01:00", "<b>"])
    assert svg.startswith("<svg") and "&lt;b&gt;" in svg and "<b>" not in svg
    assert svg.count('class="s-success"') == 1 and svg.count('class="s-failed"') == 1
    line = charts.lines("q", {"build.all": [(0.0, 1), (60.0, 4)]}, 0.0, 60.0)
    assert "<polyline" in line and line.count("<circle") == 2
    bars = charts.bars("t", [("#1", 12.0, "success"), ("#2", 30.0, "failed")])
    assert 'class="s-failed"' in bars and "30.0 s" in bars


def test_admins_drain_workers_and_pause_queues_from_the_workers_page(app: Any) -> None:
    from master.store import WorkerInfo

    services = app.extensions["pkgfarm"]
    services.store.workers.heartbeat("box-1", WorkerInfo(("amd64",), 2,
                                                         ("build.amd64", "build.all")))
    admin = app.test_client()
    token = login(admin, "admin")
    page = admin.get("/workers").text
    assert "box-1" in page and 'data-action="drain"' in page and 'data-action="pause"' in page
    assert admin.post("/workers/box-1/drain", data={"csrf_token": token}).status_code == 303
    assert services.store.workers.is_drained("box-1")
    assert "drained" in admin.get("/workers").text
    admin.post("/workers/box-1/resume", data={"csrf_token": token})
    assert not services.store.workers.is_drained("box-1")
    admin.post("/queues/build.amd64/pause", data={"csrf_token": token})
    assert services.store.queues.is_paused("build.amd64")
    admin.post("/queues/build.amd64/resume", data={"csrf_token": token})
    assert not services.store.queues.is_paused("build.amd64")
    admin.post("/queues/build.nowhere/pause", data={"csrf_token": token})
    assert "no build queue" in admin.get("/workers").text
    # Readers see the workers, not the buttons, and may not use them.
    reader = app.test_client()
    token = login(reader, "reader")
    page = reader.get("/workers").text
    assert "box-1" in page and "data-action" not in page
    assert reader.post("/workers/box-1/drain", data={"csrf_token": token}).status_code == 403


def test_one_reading_of_the_queue_lengths(app: Any) -> None:
    """The API, the dashboard's samples and chart, and the metrics all read the broker's
    queues through the scheduler: the same lengths, a queue's priority levels added up."""
    import redis

    from master.metrics import StoreCollector
    from master.web.data import QueueSampler

    services = app.extensions["pkgfarm"]
    broker = redis.Redis.from_url(os.environ["PKGFARM_BROKER_URL"])
    before = services.scheduler.queue_lengths()
    assert before is not None and {"build.amd64", "build.all"} <= set(before)
    broker.rpush("build.all", b"m1", b"m2")
    broker.rpush("build.all\x06\x163", b"m3")  # kombu's key of a priority level of build.all
    broker.set("build.not-a-list", b"x")
    try:
        lengths = services.scheduler.queue_lengths()
        assert lengths["build.all"] == before["build.all"] + 3
        assert not any(name.startswith("build.not") or "\x06" in name for name in lengths)
        assert {name: n for name, n, _paused in services.scheduler.queues()} == lengths
        client = app.test_client()
        api = client.get("/api/v1/queues", auth=("reader", PASSWORD)).json
        assert {q["name"]: q["length"] for q in api["queues"]} == lengths
        families = {f.name: f for f in StoreCollector(services).collect()}
        assert {s.labels["queue"]: s.value for s in families["pkgfarm_queue_length"].samples
                } == lengths
        # The dashboard's sample of them, drawn on the overview's chart.
        assert QueueSampler(services, interval=0).tick()
        assert {q: pts[-1][1] for q, pts in services.store.stats.samples(0).items()} == lengths
        login(client, "reader")
        page = client.get("/").text
        chart = page[page.index('id="queue-chart"'):]
        chart = chart[:chart.index("</svg>")]
        assert f"build.all: {lengths['build.all']}</title></circle>" in chart
        assert chart.count("<polyline") == len(lengths)
    finally:
        broker.delete("build.all", "build.all\x06\x163", "build.not-a-list")


def test_the_build_page_links_its_event_stream_under_a_prefix(tmp_path: Path) -> None:
    """Behind a proxy that serves the master under a path, the page's script asks for the
    event stream under that path too."""
    app = make_app(tmp_path, public_pages=True)
    build_id, _jobs = app.extensions["pkgfarm"].store.jobs.create_build(
        ["pkg"], None, "ann", [PlannedJob("pkg", "1.0", "all", b"")])
    page = app.test_client().get(f"/builds/{build_id}", base_url="http://localhost/farm")
    assert page.status_code == 200
    assert f'data-events-url="/farm/api/v1/events?build={build_id}"' in page.text
