"""Metrics and webhooks without a server: their config keys, the store's counters, the
webhook signature and backoff, and the deliveries' order and lease."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from common.config import ConfigError, settings_from_dict
from common.states import JobState
from master.metrics import StoreCollector, bearer_matches, scrape_token
from master.scheduler import Scheduler
from master.store import PlannedJob, Store, counters
from master.store.webhooks import NewDelivery
from master.webhooks import Dispatcher, backoff, secrets_of, sign, verify

HOOK = {"name": "ci", "url": "https://ci.example.org/hook", "secret": "0123456789abcdef"}


def config_error(master: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"master": master})
    return info.value


# -- config ------------------------------------------------------------------------------------


def test_defaults() -> None:
    m = settings_from_dict({}).master
    assert m.metrics.role == "read" and m.metrics.token_env is None and not m.metrics.public
    assert m.webhooks == ()
    assert m.public_url is None
    assert m.base_url == "http://127.0.0.1:8080"


def test_a_full_webhook_entry() -> None:
    m = settings_from_dict({"master": {
        "public_url": "https://farm.example.org/",
        "webhooks": [{**HOOK, "events": ["build.finished", "job.finished"], "timeout": "5",
                      "max_attempts": 3, "backoff": 0.5}]}}).master
    (hook,) = m.webhooks
    assert hook.events == ("build.finished", "job.finished")
    assert (hook.timeout, hook.max_attempts, hook.backoff) == (5, 3, 0.5)
    assert m.base_url == "https://farm.example.org"


@pytest.mark.parametrize(("master", "key", "fragment"), [
    ({"metrics": {"role": "root"}}, "master.metrics.role", "unknown role 'root'"),
    ({"metrics": {"token_env": "not a name"}}, "master.metrics.token_env",
     "environment variable"),
    ({"metrics": {"public": "sometimes"}}, "master.metrics.public", "true or false"),
    ({"metrics": {"token": "x"}}, "master.metrics.token", "unknown key"),
    ({"public_url": "farm.example.org"}, "master.public_url", "http:// or https://"),
    ({"public_url": "https://farm.example.org/?x=1"}, "master.public_url", "without query"),
    ({"webhooks": {"name": "x"}}, "master.webhooks", "must be a list"),
    ({"webhooks": [{"url": HOOK["url"], "secret": HOOK["secret"]}]}, "master.webhooks[0].name",
     "required"),
    ({"webhooks": [{**HOOK, "name": "a b"}]}, "master.webhooks[0].name", "letters"),
    ({"webhooks": [{**HOOK, "url": "ftp://x/"}]}, "master.webhooks[0].url", "http://"),
    ({"webhooks": [{**HOOK, "events": ["build.exploded"]}]}, "master.webhooks[0].events",
     "unknown event 'build.exploded'"),
    ({"webhooks": [{**HOOK, "events": []}]}, "master.webhooks[0].events", "at least one"),
    ({"webhooks": [{"name": "ci", "url": HOOK["url"]}]}, "master.webhooks[0].secret",
     "exactly one of secret and secret_env"),
    ({"webhooks": [{**HOOK, "secret_env": "HOOK_KEY"}]}, "master.webhooks[0].secret",
     "exactly one"),
    ({"webhooks": [{**HOOK, "secret": "short"}]}, "master.webhooks[0].secret", "16"),
    ({"webhooks": [{"name": "ci", "url": HOOK["url"], "secret_env": "1BAD"}]},
     "master.webhooks[0].secret_env", "environment variable"),
    ({"webhooks": [{**HOOK, "timeout": 0}]}, "master.webhooks[0].timeout", "between 1"),
    ({"webhooks": [{**HOOK, "max_attempts": 0}]}, "master.webhooks[0].max_attempts",
     "between 1"),
    ({"webhooks": [{**HOOK, "backoff": "soon"}]}, "master.webhooks[0].backoff", "number"),
    ({"webhooks": [{**HOOK, "backoff": 0}]}, "master.webhooks[0].backoff", "between"),
    ({"webhooks": [HOOK, HOOK]}, "master.webhooks[1].name", "two webhooks are named 'ci'"),
])
def test_bad_values_name_the_key(master: dict[str, Any], key: str, fragment: str) -> None:
    error = config_error(master)
    assert error.details["key"] == key, error
    assert fragment in str(error), error
    assert str(error).startswith(key)


def test_secret_and_token_come_from_the_environment() -> None:
    settings = settings_from_dict({"master": {
        "metrics": {"token_env": "SCRAPE"},
        "webhooks": [{"name": "ci", "url": HOOK["url"], "secret_env": "HOOK_KEY"}]}})
    assert secrets_of(settings, {"HOOK_KEY": "k" * 20}) == {"ci": "k" * 20}
    assert scrape_token(settings, {"SCRAPE": "t0ken"}) == "t0ken"
    with pytest.raises(ConfigError) as info:
        secrets_of(settings, {})
    assert info.value.details["key"] == "master.webhooks[0].secret_env"
    assert "HOOK_KEY is not set" in str(info.value)
    with pytest.raises(ConfigError) as info:
        scrape_token(settings, {"SCRAPE": ""})
    assert info.value.details["key"] == "master.metrics.token_env"


def test_bearer_token_matching() -> None:
    assert bearer_matches("Bearer abc", "abc")
    assert bearer_matches("bearer  abc ", "abc")
    assert not bearer_matches("Bearer abd", "abc")
    assert not bearer_matches("Bearer ", "abc")
    assert not bearer_matches("Basic abc", "abc")
    assert not bearer_matches("Bearer abc", None)


# -- signature and backoff ---------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"event":"build.finished"}'
    expected = hmac.new(b"0123456789abcdef", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("0123456789abcdef", 1700000000, body) == f"sha256={expected}"
    # Another time, body or key signs differently.
    assert sign("0123456789abcdef", 1700000001, body) != sign("0123456789abcdef", 1700000000,
                                                              body)
    assert sign("0123456789abcdef", 1700000000, body + b" ") != f"sha256={expected}"
    assert sign("0123456789abcdeX", 1700000000, body) != f"sha256={expected}"


def test_verify_refuses_forgeries_and_replays() -> None:
    body = b'{"a":1}'
    sig = sign("0123456789abcdef", 1700000000, body)
    assert verify("0123456789abcdef", "1700000000", body, sig, now=1700000010)
    assert not verify("0123456789abcdef", "1700000000", b'{"a":2}', sig, now=1700000010)
    assert not verify("another-secret-key", "1700000000", body, sig, now=1700000010)
    # The same capture an hour later is refused: the timestamp is signed with the body.
    assert not verify("0123456789abcdef", "1700000000", body, sig, now=1700003600)
    # A fresh timestamp with the old signature is refused too.
    assert not verify("0123456789abcdef", "1700003590", body, sig, now=1700003600)
    assert not verify("0123456789abcdef", "soon", body, sig, now=1700000010)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 5) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(30, 5) == 3600
    assert backoff(3, 0.5, cap=1.5) == 1.5
    assert backoff(0, 2) == 2


# -- store counters ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def counts(store: Store, name: str) -> dict[str, float]:
    return {json.dumps(s.labels, sort_keys=True): s.value for s in store.counters.all()
            if s.name == name}


def test_finished_jobs_and_builds_are_counted_once_in_their_transaction(store: Store) -> None:
    build_id, (a, b) = store.jobs.create_build(
        ["a", "b"], None, "tests", [PlannedJob("a", "1", "amd64", b"s"),
                                    PlannedJob("b", "1", "all", b"s")])
    assert store.jobs.claim(a, 1, "w1", "worker", "h", 60)
    assert store.jobs.finish(a, 1, JobState.SUCCESS, None, [])
    assert counts(store, "builds_finished") == {}  # b is still queued
    assert store.jobs.claim(b, 1, "w1", "worker", "h", 60)
    assert store.jobs.finish(b, 1, JobState.FAILED, "boom", [])
    assert counts(store, "jobs_finished") == {
        '{"arch": "all", "format": "deb", "outcome": "failed"}': 1,
        '{"arch": "amd64", "format": "deb", "outcome": "success"}': 1}
    assert counts(store, "builds_finished") == {'{"outcome": "failed"}': 1}
    assert counts(store, "job_duration_seconds_count") == {
        '{"arch": "all", "outcome": "failed"}': 1, '{"arch": "amd64", "outcome": "success"}': 1}
    assert counts(store, "queue_wait_seconds_count") == {'{"arch": "all"}': 1,
                                                         '{"arch": "amd64"}': 1}
    # A restart re-opens the build; its end counts again, and nothing counted goes down.
    store.jobs.restart(build_id, {})
    assert counts(store, "builds_finished") == {'{"outcome": "failed"}': 1}
    assert store.jobs.claim(b, 2, "w1", "worker", "h", 60)
    assert store.jobs.finish(b, 2, JobState.SUCCESS, None, [])
    assert counts(store, "builds_finished") == {'{"outcome": "failed"}': 1,
                                                '{"outcome": "success"}': 1}
    finished = counts(store, "jobs_finished")
    assert finished['{"arch": "all", "format": "deb", "outcome": "failed"}'] == 1
    assert finished['{"arch": "all", "format": "deb", "outcome": "success"}'] == 1


def test_a_cancel_counts_the_build_once(store: Store) -> None:
    build_id, _ = store.jobs.create_build(
        ["a", "b"], None, "tests", [PlannedJob("a", "1", "amd64", b"s"),
                                    PlannedJob("b", "1", "amd64", b"s")])
    store.jobs.cancel_build(build_id)
    assert counts(store, "jobs_finished") == {
        '{"arch": "amd64", "format": "deb", "outcome": "cancelled"}': 2}
    assert counts(store, "builds_finished") == {'{"outcome": "cancelled"}': 1}
    assert counts(store, "job_duration_seconds_count") == {}  # never built


def test_lease_expiries_and_resends_are_counted(store: Store) -> None:
    _, (a, b) = store.jobs.create_build(
        ["a", "b"], None, "tests", [PlannedJob("a", "1", "arm64", b"s"),
                                    PlannedJob("b", "1", "amd64", b"s")])
    assert store.jobs.claim(a, 1, "w1", "worker", "h", -1)  # its lease has run out already
    assert len(store.jobs.requeue_expired()) == 1
    assert counts(store, "lease_expiries") == {'{"arch": "arm64"}': 1}
    store.jobs.mark_enqueued(b, 1)
    assert store.jobs.resend(b, 1)
    assert store.jobs.requeue_all_queued() == 2
    assert counts(store, "broker_resends") == {'{"reason": "message-lost"}': 1,
                                               '{"reason": "broker-emptied"}': 2}


class _Services:
    def __init__(self, store: Store, settings: Any) -> None:
        self.store, self.settings = store, settings

        class _NoBroker:
            def connection_for_read(self) -> Any:
                raise OSError("no broker in unit tests")

        self.celery = _NoBroker()
        # The scheduler reads the queue lengths (a broker that cannot be read: none).
        no_repository: Any = None
        self.scheduler = Scheduler(settings, store, self.celery, no_repository)


def test_the_collector_exposes_store_values(store: Store) -> None:
    build_id, (a, r) = store.jobs.create_build(["a"], None, "t",
                                               [PlannedJob("a", "1", "amd64", b"s"),
                                                PlannedJob("a", "1", "amd64", b"s",
                                                           format="rpm")])
    for job_id, state in ((a, JobState.SUCCESS), (r, JobState.FAILED)):
        store.jobs.claim(job_id, 1, "w1", "worker", "h", 60)
        store.jobs.finish(job_id, 1, state, None, [])
    # A count kept before jobs had a format label: every job was a deb then.
    with store.db.write() as db:
        counters.bump(db, counters.JOBS_FINISHED, {"arch": "amd64", "outcome": "success"}, 2)
    settings = settings_from_dict({"repository": {"architectures": ["amd64", "arm64"],
                                                  "formats": ["deb", "rpm"]}})
    families = {f.name: f for f in StoreCollector(_Services(store, settings)).collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("pkgfarm_jobs", (("state", "success"),))] == 1
    assert samples[("pkgfarm_jobs", (("state", "queued"),))] == 0
    assert samples[("pkgfarm_jobs_finished_total",
                    (("arch", "amd64"), ("format", "deb"), ("outcome", "success")))] == 3
    assert samples[("pkgfarm_jobs_finished_total",
                    (("arch", "amd64"), ("format", "rpm"), ("outcome", "failed")))] == 1
    assert samples[("pkgfarm_jobs_finished_total",
                    (("arch", "amd64"), ("format", "rpm"), ("outcome", "success")))] == 0
    assert samples[("pkgfarm_jobs_finished_total",
                    (("arch", "arm64"), ("format", "deb"), ("outcome", "failed")))] == 0
    assert not any(name == "pkgfarm_jobs_finished_total" and ("format", "pacman") in labels
                   for name, labels in samples)  # only the formats the farm serves
    assert samples[("pkgfarm_builds_finished_total", (("outcome", "failed"),))] == 1
    assert samples[("pkgfarm_job_duration_seconds_count",
                    (("arch", "amd64"), ("outcome", "success")))] == 1
    assert samples[("pkgfarm_job_duration_seconds_bucket",
                    (("arch", "amd64"), ("le", "+Inf"), ("outcome", "success")))] == 1
    assert samples[("pkgfarm_job_duration_seconds_bucket",
                    (("arch", "amd64"), ("le", "1.0"), ("outcome", "success")))] == 1
    assert samples[("pkgfarm_broker_up", ())] == 0
    assert samples[("pkgfarm_workers_online", (("arch", "arm64"),))] == 0
    assert build_id


# -- deliveries --------------------------------------------------------------------------------


def new(store: Store, hook: str, build_id: int | None, n: int) -> NewDelivery:
    return NewDelivery(f"d{n}", hook, n, "job.finished", build_id, json.dumps({"n": n}))


def test_deliveries_of_one_hook_and_build_wait_for_the_one_before(store: Store) -> None:
    assert store.webhooks.enqueue(0, 3, [new(store, "ci", 1, 1), new(store, "ci", 1, 2),
                                         new(store, "ci", 2, 3), new(store, "chat", 1, 4)])
    due = store.webhooks.due(time.time() + 1)
    assert [d.delivery for d in due] == ["d1", "d3", "d4"]  # d2 waits behind d1
    d1 = due[0]
    store.webhooks.record(d1.seq, delivered=False, status=500, error="HTTP 500",
                          next_try=time.time() + 100)
    assert [d.delivery for d in store.webhooks.due(time.time() + 1)] == ["d3", "d4"]
    store.webhooks.record(d1.seq, delivered=False, status=None, error="gave up", next_try=None)
    assert [d.delivery for d in store.webhooks.due(time.time() + 1)] == ["d2", "d3", "d4"]
    assert store.webhooks.counts("ci") == {"pending": 2, "delivered": 0, "failed": 1}
    (failed,) = [d for d in store.webhooks.recent("ci") if d.delivery == "d1"]
    assert (failed.state, failed.attempts, failed.last_error) == ("failed", 2, "gave up")


def test_the_cursor_moves_with_the_deliveries_or_not_at_all(store: Store) -> None:
    assert store.webhooks.enqueue(0, 5, [new(store, "ci", 1, 1)])
    assert not store.webhooks.enqueue(0, 9, [new(store, "ci", 1, 2)])  # stale cursor
    assert store.webhooks.cursor() == 5
    assert [d.delivery for d in store.webhooks.recent("ci")] == ["d1"]


def test_one_lease_holder_at_a_time(store: Store) -> None:
    assert store.webhooks.take_lease("webhooks", "a", 60)
    assert not store.webhooks.take_lease("webhooks", "b", 60)
    assert store.webhooks.take_lease("webhooks", "a", 60)  # renewed
    store.webhooks.release_lease("webhooks", "a")
    assert store.webhooks.take_lease("webhooks", "b", 0.01)
    time.sleep(0.05)
    assert store.webhooks.take_lease("webhooks", "a", 60)  # b's ran out


def test_one_build_notification_with_links(store: Store) -> None:
    settings = settings_from_dict({"master": {
        "public_url": "https://farm.example.org",
        "webhooks": [{**HOOK, "events": ["build.finished"]}]}})
    build_id, (a, b) = store.jobs.create_build(
        ["ok", "bad"], None, "alice", [PlannedJob("ok", "1", "amd64", b"s"),
                                       PlannedJob("bad", "2", "all", b"s")])
    dispatcher = Dispatcher(settings, store, env={})
    dispatcher.start_cursor()  # skips the build.created and job.queued events
    for job_id, state in ((a, JobState.SUCCESS), (b, JobState.FAILED)):
        store.jobs.claim(job_id, 1, "w1", "worker", "h", 60)
        store.jobs.finish(job_id, 1, state, "exit status 3\nmore" if state != "success"
                          else None, [])
    assert dispatcher.fan_out() >= 5  # two starts, two ends and the build's end were read
    (delivery,) = store.webhooks.recent("ci")
    body = json.loads(delivery.body)
    assert body["event"] == "build.finished" and body["delivery"] == delivery.delivery
    build = body["build"]
    assert (build["id"], build["state"], build["packages"]) == (build_id, "failed",
                                                                ["ok", "bad"])
    assert build["url"] == f"https://farm.example.org/builds/{build_id}"
    assert [j["state"] for j in build["jobs"]] == ["success", "failed"]
    assert build["failed"] == [{
        "package": "bad", "arch": "all", "format": "deb", "state": "failed",
        "error": "exit status 3",
        "log_url": f"https://farm.example.org/api/v1/builds/{build_id}/packages/bad/log"
                   "?arch=all&format=deb"}]
    assert body["text"].startswith(f"pkgfarm build {build_id} failed (ok, bad); bad (all, "
                                   "deb) failed: exit status 3")
    assert dispatcher.fan_out() == 0  # nothing new: nothing queued twice
    assert len(store.webhooks.recent("ci")) == 1


def test_every_job_link_names_its_format(store: Store) -> None:
    """One package made in three formats: each job's event, entry and log link say which
    format it is, so no link is ambiguous."""
    settings = settings_from_dict({"master": {
        "public_url": "https://farm.example.org",
        "webhooks": [{**HOOK, "events": ["build.created", "job.queued", "job.finished",
                                         "build.finished"]}]},
        "repository": {"formats": ["deb", "rpm", "pacman"]}})
    dispatcher = Dispatcher(settings, store, env={})
    dispatcher.start_cursor()
    formats = ("deb", "rpm", "pacman")
    build_id, ids = store.jobs.create_build(
        ["multi"], None, "alice", [PlannedJob("multi", "1.0-1", "amd64", b"s", format=f)
                                   for f in formats])
    for job_id in ids:
        store.jobs.claim(job_id, 1, "w1", "worker", "h", 60)
        store.jobs.finish(job_id, 1, JobState.FAILED, "exit status 1", [])
    dispatcher.fan_out()
    bodies = [json.loads(d.body) for d in reversed(store.webhooks.recent("ci"))]
    link = (f"https://farm.example.org/api/v1/builds/{build_id}/packages/multi/log"
            "?arch=amd64&format={}")
    created = next(b for b in bodies if b["event"] == "build.created")
    assert [j["format"] for j in created["data"]["jobs"]] == list(formats)
    for kind in ("job.queued", "job.finished"):
        events = [b for b in bodies if b["event"] == kind]
        assert [b["data"]["format"] for b in events] == list(formats)
        assert [b["log_url"] for b in events] == [link.format(f) for f in formats]
    (finished,) = [b for b in bodies if b["event"] == "build.finished"]
    assert [j["log_url"] for j in finished["build"]["jobs"]] == [link.format(f)
                                                                 for f in formats]
    assert [(f["format"], f["log_url"]) for f in finished["build"]["failed"]] == [
        (f, link.format(f)) for f in formats]
    assert "multi (amd64, rpm) failed" in finished["text"]
