"""The dashboard in a real browser: headless Chromium (Debian's chromium and chromedriver,
driven by Selenium) against the master under gunicorn, with a real worker and redis-server.

One farm and one browser serve the whole module; its repository is signed, and the master
sends webhooks to a receiver in the test (and to a port nobody listens on) for the webhooks
page. Each page the tests visit is saved as a screenshot under test-artifacts/dashboard/ (or
$PKGFARM_TEST_ARTIFACTS).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import Farm
from tests.integration.farm import (
    CLIENT_FOLDERS,
    PASSWORD,
    REPO_ROOT,
    Master,
    free_port,
    wait_for,
)
from tests.integration.hooks import Receiver
from tests.integration.test_repository import generate_key

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException
    from selenium.webdriver.common.by import By
except ImportError:  # a missing browser driver fails the tests, as a missing browser does
    pytest.fail("the dashboard tests need selenium (pip install -e '.[test]' installs it)",
                pytrace=False)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("PKGFARM_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) \
    / "dashboard"

#: A build that writes a numbered line every half second for a few seconds.
CHATTY = """\
package:
  name: itest-chatty
  version: 1.0
  release: 1
  architecture: all
  description: |
    A build that talks while it runs, for the dashboard's live log
  maintainer: pkgfarm tests <tests@example.org>
build: |
  for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
    echo "chatty line $i"
    sleep 0.5
  done
  mkdir -p "$DESTDIR/usr/share/itest-chatty"
  echo done > "$DESTDIR/usr/share/itest-chatty/marker"
  echo "chatty ends"
"""


#: The webhooks page must never show a hook's secret.
HOOK_SECRET = "dashboard-hook-secret-0123456789"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("dashboard")
    own = root / "packages"
    own.mkdir()
    (own / "itest-chatty.yaml").write_text(CHATTY)
    from tests.integration.farm import TEST_PACKAGES

    # Two hooks for the webhooks page: one to the receiver above, one to a port nothing
    # listens on, given up after its one try.
    hooks = [{"name": "ci", "url": receiver.url, "events": ["build.finished", "job.finished"],
              "secret": HOOK_SECRET, "timeout": 5, "backoff": 0.5},
             {"name": "nobody-home", "url": f"http://127.0.0.1:{free_port()}/hook",
              "events": ["build.finished"], "secret": HOOK_SECRET, "timeout": 2,
              "max_attempts": 1}]
    key = root / "farm.asc"
    generate_key(key)
    f = Farm(root, extra_master={"webhooks": hooks},
             extra={"package_paths": [str(TEST_PACKAGES), str(own)],
                    "repository": {"suite": "stable", "suites": ["testing"],
                                   "component": "main", "architectures": ["amd64", "arm64"],
                                   "signing_key": str(key)}})
    try:
        f.start({})
        assert f.master is not None
        # A job no worker takes (the one worker builds amd64), queued before the master's
        # first sample of the queues (a few seconds after its start; then one a minute): it
        # waits in build.arm64 all along, so the queue-length chart draws it.
        f.master.submit(["itest-arm64"])
        f.add_worker("w-web", ["amd64"])
        yield f
    finally:
        f.stop()


#: A user made at run time through the API (the config's `builder` holds `build` only, not
#: `read`, which the pages need).
BUILDER, BUILDER_PASSWORD = "webbuilder", "webbuilder-password"


@pytest.fixture(scope="module")
def master(farm: Farm) -> Master:
    assert farm.master is not None
    resp = farm.master.api("POST", "/api/v1/users", json={
        "name": BUILDER, "password": BUILDER_PASSWORD, "roles": ["read", "build"]})
    assert resp.status_code == 201, resp.text
    return farm.master


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("the dashboard tests need Debian's chromium and chromium-driver "
                    "(./dev.sh setup installs them)")
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", f"--user-data-dir={profile}", "--no-first-run",
                "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver: Any, name: str) -> None:
    """Keep what the page looks like now (the whole page's height)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000),
            "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": clip})
    (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def login(driver: Any, master: Master, user: str, password: str | None = None,
          then: str = "/") -> None:
    """Log in through the form, as a person would (a fresh session first)."""
    if password is None:
        password = BUILDER_PASSWORD if user == BUILDER else PASSWORD
    # Leave the page first: an answer to its script's requests still on the way would bring
    # the old session's cookie back after it is dropped.
    driver.get(master.url + "/login")
    driver.delete_all_cookies()
    driver.get(master.url + then)
    wait_for(lambda: "/login" in driver.current_url, 15, "the log-in form")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: _text(driver, "whoami") == user, 15, f"{user} logged in")


def _text(driver: Any, element_id: str) -> str | None:
    try:
        text: str = driver.find_element(By.ID, element_id).text
    except NoSuchElementException:
        return None
    return text


def _has(driver: Any, element_id: str) -> bool:
    return bool(driver.find_elements(By.ID, element_id))


def job_state(driver: Any) -> str:
    state: str = driver.find_element(By.CSS_SELECTOR, "#jobs tbody tr").get_attribute(
        "data-state")
    return state


def log_text(driver: Any) -> str:
    text: str = driver.find_element(By.CSS_SELECTOR, "pre.logtext").text
    return text


# -- the tests -------------------------------------------------------------------------------


def test_login_form(browser: Any, master: Master) -> None:
    browser.delete_all_cookies()
    browser.get(master.url + "/builds")
    assert "/login" in browser.current_url  # strangers are sent to the form
    shot(browser, "login")
    browser.find_element(By.ID, "username").send_keys(BUILDER)
    browser.find_element(By.ID, "password").send_keys("not-the-password")
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: "Wrong user name or password" in browser.page_source, 15, "the refusal")
    assert not _has(browser, "whoami")

    login(browser, master, BUILDER, then="/builds")
    assert browser.current_url.endswith("/builds")  # back where the user wanted to go
    # The session cookie is out of scripts' reach.
    assert "pkgfarm_session" not in browser.execute_script("return document.cookie")
    cookie = browser.get_cookie("pkgfarm_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"


def test_build_page_follows_a_build_live(browser: Any, master: Master) -> None:
    # Keep the one worker busy first, so that the watched build is seen waiting in the queue.
    busy = master.submit(["itest-slow"])
    wait_for(lambda: master.api("GET", f"/api/v1/builds/{busy}").json()["status"]
             == "building", 60, "the first build to start")
    login(browser, master, BUILDER, then="/builds")
    browser.find_element(By.ID, "submit-packages").send_keys("itest-chatty")
    browser.find_element(By.ID, "submit-build").click()
    wait_for(lambda: _has(browser, "build"), 15, "the new build's page")
    build_id = int(browser.find_element(By.ID, "build").get_attribute("data-build-id"))
    # A marker that only survives if the page is never loaded again, and every state the
    # job's row takes, as the page's own script changes it.
    browser.execute_script("""
        window.__marker = 1;
        var row = document.querySelector('#jobs tbody tr');
        window.__states = [row.getAttribute('data-state')];
        new MutationObserver(function () {
            var s = row.getAttribute('data-state');
            if (window.__states[window.__states.length - 1] !== s) { window.__states.push(s); }
        }).observe(row, {attributes: true, attributeFilter: ['data-state']});
    """)
    assert job_state(browser) == "queued"
    # The page listens to the master's event stream (its session cookie admits it).
    wait_for(lambda: browser.find_element(By.ID, "build").get_attribute("data-live")
             == "events", 15, "the event stream to open")
    wait_for(lambda: job_state(browser) == "building", 60, "the job to start building")
    # Lines appear while it still builds...
    wait_for(lambda: "chatty line 3" in log_text(browser), 30, "the first log lines")
    assert job_state(browser) == "building"
    assert "chatty ends" not in log_text(browser)
    # The running job's duration goes on by itself.
    cell = browser.find_element(By.CSS_SELECTOR, '#jobs tbody tr [data-field="duration"]')
    before = cell.text
    wait_for(lambda: cell.text != before, 5, "the duration to tick")
    shot(browser, "build-running")
    # ... and the whole log is there when it ends.
    wait_for(lambda: job_state(browser) == "success", 60, "the build to succeed")
    wait_for(lambda: "chatty ends" in log_text(browser), 15, "the whole log")
    text = log_text(browser)
    assert all(f"chatty line {i}" in text for i in range(1, 13)), text
    assert browser.execute_script("return window.__marker") == 1
    states = browser.execute_script("return window.__states")
    assert states[0] == "queued" and states[-1] == "success" and "building" in states, states
    badge = browser.find_element(By.CSS_SELECTOR, "#build-state .badge").text
    assert badge == "success"
    row = browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr")
    assert row.find_element(By.CSS_SELECTOR, '[data-field="worker"]').text == "w-web"
    assert row.find_element(By.CSS_SELECTOR, '[data-field="duration"]').text.endswith("s")
    shot(browser, "build-success")
    assert master.api("GET", f"/api/v1/builds/{build_id}").json()["status"] == "success"
    master.wait_build(busy)


def test_failed_build_shows_its_error_and_log_and_restarts(browser: Any,
                                                           master: Master) -> None:
    resp = requests.post(master.url + "/api/v1/builds", auth=(BUILDER, BUILDER_PASSWORD),
                         json={"packages": ["itest-fail"]}, timeout=30)
    assert resp.status_code == 202, resp.text
    build_id = resp.json()["id"]
    login(browser, master, BUILDER, then=f"/builds/{build_id}")
    wait_for(lambda: job_state(browser) == "failed", 90, "the build to fail")
    job_id = browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr").get_attribute(
        "data-job-id")
    error = browser.find_element(By.ID, f"error-{job_id}")
    wait_for(lambda: error.is_displayed() and error.text, 15, "the error shown")
    assert "3" in error.text  # the script's exit status
    wait_for(lambda: "about to fail on purpose" in log_text(browser), 15, "the failed log")
    shot(browser, "build-failed")

    restart = browser.find_element(By.ID, "restart")
    assert restart.is_enabled()
    restart.click()
    wait_for(lambda: "Restarted 1 job(s)" in browser.page_source, 15, "the restart")
    wait_for(lambda: browser.find_element(
        By.CSS_SELECTOR, '#jobs tbody tr [data-field="attempt"]').text == "2", 30,
        "the second attempt")
    wait_for(lambda: job_state(browser) == "failed", 90, "the second attempt to fail")
    build = master.api("GET", f"/api/v1/builds/{build_id}").json()
    assert build["jobs"][0]["attempt"] == 2 and build["jobs"][0]["status"] == "failed"

    # The overview lists it among the newest failures, with its first error line.
    browser.get(master.url + "/")
    failures = browser.find_element(By.ID, "failures").text
    assert "itest-fail" in failures and "exit status 3" in failures
    assert browser.find_element(By.CSS_SELECTOR, "#job-counts .s-failed .n").text != "0"
    assert "build.amd64" in browser.find_element(By.ID, "queues").text
    assert "amd64" in browser.find_element(By.ID, "workers-per-arch").text
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.s-success")
    shot(browser, "overview")


def test_a_reader_sees_no_action_buttons(browser: Any, master: Master) -> None:
    build_id = master.api("GET", "/api/v1/builds?limit=1").json()["builds"][0]["id"]
    login(browser, master, "reader", then=f"/builds/{build_id}")
    assert _has(browser, "jobs")
    assert not _has(browser, "actions")
    assert not _has(browser, "restart") and not _has(browser, "cancel")
    browser.get(master.url + "/builds")
    assert _has(browser, "builds") and not _has(browser, "submit-form")
    browser.get(master.url + "/packages/itest-chatty")
    assert _has(browser, "history") and not _has(browser, "remove-form")
    browser.get(master.url + "/users")
    assert "403" in browser.find_element(By.TAG_NAME, "h1").text
    # A build user does see them (and the admin sees package management).
    login(browser, master, BUILDER, then=f"/builds/{build_id}")
    assert _has(browser, "restart") and _has(browser, "cancel")


def test_admins_see_webhook_deliveries(browser: Any, master: Master,
                                      receiver: Receiver) -> None:
    # The builds of the tests before have ended: their notifications reached the receiver.
    build_id = master.api("GET", "/api/v1/builds?limit=1").json()["builds"][0]["id"]
    assert master.wait_build(build_id)["status"] in ("success", "failed")

    def delivered() -> bool:
        hooks = master.api("GET", "/api/v1/webhooks").json()["webhooks"]
        return any(d["event"] == "build.finished" and d["build_id"] == build_id
                   and d["state"] == "delivered" for d in hooks[0]["deliveries"])

    wait_for(delivered, 60, f"build {build_id}'s notification delivered")
    assert any(b["event"] == "build.finished" and b["build"]["id"] == build_id
               for b in [e["json"] for e in receiver.accepted()])

    login(browser, master, "admin", then="/webhooks")
    assert browser.current_url.endswith("/webhooks")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Webhooks"
    assert _has(browser, "nav-webhooks")
    assert HOOK_SECRET not in browser.page_source
    card = browser.find_element(By.ID, "hook-ci")
    assert card.find_element(By.TAG_NAME, "h2").text == "ci"
    assert card.find_element(By.CSS_SELECTOR, '[data-field="url"]').text == receiver.url
    assert card.find_element(By.CSS_SELECTOR, '[data-field="events"]').text == \
        "build.finished, job.finished"
    delivered_count = card.find_element(By.CSS_SELECTOR, '[data-count="delivered"]').text
    assert delivered_count.startswith("delivered ") and int(delivered_count.split()[1]) >= 2
    assert card.find_element(By.CSS_SELECTOR, '[data-count="failed"]').text == "failed 0"
    rows = [r for r in card.find_elements(By.CSS_SELECTOR, "table.deliveries tbody tr")
            if r.find_element(By.CSS_SELECTOR, '[data-field="event"]').text
            .startswith("build.finished")
            and r.find_element(By.CSS_SELECTOR, '[data-field="build"]').text == f"#{build_id}"]
    assert rows, card.text
    row = rows[0]  # the newest (a restarted build ends, and is notified, once more)
    assert row.get_attribute("data-state") == "delivered"
    assert row.find_element(By.CSS_SELECTOR, ".badge").text == "delivered"
    assert row.find_element(By.CSS_SELECTOR, '[data-field="result"]').text == "HTTP 200"
    assert row.find_element(By.CSS_SELECTOR, '[data-field="attempts"]').text == "1"
    assert row.find_element(By.CSS_SELECTOR, '[data-field="last-try"]').text.endswith(" ago")
    assert row.find_element(By.CSS_SELECTOR, '[data-field="next-try"]').text == "–"
    link = row.find_element(By.CSS_SELECTOR, '[data-field="build"] a')
    assert link.get_attribute("href") == f"{master.url}/builds/{build_id}"

    # The hook nobody answers: its notifications were tried once and given up, with the error.
    def given_up() -> bool:
        browser.get(master.url + "/webhooks")
        card = browser.find_element(By.ID, "hook-nobody-home")
        return (card.find_element(By.CSS_SELECTOR, '[data-count="failed"]').text != "failed 0"
                and card.find_element(By.CSS_SELECTOR, '[data-count="pending"]').text
                == "pending 0")

    wait_for(given_up, 30, "the unanswered hook's deliveries given up", interval=1)
    card = browser.find_element(By.ID, "hook-nobody-home")
    failed = card.find_element(By.CSS_SELECTOR, 'table.deliveries tbody tr[data-state="failed"]')
    assert failed.find_element(By.CSS_SELECTOR, '[data-field="attempts"]').text == "1"
    result = failed.find_element(By.CSS_SELECTOR, '[data-field="result"]')
    assert result.text and not result.text.startswith("HTTP ")  # no answer at all
    assert result.find_element(By.CSS_SELECTOR, ".error-text")
    shot(browser, "webhooks")

    # The build link leads to the build's page.
    browser.find_element(By.CSS_SELECTOR, f'#hook-ci a[href="/builds/{build_id}"]').click()
    wait_for(lambda: _has(browser, "build"), 15, "the build's page")
    assert browser.find_element(By.ID, "build").get_attribute("data-build-id") == str(build_id)

    # Neither a reader nor a build user sees the page or its link.
    for user in ("reader", BUILDER):
        login(browser, master, user, then="/webhooks")
        assert not _has(browser, "nav-webhooks"), user
        assert browser.find_element(By.TAG_NAME, "h1").text == "403", user
        assert "does not hold the admin role" in browser.find_element(By.ID, "error").text
        assert "hook-ci" not in browser.page_source and receiver.url not in browser.page_source
    shot(browser, "webhooks-refused")


class _CrossSite:
    """A page of another origin (another port on loopback) that POSTs a form to the master
    as soon as it loads, riding on whatever cookies the browser holds for the master."""

    def __init__(self, target: str) -> None:
        page = (f'<!doctype html><form id="f" method="post" action="{target}">'
                '<input type="hidden" name="reason" value="cross-site"></form>'
                "<script>document.getElementById('f').submit();</script>").encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _CrossSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cross_site_post_is_refused_but_the_page_works(browser: Any, master: Master) -> None:
    build_id = master.submit(["itest-slow"])
    login(browser, master, BUILDER, then=f"/builds/{build_id}")
    for target in (f"{master.url}/builds/{build_id}/cancel",
                   f"{master.url}/api/v1/builds/{build_id}/cancel"):
        with _CrossSite(target) as evil:
            browser.get(evil.url)
            wait_for(lambda: browser.current_url.startswith(master.url), 15,
                     "the forged form to reach the master")
            wait_for(lambda: "CSRF" in browser.page_source, 15, "the refusal")
            if "/api/" not in target:
                assert browser.find_element(By.TAG_NAME, "h1").text == "403"
            shot(browser, "cross-site-refused")
        status = master.api("GET", f"/api/v1/builds/{build_id}").json()["status"]
        assert status in ("queued", "building"), status  # nothing was cancelled
    # The same action from the master's own page is accepted.
    browser.get(f"{master.url}/builds/{build_id}")
    browser.find_element(By.ID, "cancel").click()
    wait_for(lambda: "Cancelled 1 job(s)" in browser.page_source, 15, "the cancel")
    wait_for(lambda: job_state(browser) == "cancelled", 15, "the job cancelled")
    assert master.api("GET", f"/api/v1/builds/{build_id}").json()["status"] == "cancelled"


def test_every_page_renders(browser: Any, master: Master) -> None:
    login(browser, master, "admin")
    pages = {"builds": "/builds", "builds-filtered": "/builds?state=success&arch=all",
             "package": "/packages/itest-chatty", "packages": "/packages",
             "workers": "/workers", "repository": "/repository", "users": "/users"}
    for name, path in pages.items():
        browser.get(master.url + path)
        assert browser.find_element(By.TAG_NAME, "h1").text, name
        shot(browser, name)
    browser.get(master.url + "/builds?state=success&arch=all")
    listed = browser.find_element(By.ID, "builds").text
    assert "itest-chatty" in listed and "itest-fail" not in listed
    browser.get(master.url + "/packages/itest-chatty")
    assert browser.find_element(By.ID, "success-rate").text == "100 %"
    assert "build #" in browser.find_element(By.CSS_SELECTOR, "table.versions").text
    assert _has(browser, "remove-form")
    # An admin promotes it to testing from the page.
    browser.find_element(By.CSS_SELECTOR, "#promote-form select[name=to] option[value=testing]"
                         ).click()
    browser.find_element(By.ID, "promote").click()
    wait_for(lambda: "Promoted itest-chatty 1.0-1 from stable to testing" in
             browser.page_source, 15, "the promotion")
    assert browser.find_elements(By.CSS_SELECTOR, 'table.versions[data-suite="testing"]')
    assert "itest-chatty_1.0-1_all.deb" in master.index("amd64", suite="testing")
    shot(browser, "package")
    browser.get(master.url + "/workers")
    assert "w-web" in browser.find_element(By.ID, "workers").text
    browser.get(master.url + "/repository")
    assert "itest-chatty" in browser.find_element(
        By.CSS_SELECTOR, 'table[data-suite="testing"]').text
    # Logging out ends the session: the pages ask for a log-in again.
    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: "/login" in browser.current_url, 15, "the log-in form")
    browser.get(master.url + "/")
    assert "/login" in browser.current_url


def _svg_titles(driver: Any, selector: str) -> list[str]:
    """The tooltips (SVG <title>s) of the chart elements ``selector`` finds."""
    return [e.get_attribute("textContent")
            for e in driver.find_elements(By.CSS_SELECTOR, f"{selector} > title")]


def test_the_signed_repository_page(browser: Any, master: Master, tmp_path: Path) -> None:
    health = master.api("GET", "/api/v1/health", user=None).json()
    fingerprint = health["signing_key"]
    assert re.fullmatch(r"[0-9A-F]{40}", fingerprint), fingerprint
    deb = health["repository"]["formats"]["deb"]
    login(browser, master, "reader", then="/repository")
    assert browser.find_element(By.ID, "fingerprint").text == fingerprint
    client = browser.find_element(By.ID, "client-deb")
    key_url = client.find_element(By.CSS_SELECTOR, "a.key-url")
    assert key_url.get_attribute("href") == deb["key_url"] == f"{master.url}/repo/key.gpg"
    setup = client.find_element(By.CSS_SELECTOR, "pre.setup").text
    assert f"curl -fsSL {deb['key_url']} | sudo tee /etc/apt/keyrings/pkgfarm.gpg" in setup
    lines = {e.get_attribute("data-suite"): e.text
             for e in client.find_elements(By.CSS_SELECTOR, "pre.sources")}
    assert lines == {suite: f"deb [signed-by=/etc/apt/keyrings/pkgfarm.gpg] {master.url}/repo "
                            f"{suite} main" for suite in ("stable", "testing")}
    assert lines["stable"] == deb["snippet"]
    # The key where the page says it is, is the key of that fingerprint.
    key = tmp_path / "key.gpg"
    key.write_bytes(requests.get(deb["key_url"], timeout=10).content)
    CLIENT_FOLDERS.append(tmp_path)  # any agent gpg starts there goes with the test
    shown = subprocess.run(["gpg", "--homedir", str(tmp_path), "--batch", "--with-colons",
                            "--show-keys", str(key)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    # The primary key's fingerprint comes first.
    assert next(f.split(":")[9] for f in shown.splitlines() if f.startswith("fpr:")) == \
        fingerprint
    # The overview names the same key.
    browser.get(master.url + "/")
    assert fingerprint in browser.find_element(By.CSS_SELECTOR, "code.fpr").text
    browser.get(master.url + "/repository")
    shot(browser, "repository-signed")


def test_workers_page_counts_the_day_s_jobs(browser: Any, master: Master) -> None:
    builds = master.api("GET", "/api/v1/builds", params={"limit": 1000}).json()["builds"]
    jobs = [j for b in builds for j in b["jobs"] if j["worker"] == "w-web"]
    done = sum(j["status"] == "success" for j in jobs)
    failed = sum(j["status"] == "failed" for j in jobs)
    assert done >= 2 and failed >= 1  # the builds of the tests before
    (api,) = [w for w in master.api("GET", "/api/v1/workers").json()["workers"]
              if w["name"] == "w-web"]
    assert api["last_24h"] == {"done": done, "failed": failed}
    login(browser, master, "reader", then="/workers")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-worker="w-web"]')
    assert row.find_element(By.CSS_SELECTOR, '[data-field="done"]').text == str(done)
    assert row.find_element(By.CSS_SELECTOR, '[data-field="failed"]').text == str(failed)
    assert row.find_element(By.CSS_SELECTOR, '[data-field="building"]').text == "idle"
    # The waiting arm64 job is in its queue.
    queue = browser.find_element(By.CSS_SELECTOR, '#queues tr[data-queue="build.arm64"]')
    assert queue.find_elements(By.TAG_NAME, "td")[1].text == "1"
    shot(browser, "workers-counts")


def test_charts_draw_the_queue_samples_and_each_build_s_time(browser: Any,
                                                            master: Master) -> None:
    login(browser, master, "reader", then="/")

    def arm64_sampled() -> bool:
        browser.get(master.url + "/")
        return "build.arm64: 1" in _svg_titles(browser, "#queue-chart svg.chart circle")

    # The master samples the queues each minute; the arm64 job has waited since the start.
    wait_for(arm64_sampled, 75, "a sample of build.arm64 holding its job", interval=3)
    chart = "#queue-chart svg.chart"
    assert {"build.amd64", "build.arm64", "build.all"} <= set(
        _svg_titles(browser, f"{chart} polyline"))
    points = browser.find_elements(By.CSS_SELECTOR, f"{chart} circle")
    height = {p.find_element(By.TAG_NAME, "title").get_attribute("textContent"):
              float(p.get_attribute("cy")) for p in points}
    # A point of 1 is drawn above the zero line (SVG's y grows downwards).
    assert height["build.arm64: 1"] < height["build.amd64: 0"]
    shot(browser, "overview-charts")

    # One bar per build of the package that ran, in order, with its time and outcome: the
    # builds of the tests before (one cancelled, maybe while it ran) and one more.
    assert master.wait_build(master.submit(["itest-slow"]))["status"] == "success"
    history = master.api("GET", "/api/v1/packages/itest-slow").json()["history"]
    ran = [j for j in reversed(history) if j["seconds"] is not None]
    assert len(ran) >= 2 and ran[-1]["state"] == "success"
    browser.get(master.url + "/packages/itest-slow")
    bars = _svg_titles(browser, "#build-time-chart svg.chart rect")
    parsed = [re.fullmatch(r"#(\d+): ([\d.]+) s \(([a-z-]+)\)", t) for t in bars]
    assert all(parsed), bars
    assert [(int(m[1]), m[3]) for m in parsed if m] == [(j["build_id"], j["state"])
                                                       for j in ran]
    for m, job in zip(parsed, ran, strict=True):
        assert m is not None and abs(float(m[2]) - job["seconds"]) <= 0.1
    shot(browser, "package-build-times")


def test_an_admin_removes_a_package_from_its_page(browser: Any, master: Master) -> None:
    filename = "itest-slow_1.0-1_all.deb"
    assert filename in master.index("amd64") and filename in master.index("arm64")
    login(browser, master, "admin", then="/packages/itest-slow")
    browser.find_element(By.ID, "remove").click()
    wait_for(lambda: "Removed 1 file(s) of itest-slow." in browser.page_source, 15,
             "the removal")
    assert "Not published (yet)." in browser.find_element(By.TAG_NAME, "main").text
    assert _has(browser, "history")  # its builds are still the farm's history
    shot(browser, "package-removed")
    for arch in ("amd64", "arm64"):
        assert "itest-slow" not in master.index(arch)
    assert master.api("GET", "/api/v1/packages", params={"name": "itest-slow"}).json() == \
        {"packages": []}
    browser.get(master.url + "/packages")
    assert "itest-slow" not in browser.find_element(By.TAG_NAME, "main").text
    assert "itest-chatty" in browser.find_element(By.TAG_NAME, "main").text
