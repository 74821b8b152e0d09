"""Signed webhooks against a local receiver: a master under gunicorn with a real worker and
Redis; the receiver fails the first tries (500, then a time-out), then accepts. Each delivery
is retried until it arrives, signatures verify with the secret, a hook's deliveries for one
build keep their order, there is one build.finished per build with its links, and deliveries
pending when the master stops arrive after it starts again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Farm
from tests.integration.farm import wait_for
from tests.integration.hooks import Receiver

SECRET_ENV = "PKGFARM_TEST_HOOK_SECRET"
SECRET = "hook-secret-for-the-test-0123456789"


def signature_ok(entry: dict[str, Any]) -> bool:
    ts = entry["headers"]["x-pkgfarm-timestamp"]
    mac = hmac.new(SECRET.encode(), f"{ts}.".encode() + entry["body"], hashlib.sha256)
    return hmac.compare_digest(entry["headers"]["x-pkgfarm-signature"],
                               f"sha256={mac.hexdigest()}")


@pytest.fixture(scope="module")
def stalled() -> Iterator[str]:
    """A receiver that takes connections and never answers (the kernel accepts them)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver,
         stalled: str) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("webhooks")
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET  # the master reads it from its environment at start
    hook = {"name": "ci", "url": receiver.url, "events": ["build.finished", "job.finished"],
            "secret_env": SECRET_ENV, "timeout": 1, "backoff": 0.3, "max_attempts": 20}
    # A second hook whose receiver never answers: it must not hold the first one back, and
    # its deliveries are given up after their last try.
    stuck = {"name": "stalled", "url": stalled, "events": ["build.finished"],
             "secret": "another-secret-0123456789", "timeout": 2, "backoff": 0.2,
             "max_attempts": 2}
    f = Farm(root, extra_master={"processes": 2, "webhooks": [hook, stuck],
                                 "public_url": "https://farm.example.org/"})
    try:
        f.start({"h-amd64": ["amd64"]})
        yield f
    finally:
        f.stop()
        if old is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old


def finished_builds(receiver: Receiver) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {}
    for e in receiver.accepted():
        if e["json"]["event"] == "build.finished":
            found.setdefault(e["json"]["build"]["id"], []).append(e)
    return found


def test_deliveries_are_retried_signed_ordered_and_one_per_build(farm: Farm,
                                                                 receiver: Receiver) -> None:
    master = farm.master
    assert master is not None
    receiver.set_plan([500, "slow", 200])
    ok_id = master.submit(["itest-amd64"])
    bad_id = master.submit(["itest-fail"])
    assert master.wait_build(ok_id)["status"] == "success"
    assert master.wait_build(bad_id)["status"] == "failed"
    wait_for(lambda: {ok_id, bad_id} <= set(finished_builds(receiver)), 60,
             "both builds' notifications")
    time.sleep(1.5)  # anything sent twice would arrive by now

    with receiver.lock:
        requests = list(receiver.requests)
    deliveries = {e["headers"]["x-pkgfarm-delivery"] for e in requests}
    assert len(deliveries) == 4  # a job.finished and a build.finished of each build
    for delivery in deliveries:
        tries = [e for e in requests if e["headers"]["x-pkgfarm-delivery"] == delivery]
        # Refused with 500, then too slow, then accepted: three tries of one delivery id,
        # each signed afresh, with growing pauses between them (backoff 0.3 s, then 0.6 s).
        assert [t["action"] for t in tries] == [500, "slow", 200], tries
        assert tries[1]["at"] - tries[0]["at"] >= 0.25
        assert tries[2]["at"] - tries[1]["at"] >= 1.0 + 0.55  # the time-out, then the pause
        assert len({t["headers"]["x-pkgfarm-signature"] for t in tries}) >= 2
    first = requests[0]

    accepted = receiver.accepted()
    assert accepted
    for e in accepted:
        assert signature_ok(e), e["headers"]
        assert abs(time.time() - int(e["headers"]["x-pkgfarm-timestamp"])) < 120
        assert e["headers"]["content-type"] == "application/json"
        assert e["headers"]["x-pkgfarm-event"] == e["json"]["event"]
        assert e["headers"]["x-pkgfarm-delivery"] == e["json"]["delivery"]
    # Nothing arrived twice; each build's events came in their order, the build's end last.
    ids = [e["json"]["delivery"] for e in accepted]
    assert len(ids) == len(set(ids))
    for build_id in (ok_id, bad_id):
        events = [e["json"] for e in accepted
                  if (e["json"].get("build") or {}).get("id") == build_id
                  or (e["json"].get("data") or {}).get("build_id") == build_id]
        assert [ev["event_id"] for ev in events] == sorted(ev["event_id"] for ev in events)
        assert events[-1]["event"] == "build.finished"
        assert [ev["event"] for ev in events].count("build.finished") == 1
        assert any(ev["event"] == "job.finished" for ev in events[:-1])

    builds = finished_builds(receiver)
    ok = builds[ok_id][0]["json"]["build"]
    assert ok["state"] == "success"
    assert ok["packages"] == ["itest-amd64"]
    assert ok["url"] == f"https://farm.example.org/builds/{ok_id}"
    assert ok["failed"] == []
    assert [j["state"] for j in ok["jobs"]] == ["success"]
    bad = builds[bad_id][0]["json"]
    assert bad["build"]["state"] == "failed"
    (failed,) = bad["build"]["failed"]
    assert failed["package"] == "itest-fail" and failed["arch"] == "all"
    assert failed["error"]
    assert failed["log_url"] == (f"https://farm.example.org/api/v1/builds/{bad_id}/packages/"
                                 "itest-fail/log?arch=all&format=deb")
    # The link works on the master (with its own address instead of the public one).
    log = master.api("GET", failed["log_url"].replace("https://farm.example.org", ""),
                     user="reader")
    assert log.status_code == 200 and "about to fail on purpose" in log.text
    assert f"build {bad_id} failed" in bad["text"] and failed["log_url"] not in bad["text"]

    # Admins see the deliveries and their tries.
    listed = master.api("GET", "/api/v1/webhooks").json()["webhooks"]
    hook, stuck = listed
    assert stuck["name"] == "stalled"
    assert hook["name"] == "ci" and hook["url"] == receiver.url
    assert "secret" not in json.dumps(hook).lower().replace("secret_env", "")
    by_id = {d["id"]: d for d in hook["deliveries"]}
    retried = by_id[first["headers"]["x-pkgfarm-delivery"]]
    assert retried["state"] == "delivered" and retried["attempts"] == 3
    assert retried["last_status"] == 200 and retried["next_try"] is None
    assert hook["counts"]["pending"] == 0 and hook["counts"]["failed"] == 0
    assert master.api("GET", "/api/v1/webhooks", user="reader").status_code == 403

    # The stalled hook's two notifications were tried twice each, then given up.
    def given_up() -> dict[str, Any] | None:
        found = master.api("GET", "/api/v1/webhooks").json()["webhooks"][1]
        return found if found["counts"]["failed"] == 2 else None

    stuck = wait_for(given_up, 30, "the stalled hook's deliveries to be given up")
    assert stuck["counts"]["pending"] == 0 and stuck["counts"]["delivered"] == 0
    for d in stuck["deliveries"]:
        assert (d["state"], d["attempts"], d["next_try"]) == ("failed", 2, None), d
        assert d["last_error"] == "no answer within 2 s" and d["last_status"] is None


def test_pending_deliveries_survive_a_master_restart(farm: Farm, receiver: Receiver) -> None:
    master = farm.master
    assert master is not None
    receiver.set_plan([500])  # refuse everything for now
    with receiver.lock:
        refused_before = sum(e["action"] == 500 for e in receiver.requests)
    build_id = master.submit(["itest-fail"])
    assert master.wait_build(build_id)["status"] == "failed"

    def mine() -> dict[str, dict[str, Any]]:
        hook = master.api("GET", "/api/v1/webhooks").json()["webhooks"][0]
        assert hook["name"] == "ci"
        return {d["event"]: d for d in hook["deliveries"] if d["build_id"] == build_id}

    def tried_and_pending() -> bool:
        found = mine()
        job, end = found.get("job.finished"), found.get("build.finished")
        return (job is not None and end is not None and job["state"] == "pending"
                and job["attempts"] >= 2)

    wait_for(tried_and_pending, 60, "a refused, pending job.finished delivery")
    # The build's end waits behind its job's refused notification: order per build.
    held = mine()["build.finished"]
    assert held["state"] == "pending" and held["attempts"] == 0, held
    master.stop()
    receiver.set_plan([200])
    master.start()
    wait_for(lambda: build_id in finished_builds(receiver), 60,
             "the pending notifications after the restart")
    time.sleep(1.5)
    (arrived,) = finished_builds(receiver)[build_id]
    assert signature_ok(arrived)
    assert arrived["json"]["build"]["state"] == "failed"
    job_event = [e for e in receiver.accepted() if e["json"]["event"] == "job.finished"
                 and e["json"]["data"]["build_id"] == build_id]
    assert len(job_event) == 1 and signature_ok(job_event[0])
    assert job_event[0]["at"] <= arrived["at"]
    assert job_event[0]["json"]["event_id"] < arrived["json"]["event_id"]
    with receiver.lock:
        refused = sum(e["action"] == 500 for e in receiver.requests) - refused_before
    assert refused >= 2, "the job's notification was tried before the restart"
    hook = master.api("GET", "/api/v1/webhooks").json()["webhooks"][0]
    assert hook["counts"]["pending"] == 0
    found = mine()
    assert found["job.finished"]["state"] == "delivered"
    assert found["job.finished"]["attempts"] >= 3
    assert found["job.finished"]["last_error"] is None
    # The background loops' copies in gunicorn's worker processes (forked while the loops ran)
    # end quietly: no traceback in the master's log, across both starts.
    assert "Traceback" not in master.log.read_text()
