"""The dashboard's webhooks page on a Flask test client, with deliveries put in the store by
hand (the browser test with real deliveries is in tests/integration/test_dashboard.py)."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

from master.store.webhooks import NewDelivery
from master.web.webhooks import last_result
from tests.unit.test_web import _broker_url, broker, login, make_app  # noqa: F401 (fixtures)

SECRET = "unit-hook-secret-0123456789"
HOOKS = [{"name": "ci", "url": "http://127.0.0.1:9/ci", "events": ["build.finished"],
          "secret": SECRET, "max_attempts": 3},
         {"name": "quiet", "url": "https://hooks.example.org/q?x=<y>",
          "events": ["job.finished", "build.finished"], "secret": SECRET}]


def _queue(app: Any, hook: str, *builds: int | None) -> list[int]:
    """Queue one build.finished delivery per build for ``hook``; their seqs."""
    store = app.extensions["pkgfarm"].store.webhooks
    cursor = store.cursor()
    assert store.enqueue(cursor, cursor + 1, [
        NewDelivery(f"{hook}-{i}", hook, None, "build.finished", b, '{"event": "x"}')
        for i, b in enumerate(builds)])
    return [d.seq for d in reversed(store.recent(hook, len(builds)))]


def test_admins_see_hooks_counts_and_deliveries(tmp_path: Path) -> None:
    app = make_app(tmp_path, webhooks=HOOKS)
    store = app.extensions["pkgfarm"].store.webhooks
    ok, refused, down, _untried = _queue(app, "ci", 7, 8, 9, None)
    store.record(ok, delivered=True, status=200, error=None, next_try=None)
    store.record(refused, delivered=False, status=500, error="HTTP 500",
                 next_try=time.time() + 600)
    store.record(down, delivered=False, status=None, error="ConnectionRefusedError: nope",
                 next_try=None)
    client = app.test_client()
    login(client, "admin")
    resp = client.get("/webhooks")
    assert resp.status_code == 200
    page = resp.text
    assert SECRET not in page
    assert 'id="nav-webhooks"' in page
    assert "<h2>ci</h2>" in page and "<h2>quiet</h2>" in page
    assert html.escape("https://hooks.example.org/q?x=<y>") in page  # escaped
    assert "job.finished, build.finished" in page
    assert 'data-count="pending">pending 2<' in page
    assert 'data-count="delivered">delivered 1<' in page
    assert 'data-count="failed">failed 1<' in page
    assert 'href="/builds/7">#7</a>' in page
    assert ">HTTP 200<" in page
    assert ">HTTP 500<" in page and "HTTP 500: HTTP 500" not in page
    assert "ConnectionRefusedError: nope" in page
    assert "in 9 min" in page  # the refused one's next try
    assert "not tried yet" in page and "due now" in page  # the one without a build
    assert "Nothing was sent to this hook yet." in page  # quiet
    # Fewer rows on request, and a clear error for a bad number.
    assert client.get("/webhooks?limit=1").text.count("<tr data-delivery=") == 1
    bad = client.get("/webhooks?limit=0")
    assert bad.status_code == 400 and "limit must be between 1 and 500" in bad.text


def test_only_admins(tmp_path: Path) -> None:
    app = make_app(tmp_path, webhooks=HOOKS, public_pages=True)
    stranger = app.test_client()
    resp = stranger.get("/webhooks")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/login?next=")
    assert 'id="nav-webhooks"' not in stranger.get("/").text
    for user in ("reader", "builder"):
        client = app.test_client()
        login(client, user)
        resp = client.get("/webhooks")
        assert resp.status_code == 403
        assert f"{user} does not hold the admin role" in resp.text
        assert "127.0.0.1:9" not in resp.text
        assert 'id="nav-webhooks"' not in client.get("/").text


def test_no_hooks(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    login(client, "admin")
    assert "No webhook is configured" in client.get("/webhooks").text


def test_last_result(tmp_path: Path) -> None:
    app = make_app(tmp_path, webhooks=HOOKS)
    store = app.extensions["pkgfarm"].store.webhooks
    (seq,) = _queue(app, "ci", 1)
    assert last_result(store.recent("ci")[0]) is None
    store.record(seq, delivered=False, status=503, error="HTTP 503", next_try=time.time())
    assert last_result(store.recent("ci")[0]) == ("HTTP 503", False)
    store.record(seq, delivered=True, status=204, error=None, next_try=None)
    assert last_result(store.recent("ci")[0]) == ("HTTP 204", True)
